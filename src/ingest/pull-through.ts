import { PassThrough, type Readable } from 'node:stream';
import type { Logger } from 'pino';
import { isAppError } from '../errors.js';
import type { BlobTarget } from '../domain/target.js';
import type { Digests } from '../store/digests.js';
import { UpstreamError, type Fetcher, type UpstreamResponse } from '../upstream/fetcher.js';
import type { Mirror } from '../upstream/mirrors.js';
import type { UpstreamStats } from '../upstream/stats.js';
import { processLocalFlightLock, type FlightLock } from './flight-lock.js';
import type { Ingest } from './ingest.js';

export interface PullThroughOptions {
  ingest: Ingest;
  fetcher: Fetcher;
  mirrors: Mirror[];
  stats: UpstreamStats;
  negativeCacheSeconds: number;
  maxBytes: number;
  /** Longest time from a miss to upstream response headers, all mirrors and retries included. */
  headerDeadlineMs?: number;
  log?: Logger | undefined;
  /** Decides which process downloads a key several processes miss at once (default: this one). */
  lock?: FlightLock;
}

export interface FlightHead {
  /** Size announced by the upstream, when it did. */
  size: number | undefined;
  mirror: string;
}

/** A client reading faster than this behind the store is dropped rather than buffered without bound. */
const SUBSCRIBER_MAX_BUFFER = 16 * 1024 * 1024;
/** Well inside a client's 60 s timeout, leaving room for the body to start. */
export const DEFAULT_HEADER_DEADLINE_MS = 25_000;

export const flightKey = (target: BlobTarget) => (target.kind === 'hash' ? `h:${target.sha512}` : `n:${target.filename}`);

/**
 * One upstream download for one key, shared by every request that misses on that key meanwhile.
 *
 * The bytes flow upstream → store (the master: its one-pass hash decides) and are copied to each
 * subscriber (a request that joined before the first byte). The last chunk is held back until the
 * store has verified and committed the blob: a subscriber receives the complete body only if it
 * is good; otherwise its stream is destroyed, which aborts its connection.
 */
export class Flight {
  readonly head: Promise<FlightHead | undefined>;
  readonly result: Promise<Digests | undefined>;
  private readonly subscribers = new Set<PassThrough>();
  private flowing = false;
  private resolveHead!: (head: FlightHead | undefined) => void;

  constructor(
    readonly target: BlobTarget,
    private readonly owner: PullThrough,
    private readonly controller: AbortController,
  ) {
    this.head = new Promise((resolve) => (this.resolveHead = resolve));
    this.result = this.run();
  }

  /** A stream of the whole body, or undefined once bytes have started to flow (joined too late). */
  subscribe(): Readable | undefined {
    if (this.flowing) return undefined;
    const stream = new PassThrough({ highWaterMark: 256 * 1024 });
    // Until the HTTP layer pipes it (and watches it), a failure must not become an unhandled error.
    stream.on('error', () => undefined);
    this.subscribers.add(stream);
    stream.once('close', () => this.subscribers.delete(stream));
    return stream;
  }

  private broadcast(chunk: Buffer): void {
    for (const s of this.subscribers) {
      if (s.destroyed) continue;
      if (s.writableLength + s.readableLength > SUBSCRIBER_MAX_BUFFER) {
        s.destroy(new Error('client too slow for a pull-through stream'));
        continue;
      }
      s.write(chunk);
    }
  }

  private finish(ok: boolean): void {
    for (const s of this.subscribers) {
      if (ok) s.end();
      else s.destroy(new Error('pull-through failed; aborting the response'));
    }
    this.subscribers.clear();
  }

