import { randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import type { Logger } from 'pino';
import { isPromise, type Awaitable } from '../db/awaitable.js';
import type { HoldAttempt, UploadHoldArea } from '../db/upload-holds.js';
import { AppError } from '../errors.js';

/** Plain values for the metrics module. */
export const storageState = {
  bytesStored: 0,
  /** Undefined when no high watermark is configured. */
  highWatermarkBytes: undefined as number | undefined,
  aboveHighWatermark: false,
  uploadsRefused: 0,
};

/**
 * Space one upload holds while in flight: its declared size, or what it has sent so far. On SQLite every
 * method answers synchronously; on PostgreSQL `grow` may return a promise, which the writer awaits before
 * taking in more bytes (see `leased`).
 */
export interface UploadLease {
  /** Called with the bytes received so far; throws (or rejects with) INSUFFICIENT_STORAGE when they no longer fit. */
  grow(received: number): Awaitable<void>;
  /** Called right after the index commit: from then on the blob counts as stored, no longer as held. */
  recorded(size: number, created: boolean): void;
  /** Gives the held space back (idempotent). */
  release(): void;
}

/** Undeclared bodies take their hold ahead in steps of this, so a GiB costs ~128 index writes, not one per chunk. */
const HOLD_STEP_BYTES = 8 * 1024 * 1024;

/** `f(value)` now when the value is at hand (SQLite), once it arrives otherwise (PostgreSQL). */
function then<T, U>(value: Awaitable<T>, f: (v: T) => Awaitable<U>): Awaitable<U> {
  return isPromise(value) ? value.then(f) : f(value);
}

/**
 * Refuses uploads that would take the stored bytes above `highWatermarkBytes`, counting the bytes that
 * uploads in flight hold (declared or received so far), so the mark holds however many run at once —
 * in this process or any other writing to the same index (cluster workers, a CLI beside the server,
 * replicas sharing one PostgreSQL): the holds live in the index (upload_holds) and are checked and taken
 * under a lock every writer shares. Stored bytes are a one-row read kept current by triggers (index_counters).
 * On SQLite every answer is synchronous, as before; on PostgreSQL they are promises.
 */
export class StorageGuard {
  /** Holds whose removal failed (e.g. SQLite full): retried before the next admission. */
  private readonly stuck = new Set<string>();
  /** Hold ids are unique across replicas: pids are not. */
  private readonly holdPrefix = `${process.pid}-${randomBytes(4).toString('hex')}`;
  private nextHold = 0;
  /** Leases in flight, and the timer renewing their holds where holds expire (PostgreSQL). */
  private active = 0;
  private renewTimer: NodeJS.Timeout | undefined;

  constructor(
    private readonly holds: UploadHoldArea,
    readonly highWatermarkBytes: number | undefined,
    private readonly log?: Pick<Logger, 'warn'>,
  ) {
    storageState.highWatermarkBytes = highWatermarkBytes;
    const primed = then(highWatermarkBytes !== undefined ? holds.removeOwn() : undefined, () => this.bytesStored());
    // Only a gauge's first value: a database not answering yet must not fail the start.
    if (isPromise(primed)) primed.catch(() => undefined);
  }

  /** Bytes stored according to the index. */
  bytesStored(): Awaitable<number> {
    return then(this.holds.storedBytes(), (stored) => {
      storageState.bytesStored = stored;
      storageState.aboveHighWatermark = this.highWatermarkBytes !== undefined && stored > this.highWatermarkBytes;
      return stored;
    });
  }

  /** Bytes uploads in flight (in every process) hold against the watermark. */
  bytesHeld(): Awaitable<number> {
    return this.holds.heldBytes();
  }

  /** Call before starting a fetch job (or reading an upload): refuses while stored + held is above the mark. */
  assertAccepting(log?: Pick<Logger, 'warn'>): Awaitable<void> {
    if (this.highWatermarkBytes === undefined) return;
    return this.take('', 0, log);
  }

  /**
   * Admits an upload that declares `declared` bytes (Content-Length or ?size=; undefined when it does
   * not say), holding them until released. Throws INSUFFICIENT_STORAGE when they do not fit. Without a
   * watermark there is nothing to hold: undefined, and the upload runs as if no guard existed.
   */
  admit(declared: number | undefined, log?: Pick<Logger, 'warn'>): Awaitable<UploadLease | undefined> {
    if (this.highWatermarkBytes === undefined) return undefined;
    const id = `${this.holdPrefix}-${++this.nextHold}`;
    let claimed = declared ?? 0;
    let released = false;
    const release = () => {
      if (released) return;
      released = true;
      this.leaseEnded();
      if (claimed === 0) return;
      claimed = 0;
      this.forget(id);
    };
    const lease: UploadLease = {
      grow: (received) => {
        if (received <= claimed) return;
        // Ahead by a step when that fits, else exactly what arrived; refused when not even that fits.
        const ahead = declared === undefined ? received + HOLD_STEP_BYTES : received;
        const fits = ahead > received ? then(this.holds.tryHold(id, ahead, this.highWatermarkBytes!), (a) => a.ok) : false;
        return then(fits, (ok) => {
          if (ok) {
            claimed = ahead;
            return;
          }
          return then(this.take(id, received, log), () => void (claimed = received));
        });
      },
      // The blob now counts in the stored bytes: its hold must go at once, or it would count twice.
      recorded: release,
      release,
    };
    this.leaseStarted();
    try {
      const taken = this.take(id, claimed, log);
      if (!isPromise(taken)) return lease;
      return taken.then(
        () => lease,
        (err: unknown) => {
          release();
          throw err;
        },
      );
    } catch (err) {
      release();
      throw err;
    }
  }

  /** Removes a hold; one whose removal fails is retried before the next admission. */
  private forget(id: string): void {
    try {
      const removed = this.holds.remove(id);
      if (isPromise(removed)) removed.catch(() => this.stuck.add(id));
    } catch {
      this.stuck.add(id);
    }
  }

  private leaseStarted(): void {
    this.active++;
    const every = this.holds.renewEveryMs;
    if (every === undefined || this.renewTimer) return;
    this.renewTimer = setInterval(() => {
      const renewed = this.holds.renew();
      if (isPromise(renewed)) renewed.catch((err: unknown) => this.log?.warn({ err }, 'could not renew the upload holds'));
    }, every);
    this.renewTimer.unref();
  }

  private leaseEnded(): void {
    if (--this.active > 0 || !this.renewTimer) return;
    clearInterval(this.renewTimer);
    this.renewTimer = undefined;
  }

  private take(id: string, bytes: number, log?: Pick<Logger, 'warn'>): Awaitable<void> {
    const limit = this.highWatermarkBytes!;
    const cleared = this.clearStuck();
    const attempt = then(cleared, () =>
      then(this.holds.tryHold(id, bytes, limit), (first) =>
        // Holds of crashed processes are only worth looking for when they stand in the way.
        first.ok ? first : then(this.holds.removeDead(), (removed) => (removed ? this.holds.tryHold(id, bytes, limit) : first)),
      ),
    );
    return then(attempt, (a) => this.settle(a, bytes, log));
  }

  private clearStuck(): Awaitable<void> {
    let chain: Awaitable<void> = undefined;
    for (const old of this.stuck) {
      chain = then(chain, () =>
        then(this.holds.remove(old), () => {
          this.stuck.delete(old);
        }),
      );
    }
    return chain;
  }

  private settle(attempt: HoldAttempt, bytes: number, log?: Pick<Logger, 'warn'>): void {
    const limit = this.highWatermarkBytes!;
    storageState.bytesStored = attempt.stored;
    storageState.aboveHighWatermark = attempt.stored > limit;
    if (attempt.ok) return;
    storageState.uploadsRefused++;
    log?.warn(
      { bytesStored: attempt.stored, bytesInFlight: attempt.held, bytesAsked: bytes, highWatermarkBytes: limit },
      'upload refused: it would take the bytes stored above the high watermark (free space with fastpull gc or raise FASTPULL_HIGH_WATERMARK_BYTES)',
    );
    throw new AppError('INSUFFICIENT_STORAGE', 'the origin is at its storage high watermark and accepts no uploads', {
      bytesStored: attempt.stored,
      highWatermarkBytes: limit,
    });
  }
}

/**
 * The body as the store should read it: each chunk is let through once the lease has grown to cover it,
 * so an asynchronous refusal (PostgreSQL) stops the upload before its bytes are taken in. Bytes past
 * `limit` (the upload limit, or the declared size) are left for the store to refuse with its own error. A request body is iterated without being
 * destroyed on an early return, so the refusal can still be answered on its socket.
 */
export async function* leased(
  source: Readable | AsyncIterable<Buffer>,
  lease: UploadLease,
  limit = Number.MAX_SAFE_INTEGER,
): AsyncGenerator<Buffer> {
  const chunks: AsyncIterable<Buffer> = source instanceof Readable ? source.iterator({ destroyOnReturn: false }) : source;
  let total = 0;
  for await (const chunk of chunks) {
    total += chunk.length;
    if (total <= limit) {
      const grown = lease.grow(total);
      if (isPromise(grown)) await grown;
    }
    yield chunk;
  }
}
