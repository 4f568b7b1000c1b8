import type { Statement } from 'better-sqlite3';
import type { Logger } from 'pino';
import type { DB } from '../db/open.js';
import { AppError } from '../errors.js';

/** Plain values for the metrics module. */
export const storageState = {
  bytesStored: 0,
  /** Undefined when no high watermark is configured. */
  highWatermarkBytes: undefined as number | undefined,
  aboveHighWatermark: false,
  uploadsRefused: 0,
};

/** Space one upload holds while in flight: its declared size, or what it has sent so far. */
export interface UploadLease {
  /** Called with the bytes received so far; throws INSUFFICIENT_STORAGE when they no longer fit. */
  grow(received: number): void;
  /** Called in the same tick as the index commit, so the stored total never misses (or double counts) it. */
  recorded(size: number, created: boolean): void;
  /** Gives the held space back (idempotent). */
  release(): void;
}

const NO_LEASE: UploadLease = { grow() {}, recorded() {}, release() {} };

/**
 * Refuses uploads that would take the stored bytes above `highWatermarkBytes`, counting the bytes that
 * uploads in flight hold (declared or received so far), so the mark holds however many run at once.
 * The total is a table scan, so it is cached and recomputed only when the database changed
 * (own writes: total_changes(); other processes such as `fastpull gc`: PRAGMA data_version),
 * and then at most once per `minRefreshMs`.
 */
export class StorageGuard {
  private readonly sum: Statement<[], { bytes: number | null }>;
  private readonly changes: Statement<[], { n: number }>;
  private cachedKey = '';
  private refreshedAt = -Infinity;
  /** Bytes held by uploads in flight. */
  private held = 0;
  /** Bytes this process committed since the last scan (the scan may be up to minRefreshMs old). */
  private committedSinceScan = 0;

  constructor(
    private readonly db: DB,
    readonly highWatermarkBytes: number | undefined,
    private readonly minRefreshMs = 1000,
  ) {
    // Kept by triggers (migration 005): one row, not a scan of every blob at start and on each change.
    this.sum = db.prepare('SELECT blob_bytes AS bytes FROM index_counters WHERE id = 1');
    this.changes = db.prepare('SELECT total_changes() AS n');
    storageState.highWatermarkBytes = highWatermarkBytes;
    this.refresh(true);
  }

  /** Bytes stored according to the index: the last scan plus what this process committed since. */
  bytesStored(): number {
    this.refresh(false);
    return storageState.bytesStored + this.committedSinceScan;
  }

  /** Bytes uploads in flight hold against the watermark. */
  bytesHeld(): number {
    return this.held;
  }

  private refresh(force: boolean): void {
    const key = `${this.db.pragma('data_version', { simple: true }) as number}:${this.changes.get()!.n}`;
    if (!force && (key === this.cachedKey || performance.now() - this.refreshedAt < this.minRefreshMs)) return;
    this.cachedKey = key;
    this.refreshedAt = performance.now();
    // Synchronous from the count to here: every commit of ours is either in the sum or still in the delta.
    storageState.bytesStored = this.sum.get()!.bytes ?? 0;
    this.committedSinceScan = 0;
    storageState.aboveHighWatermark =
      this.highWatermarkBytes !== undefined && storageState.bytesStored > this.highWatermarkBytes;
  }

  /** Call before reading any byte of an upload (or starting a fetch job). Throws INSUFFICIENT_STORAGE. */
  assertAccepting(log?: Pick<Logger, 'warn'>): void {
    this.check(0, log);
  }

  /**
   * Admits an upload that declares `declared` bytes (Content-Length or ?size=; undefined when it does
   * not say), holding them until release. Throws INSUFFICIENT_STORAGE when they do not fit.
   */
  admit(declared: number | undefined, log?: Pick<Logger, 'warn'>): UploadLease {
    if (this.highWatermarkBytes === undefined) return NO_LEASE;
    let claimed = declared ?? 0;
    this.check(claimed, log);
    this.held += claimed;
    return {
      grow: (received) => {
        if (received <= claimed) return;
        this.check(received - claimed, log);
        this.held += received - claimed;
        claimed = received;
      },
      recorded: (size, created) => {
        if (created) this.committedSinceScan += size;
      },
      release: () => {
        this.held -= claimed;
        claimed = 0;
      },
    };
  }

  private check(more: number, log?: Pick<Logger, 'warn'>): void {
    if (this.highWatermarkBytes === undefined) return;
    const stored = this.bytesStored();
    if (stored + this.held + more <= this.highWatermarkBytes) return;
    storageState.uploadsRefused++;
    log?.warn(
      { bytesStored: stored, bytesInFlight: this.held, bytesAsked: more, highWatermarkBytes: this.highWatermarkBytes },
      'upload refused: it would take the bytes stored above the high watermark (free space with fastpull gc or raise FASTPULL_HIGH_WATERMARK_BYTES)',
    );
    throw new AppError('INSUFFICIENT_STORAGE', 'the origin is at its storage high watermark and accepts no uploads', {
      bytesStored: stored,
      highWatermarkBytes: this.highWatermarkBytes,
    });
  }
}
