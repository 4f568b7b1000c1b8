import { randomBytes } from 'node:crypto';
import { hostname } from 'node:os';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Logger } from 'pino';
import type { ClaimedDelivery, Outbox, TargetStatus } from '../db/events.js';
import { isPromise } from '../db/awaitable.js';
import type { DeliveryTarget, SendResult } from './targets.js';

export type DeliveryResult = 'success' | 'failure' | 'gave_up';

export interface DispatcherOptions {
  /** The index's `events` area: SQLite, or PostgreSQL shared by replicas. */
  outbox: Outbox;
  targets: DeliveryTarget[];
  log?: Logger | undefined;
  pollMs: number;
  timeoutMs: number;
  retryBaseMs: number;
  retryMaxMs: number;
  /** 0: retry forever. */
  maxAttempts: number;
  /** 0: keep events forever. */
  retentionDays: number;
}

export type EventTargetStatus = TargetStatus;

export interface EventsStatus {
  lastEventId: number;
  targets: TargetStatus[];
}

const PRUNE_EVERY_MS = 3_600_000;
const STATUS_TTL_MS = 1_000;

/** Exponential backoff with ±20 % jitter, so replicas retrying one endpoint do not fire in step. */
export function backoffMs(attempts: number, baseMs: number, maxMs: number): number {
  const exp = Math.min(maxMs, baseMs * 2 ** Math.max(0, attempts - 1));
  return Math.round(Math.min(maxMs, exp * (0.8 + Math.random() * 0.4)));
}

/**
 * Delivers the outbox. One loop per target: create the target's deliveries for new events, wait
 * for the rate limit, claim (lease) what one request carries, send, then mark delivered or schedule
 * a retry. Leases make each delivery one process's at a time, however many replicas share the
 * database; a process killed mid-request leaves a lease that expires, and the delivery is retried.
 */
export class EventDispatcher {
  readonly outbox: Outbox;
  /** Identifies this process's leases. */
  readonly owner = `${hostname()}:${process.pid}:${randomBytes(4).toString('hex')}`;
  private readonly abort = new AbortController();
  private loops: Promise<void>[] = [];
  private pruneTimer: NodeJS.Timeout | undefined;
  private pruning: Promise<void> | undefined;
  private cached: { at: number; value: Promise<EventsStatus> } | undefined;
  /** Longer than any one request can take, so a live process never loses a lease it is using. */
  private readonly leaseMs: number;
  /** Told about every delivery outcome (metrics). */
  observe: ((target: string, result: DeliveryResult, events: number) => void) | undefined;

  constructor(private readonly options: DispatcherOptions) {
    this.outbox = options.outbox;
    this.leaseMs = options.timeoutMs * 2 + 1_000;
  }

  get targets(): readonly DeliveryTarget[] {
    return this.options.targets;
  }

  start(): void {
    if (this.loops.length > 0 || this.abort.signal.aborted) return;
    for (const target of this.options.targets) this.loops.push(this.run(target));
    if (this.options.retentionDays > 0) {
      const prune = async () => {
        try {
          const removed = await this.outbox.prune(
            Date.now() - this.options.retentionDays * 86_400_000,
            this.options.targets.map((t) => t.id),
          );
          if (removed > 0) this.options.log?.info({ removed }, 'pruned delivered events past retention');
        } catch (err) {
          this.options.log?.warn({ err }, 'could not prune old events');
        }
      };
      this.pruning = prune();
      this.pruneTimer = setInterval(() => void (this.pruning = prune()), PRUNE_EVERY_MS).unref();
    }
  }

  /** Stops claiming; requests in flight are cut and their deliveries released for the next process. */
  async stop(): Promise<void> {
    this.abort.abort();
    if (this.pruneTimer) clearInterval(this.pruneTimer);
    await Promise.all([...this.loops, this.pruning]);
  }

