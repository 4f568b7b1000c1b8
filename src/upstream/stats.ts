import { EventEmitter } from 'node:events';

/**
 * Plain counters for the metrics exporter to read (monotonic unless noted).
 * Also an EventEmitter: 'count' fires with (name, delta) for anyone who prefers push.
 */
export class UpstreamStats extends EventEmitter {
  readonly counters = {
    /** Body bytes received from upstream servers (fetch jobs and pull-through). */
    upstreamBytes: 0,
    upstreamRequests: 0,
    upstreamRetries: 0,
    upstreamResumes: 0,
    /** Pull-through: a local miss that an upstream filled (stored). */
    pullHits: 0,
    /** Pull-through: every upstream answered "not found" (or none could be asked). */
    pullMisses: 0,
    /** Pull-through: the pull failed (errors, timeouts, verification). */
    pullFailures: 0,
    /** Pull-through: answered 404 from the negative cache without asking upstream. */
    pullNegativeHits: 0,
    /** Pull-through: requests that joined a pull already under way. */
    pullJoins: 0,
    /** Pull-through: upstream attempts skipped because its circuit breaker was open. */
    breakerSkips: 0,
    fetchItemsDone: 0,
    fetchItemsFailed: 0,
    /** Fetch items answered from the store without downloading. */
    fetchItemsReused: 0,
  };

  add(name: keyof UpstreamStats['counters'], delta = 1): void {
    this.counters[name] += delta;
    if (this.listenerCount('count') > 0) this.emit('count', name, delta);
  }

  /** A finished upstream download, for the duration histogram: 'fetch' fires with (seconds, result). */
  fetched(seconds: number, result: string): void {
    if (this.listenerCount('fetch') > 0) this.emit('fetch', seconds, result);
  }

  snapshot(): Record<string, number> {
    return { ...this.counters };
  }
}
