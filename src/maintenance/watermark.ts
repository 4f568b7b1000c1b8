import type { Logger } from 'pino';
import type { DB } from '../db/open.js';
import { UploadHolds } from '../db/upload-holds.js';
import { AppError } from '../errors.js';
import { processAlive } from '../store/blob-store.js';

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
  /** Called right after the index commit: from then on the blob counts as stored, no longer as held. */
  recorded(size: number, created: boolean): void;
  /** Gives the held space back (idempotent). */
  release(): void;
}

const NO_LEASE: UploadLease = { grow() {}, recorded() {}, release() {} };

/** Undeclared bodies take their hold ahead in steps of this, so a GiB costs ~128 index writes, not one per chunk. */
const HOLD_STEP_BYTES = 8 * 1024 * 1024;
let nextHold = 0;

/**
 * Refuses uploads that would take the stored bytes above `highWatermarkBytes`, counting the bytes that
 * uploads in flight hold (declared or received so far), so the mark holds however many run at once —
 * in this process or any other writing to the same index (cluster workers, a CLI beside the server):
 * the holds live in the index (upload_holds) and are checked and taken under its write lock. Stored
 * bytes are a one-row read kept current by triggers (index_counters).
 */
export class StorageGuard {
  private readonly holds: UploadHolds;
  /** Holds whose removal failed (e.g. SQLite full): retried before the next admission. */
  private readonly stuck = new Set<string>();

  constructor(
    db: DB,
    readonly highWatermarkBytes: number | undefined,
  ) {
    this.holds = new UploadHolds(db);
    storageState.highWatermarkBytes = highWatermarkBytes;
    // A hold carrying our pid is from an earlier life of a process with the same pid (pid 1 in a container).
    if (highWatermarkBytes !== undefined) this.holds.removePid(process.pid);
    this.bytesStored();
  }

  /** Bytes stored according to the index. */
  bytesStored(): number {
    const stored = this.holds.storedBytes();
    storageState.bytesStored = stored;
    storageState.aboveHighWatermark = this.highWatermarkBytes !== undefined && stored > this.highWatermarkBytes;
    return stored;
  }

  /** Bytes uploads in flight (in every process) hold against the watermark. */
  bytesHeld(): number {
    return this.holds.heldBytes();
  }

  /** Call before starting a fetch job (or reading an upload): refuses while stored + held is above the mark. */
  assertAccepting(log?: Pick<Logger, 'warn'>): void {
    if (this.highWatermarkBytes === undefined) return;
    this.take('', 0, log);
  }

  /**
   * Admits an upload that declares `declared` bytes (Content-Length or ?size=; undefined when it does
   * not say), holding them until released. Throws INSUFFICIENT_STORAGE when they do not fit.
   */
  admit(declared: number | undefined, log?: Pick<Logger, 'warn'>): UploadLease {
    if (this.highWatermarkBytes === undefined) return NO_LEASE;
    const id = `${process.pid}-${++nextHold}`;
    let claimed = declared ?? 0;
    this.take(id, claimed, log);
    const release = () => {
      if (claimed === 0) return;
      claimed = 0;
      try {
        this.holds.remove(id);
      } catch {
        this.stuck.add(id);
      }
    };
    return {
      grow: (received) => {
        if (received <= claimed) return;
        // Ahead by a step when that fits, else exactly what arrived; refused when not even that fits.
        const ahead = declared === undefined ? received + HOLD_STEP_BYTES : received;
        if (ahead > received && this.tryTake(id, ahead)) claimed = ahead;
        else {
          this.take(id, received, log);
          claimed = received;
        }
      },
      // The blob now counts in the stored bytes: its hold must go at once, or it would count twice.
      recorded: release,
      release,
    };
  }

  private tryTake(id: string, bytes: number): boolean {
    return this.holds.tryHold(id, process.pid, bytes, this.highWatermarkBytes!).ok;
  }

  private take(id: string, bytes: number, log?: Pick<Logger, 'warn'>): void {
    for (const old of this.stuck) {
      this.holds.remove(old);
      this.stuck.delete(old);
    }
    let attempt = this.holds.tryHold(id, process.pid, bytes, this.highWatermarkBytes!);
    // Holds of crashed processes are only worth looking for when they stand in the way.
    if (!attempt.ok && this.holds.removeDead(processAlive)) attempt = this.holds.tryHold(id, process.pid, bytes, this.highWatermarkBytes!);
    storageState.bytesStored = attempt.stored;
    storageState.aboveHighWatermark = attempt.stored > this.highWatermarkBytes!;
    if (attempt.ok) return;
    storageState.uploadsRefused++;
    log?.warn(
      { bytesStored: attempt.stored, bytesInFlight: attempt.held, bytesAsked: bytes, highWatermarkBytes: this.highWatermarkBytes },
      'upload refused: it would take the bytes stored above the high watermark (free space with fastpull gc or raise FASTPULL_HIGH_WATERMARK_BYTES)',
    );
    throw new AppError('INSUFFICIENT_STORAGE', 'the origin is at its storage high watermark and accepts no uploads', {
      bytesStored: attempt.stored,
      highWatermarkBytes: this.highWatermarkBytes,
    });
  }
}