  private async run(): Promise<Digests | undefined> {
    const owner = this.owner;
    const { stats, log } = owner.options;
    const deadline = setTimeout(
      () => this.controller.abort(new UpstreamError('aborted', 'no upstream answered in time', '')),
      owner.options.headerDeadlineMs ?? DEFAULT_HEADER_DEADLINE_MS,
    );
    let found: { res: UpstreamResponse; mirror: Mirror } | undefined;
    let failed = false;
    try {
      found = await this.findUpstream((f) => (failed ||= f));
    } finally {
      clearTimeout(deadline);
    }
    if (!found) {
      this.resolveHead(undefined);
      this.finish(false);
      owner.remember(this.target);
      stats.add(failed ? 'pullFailures' : 'pullMisses');
      return undefined;
    }

    const { res, mirror } = found;
    this.resolveHead({ size: res.size, mirror: mirror.base });
    const held: { chunk?: Buffer } = {};
    try {
      const { digests } = await owner.options.ingest.ingest(this.tee(res.body, held), {
        ...(this.target.kind === 'hash'
          ? { expected: { sha512: this.target.sha512 }, pinned: true }
          : { filename: this.target.filename, expected: { sha512: announcedSha512(mirror, res) } }),
        maxBytes: owner.options.maxBytes,
        by: 'pull-through',
      });
      this.flowing = true;
      if (held.chunk) this.broadcast(held.chunk);
      this.finish(true);
      mirror.succeeded();
      stats.add('pullHits');
      log?.info({ key: flightKey(this.target), sha512: digests.sha512, size: digests.size, from: res.url }, 'pulled through');
      return digests;
    } catch (err) {
      this.flowing = true;
      this.finish(false);
      res.body.destroy();
      stats.add('pullFailures');
      if (err instanceof UpstreamError || (isAppError(err) && err.code === 'DIGEST_MISMATCH')) mirror.failed();
      owner.remember(this.target);
      const reason = err instanceof UpstreamError || isAppError(err) ? err.message : 'internal error';
      log?.warn({ key: flightKey(this.target), from: res.url, reason, ...(isAppError(err) ? {} : { err }) }, 'pull-through failed');
      return undefined;
    }
  }

  /** Copies each chunk to the subscribers one chunk late: the last one waits for the verdict. */
  private async *tee(source: AsyncIterable<Buffer>, held: { chunk?: Buffer }): AsyncGenerator<Buffer> {
    for await (const chunk of source) {
      this.flowing = true;
      if (held.chunk) this.broadcast(held.chunk);
      held.chunk = chunk;
      yield chunk;
    }
  }

  /** First mirror (in configured order) that has the file; 404s are healthy answers, errors count against the breaker. */
  private async findUpstream(noteFailure: (failed: boolean) => void): Promise<{ res: UpstreamResponse; mirror: Mirror } | undefined> {
    const { fetcher, mirrors, stats, log } = this.owner.options;
    const signal = this.controller.signal;
    for (const mirror of mirrors) {
      if (signal.aborted) {
        noteFailure(true);
        return undefined;
      }
      if (!mirror.available()) {
        stats.add('breakerSkips');
        continue;
      }
      try {
        const url = await mirror.urlFor(this.target, fetcher, signal);
        if (url === undefined) continue;
        const res = await fetcher.open(url, { signal });
        return { res, mirror };
      } catch (err) {
        if (err instanceof UpstreamError && err.failure === 'not-found') {
          mirror.succeeded();
          continue;
        }
        noteFailure(true);
        // Waiting for our own connection slots says nothing about the mirror's health.
        if (!(err instanceof UpstreamError && err.failure === 'busy')) mirror.failed();
        log?.warn({ key: flightKey(this.target), mirror: mirror.base, reason: (err as Error).message }, 'upstream failed');
      }
    }
    return undefined;
  }
}

/** Another fastpull origin names the content in its strong ETag: a name pull from it can be verified too. */
function announcedSha512(mirror: Mirror, res: UpstreamResponse): string | undefined {
  if (mirror.kind !== 'fastpull') return undefined;
  const m = /^"([0-9a-f]{128})"$/.exec(res.etag ?? '');
  return m ? m[1] : undefined;
}

/**
 * The flight of a key another process is downloading: nothing to stream along, but the outcome,
 * after which the blob is served from the shared store like any other waiter's.
 */