  /** Pending counts, ages and last outcomes per target (shared by all replicas: read from the database). */
  status(): Promise<EventsStatus> {
    const now = Date.now();
    if (!this.cached || now - this.cached.at > STATUS_TTL_MS) {
      // The promise is what is cached: a burst of scrapes and probes shares one read.
      const value = (async () => ({
        lastEventId: await this.outbox.lastId(),
        targets: await Promise.all(this.options.targets.map((t) => this.outbox.status(t.id))),
      }))();
      this.cached = { at: now, value };
      // A failed read is not kept: the next caller asks again.
      value.catch(() => {
        if (this.cached?.value === value) this.cached = undefined;
      });
    }
    return this.cached.value;
  }

  private async run(target: DeliveryTarget): Promise<void> {
    const { signal } = this.abort;
    const { log, pollMs } = this.options;
    let registered = false;
    while (!signal.aborted) {
      try {
        // Here, not in start(): a database briefly away at start is retried like any other loop error.
        if (!registered) {
          await this.outbox.addTarget(target.id);
          registered = true;
        }
        await this.outbox.materialize(target.id, target.types);
        await target.ready(signal);
        const claimed = await this.outbox.claim(target.id, this.owner, this.leaseMs, (c) => target.pick(c), target.claimLimit);
        if (claimed.length === 0) {
          await sleep(pollMs, undefined, { signal });
          continue;
        }
        await this.deliver(target, claimed);
      } catch (err) {
        if (signal.aborted) return;
        log?.warn({ err, target: target.id }, 'event delivery loop error; continuing');
        await sleep(pollMs, undefined, { signal }).catch(() => undefined);
      }
    }
  }

  /** Called by a target between the requests of one delivery; a renewal that fails only shortens the lease. */
  private renew(target: string, ids: number[]): void {
    const done = this.outbox.renew(target, ids, this.owner, this.leaseMs);
    if (isPromise(done)) done.catch((err: unknown) => this.options.log?.warn({ err, target }, 'could not renew event leases'));
  }

  private async deliver(target: DeliveryTarget, claimed: ClaimedDelivery[]): Promise<void> {
    const { signal } = this.abort;
    const { log } = this.options;
    const observe = this.observe;
    const ids = claimed.map((c) => c.event.id);
    let result: SendResult;
    try {
      result = await target.send(claimed, { signal, renew: () => this.renew(target.id, ids) });
    } catch (err) {
      result = { ok: false, error: describe(err), detail: (err as Error | undefined)?.message ?? String(err) };
    }
    if (!result.ok && signal.aborted) {
      await this.outbox.release(target.id, ids, this.owner);
      return;
    }
    if (result.ok) {
      await this.outbox.delivered(target.id, ids);
      observe?.(target.id, 'success', ids.length);
      log?.debug({ target: target.id, events: ids }, 'events delivered');
      return;
    }
    const attempts = Math.min(...claimed.map((c) => c.attempts));
    const delay = Math.max(backoffMs(attempts, this.options.retryBaseMs, this.options.retryMaxMs), result.retryAfterMs ?? 0);
    const gaveUp = await this.outbox.failed(target.id, claimed, Date.now() + delay, result.error, this.options.maxAttempts);
    observe?.(target.id, 'failure', ids.length);
    if (gaveUp.length > 0) {
      observe?.(target.id, 'gave_up', gaveUp.length);
      log?.error({ target: target.id, events: gaveUp, error: result.error }, 'gave up delivering events');
    }
    log?.warn(
      { target: target.id, events: ids, attempts, retryInMs: delay, error: result.error, detail: result.detail },
      'event delivery failed; will retry',
    );
    // The next due delivery would most likely meet the same outage: pause the target a little (or as
    // long as Retry-After asks) rather than fail through a backlog at full speed.
    const pause = Math.min(result.retryAfterMs ?? Math.min(delay, this.options.retryBaseMs), this.options.retryMaxMs);
    await sleep(pause, undefined, { signal }).catch(() => undefined);
  }
}

/** undici's error codes say what happened (timeout, refused) without addresses or internals. */
function describe(err: unknown): string {
  const e = err as (Error & { code?: string; cause?: { code?: string } }) | undefined;
  if (e?.name === 'TimeoutError' || e?.name === 'AbortError') return 'timed out';
  return e?.code ?? e?.cause?.code ?? 'request failed';
}
