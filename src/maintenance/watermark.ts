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

/**
 * Refuses uploads while the index says more than `highWatermarkBytes` are stored.
 * The total is a table scan, so it is cached and recomputed only when the database changed
 * (own writes: total_changes(); other processes such as `fastpull gc`: PRAGMA data_version),
 * and then at most once per `minRefreshMs`.
 */
export class StorageGuard {
  private readonly sum: Statement<[], { bytes: number | null }>;
  private readonly changes: Statement<[], { n: number }>;
  private cachedKey = '';
  private refreshedAt = -Infinity;

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

  /** Bytes stored according to the index (possibly up to minRefreshMs stale). */
  bytesStored(): number {
    this.refresh(false);
    return storageState.bytesStored;
  }

  private refresh(force: boolean): void {
    const key = `${this.db.pragma('data_version', { simple: true }) as number}:${this.changes.get()!.n}`;
    if (!force && (key === this.cachedKey || performance.now() - this.refreshedAt < this.minRefreshMs)) return;
    this.cachedKey = key;
    this.refreshedAt = performance.now();
    storageState.bytesStored = this.sum.get()!.bytes ?? 0;
    storageState.aboveHighWatermark =
      this.highWatermarkBytes !== undefined && storageState.bytesStored > this.highWatermarkBytes;
  }

  /** Call before reading any byte of an upload (or starting a fetch job). Throws INSUFFICIENT_STORAGE. */
  assertAccepting(log?: Pick<Logger, 'warn'>): void {
    if (this.highWatermarkBytes === undefined) return;
    const stored = this.bytesStored();
    if (stored <= this.highWatermarkBytes) return;
    storageState.uploadsRefused++;
    log?.warn(
      { bytesStored: stored, highWatermarkBytes: this.highWatermarkBytes },
      'upload refused: bytes stored are above the high watermark (free space with fastpull gc or raise FASTPULL_HIGH_WATERMARK_BYTES)',
    );
    throw new AppError('INSUFFICIENT_STORAGE', 'the origin is above its storage high watermark and accepts no uploads', {
      bytesStored: stored,
      highWatermarkBytes: this.highWatermarkBytes,
    });
  }
}