export class FollowerFlight {
  readonly head = Promise.resolve(undefined);
  constructor(readonly result: Promise<boolean>) {}
  subscribe(): undefined {
    return undefined;
  }
}

export type PullFlight = Flight | FollowerFlight;

/**
 * Pull-through on a local miss: single flight per key (across processes through the lock), a
 * negative cache, and per-mirror circuit breakers.
 */
export class PullThrough {
  private readonly flights = new Map<string, Promise<PullFlight>>();
  private readonly negative = new Map<string, number>();
  private readonly controllers = new Set<AbortController>();
  private closed = false;

  constructor(readonly options: PullThroughOptions) {}

  /** The flight for this key (joined or started), or undefined when a recent attempt found nothing. */
  flight(target: BlobTarget): Promise<PullFlight> | undefined {
    if (this.closed) return undefined;
    const key = flightKey(target);
    const existing = this.flights.get(key);
    if (existing) {
      this.options.stats.add('pullJoins');
      return existing;
    }
    const until = this.negative.get(key);
    if (until !== undefined) {
      if (Date.now() < until) {
        this.options.stats.add('pullNegativeHits');
        return undefined;
      }
      this.negative.delete(key);
    }
    // Registered before the lock answers, so requests arriving meanwhile join rather than ask again.
    const pending = this.begin(target, key);
    this.flights.set(key, pending);
    return pending;
  }

  private async begin(target: BlobTarget, key: string): Promise<PullFlight> {
    const lock = this.options.lock ?? processLocalFlightLock;
    const grant = await lock.acquire(key).catch((err: unknown) => {
      // Without the coordinator, fetching ourselves beats failing the client.
      this.options.log?.warn({ key, err }, 'flight lock unavailable; pulling in this process');
      return { owner: true as const, release: () => undefined };
    });
    // Another process may have stored the blob between this request's index miss and the lock: its flight is
    // over, so the lock is free, but the blob needs no second download.
    const stored = grant.owner && this.options.lock !== undefined ? await this.storedAlready(target).catch(() => false) : false;
    if (grant.owner && stored) grant.release(true);
    if (!grant.owner || stored) {
      const outcome = grant.owner ? Promise.resolve(true) : grant.outcome;
      const follower = new FollowerFlight(
        outcome.then((stored) => {
          if (!stored) this.remember(target);
          return stored;
        }),
      );
      void follower.result.finally(() => this.flights.delete(key));
      return follower;
    }
    const controller = new AbortController();
    this.controllers.add(controller);
    const flight = new Flight(target, this, controller);
    // Forget the flight first, so a request that sees its outcome never joins it again.
    void flight.result.finally(() => {
      this.flights.delete(key);
      this.controllers.delete(controller);
    });
    void flight.result.then(
      (digests) => grant.release(digests !== undefined),
      () => grant.release(false),
    );
    return flight;
  }

  private async storedAlready(target: BlobTarget): Promise<boolean> {
    const index = this.options.ingest.index;
    const blob = await (target.kind === 'hash' ? index.servableByHash(target.sha512) : index.servableByName(target.filename));
    return blob !== undefined && blob.quarantined_at === null;
  }

  remember(target: BlobTarget): void {
    if (this.options.negativeCacheSeconds <= 0) return;
    const now = Date.now();
    // Expired entries are dropped lazily; sweep now and then so a scan of random names cannot grow the map forever.
    if (this.negative.size > 100_000) for (const [k, t] of this.negative) if (t <= now) this.negative.delete(k);
    this.negative.set(flightKey(target), now + this.options.negativeCacheSeconds * 1000);
  }

  mirrorStates() {
    return this.options.mirrors.map((m) => m.state);
  }

  /** Aborts pulls still running (their clients' connections are cut; nothing half-written is kept). */
  async close(): Promise<void> {
    this.closed = true;
    for (const c of this.controllers) c.abort(new UpstreamError('aborted', 'the server is stopping', ''));
    const flights = await Promise.allSettled([...this.flights.values()]);
    await Promise.allSettled(flights.map((f) => (f.status === 'fulfilled' ? f.value.result : undefined)));
  }
}
