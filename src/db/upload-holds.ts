import type { Statement } from 'better-sqlite3';
import { processAlive } from '../store/blob-store.js';
import type { DB } from './open.js';
import type { Awaitable } from './awaitable.js';

export interface HoldAttempt {
  ok: boolean;
  /** Bytes of every stored blob (index_counters, kept by triggers). */
  stored: number;
  /** Bytes held by uploads in flight, this one's previous hold excluded. */
  held: number;
}

/**
 * Space uploads in flight hold against the high watermark, whichever engine holds the index
 * (`OriginIndex.holds`). Holds are taken under a lock that spans every process writing to the index, so
 * two uploads can never both see the same room and both take it.
 */
export interface UploadHoldArea {
  /** Bytes of every stored blob. */
  storedBytes(): Awaitable<number>;
  /** Bytes live holds keep, in every process. */
  heldBytes(): Awaitable<number>;
  /** Sets hold `id` to `bytes` if stored + every other live hold + bytes stays within `limit`. */
  tryHold(id: string, bytes: number, limit: number): Awaitable<HoldAttempt>;
  remove(id: string): Awaitable<void>;
  /** Removes the holds of processes that are gone; true if any went. */
  removeDead(): Awaitable<boolean>;
  /** Removes holds an earlier life of this process left behind (same pid after a restart, e.g. pid 1 in a container). */
  removeOwn(): Awaitable<void>;
  /** Keeps this process's holds alive where they expire (PostgreSQL); a no-op where liveness is the process's own. */
  renew(): Awaitable<void>;
  /** Set where holds expire unless renewed: how often a process with uploads in flight must call renew. */
  readonly renewEveryMs?: number;
}

/**
 * Rows of upload_holds (migration 004) in SQLite: one machine, so a hold belongs to a pid and a crashed
 * process's holds are those whose pid no longer runs.
 */
export class UploadHolds implements UploadHoldArea {
  private readonly stmt: {
    stored: Statement<[], { bytes: number }>;
    heldExcept: Statement<[string], { bytes: number }>;
    upsert: Statement<[{ id: string; pid: number; bytes: number }]>;
    remove: Statement<[string]>;
    pids: Statement<[], { pid: number }>;
    removePid: Statement<[number]>;
  };
  private readonly tryHoldTx: (id: string, bytes: number, limit: number) => HoldAttempt;

  constructor(
    private readonly db: DB,
    private readonly pid = process.pid,
    /** Whether a pid still runs; a test stands in for the kernel here. */
    private readonly alive: (pid: number) => boolean = processAlive,
  ) {
    this.stmt = {
      stored: db.prepare('SELECT blob_bytes AS bytes FROM index_counters WHERE id = 1'),
      heldExcept: db.prepare('SELECT coalesce(sum(bytes), 0) AS bytes FROM upload_holds WHERE id != ?'),
      upsert: db.prepare(
        'INSERT INTO upload_holds (id, pid, bytes) VALUES (@id, @pid, @bytes) ON CONFLICT (id) DO UPDATE SET bytes = excluded.bytes',
      ),
      remove: db.prepare('DELETE FROM upload_holds WHERE id = ?'),
      pids: db.prepare('SELECT DISTINCT pid FROM upload_holds'),
      removePid: db.prepare('DELETE FROM upload_holds WHERE pid = ?'),
    };
    const tx = db.transaction((id: string, bytes: number, limit: number): HoldAttempt => {
      const stored = this.stmt.stored.get()?.bytes ?? 0;
      const held = this.stmt.heldExcept.get(id)!.bytes;
      if (stored + held + bytes > limit) return { ok: false, stored, held };
      if (bytes > 0) this.stmt.upsert.run({ id, pid: this.pid, bytes });
      return { ok: true, stored, held };
    });
    // Under the write lock: two processes can never both see the same room and both take it.
    this.tryHoldTx = (...args) => tx.immediate(...args);
  }

  storedBytes(): number {
    return this.stmt.stored.get()?.bytes ?? 0;
  }

  heldBytes(): number {
    return this.stmt.heldExcept.get('')!.bytes;
  }

  tryHold(id: string, bytes: number, limit: number): HoldAttempt {
    return this.tryHoldTx(id, bytes, limit);
  }

  remove(id: string): void {
    this.stmt.remove.run(id);
  }

  removeDead(): boolean {
    let removed = false;
    for (const { pid } of this.stmt.pids.all()) {
      if (this.alive(pid)) continue;
      removed = this.stmt.removePid.run(pid).changes > 0 || removed;
    }
    return removed;
  }

  removeOwn(): void {
    this.stmt.removePid.run(this.pid);
  }

  renew(): void {}
}
