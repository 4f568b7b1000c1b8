import type { Statement } from 'better-sqlite3';
import type { DB } from './open.js';

export interface HoldAttempt {
  ok: boolean;
  /** Bytes of every stored blob (index_counters, kept by triggers). */
  stored: number;
  /** Bytes held by uploads in flight, this one's previous hold excluded. */
  held: number;
}

/** Rows of upload_holds (migration 004): space uploads in flight hold against the high watermark. */
export class UploadHolds {
  private readonly stmt: {
    stored: Statement<[], { bytes: number }>;
    heldExcept: Statement<[string], { bytes: number }>;
    upsert: Statement<[{ id: string; pid: number; bytes: number }]>;
    remove: Statement<[string]>;
    pids: Statement<[], { pid: number }>;
    removePid: Statement<[number]>;
  };
  private readonly tryHoldTx: (id: string, pid: number, bytes: number, limit: number) => HoldAttempt;

  constructor(private readonly db: DB) {
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
    const tx = db.transaction((id: string, pid: number, bytes: number, limit: number): HoldAttempt => {
      const stored = this.stmt.stored.get()?.bytes ?? 0;
      const held = this.stmt.heldExcept.get(id)!.bytes;
      if (stored + held + bytes > limit) return { ok: false, stored, held };
      if (bytes > 0) this.stmt.upsert.run({ id, pid, bytes });
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

  /** Sets hold `id` to `bytes` if stored + every other hold + bytes stays within `limit`. */
  tryHold(id: string, pid: number, bytes: number, limit: number): HoldAttempt {
    return this.tryHoldTx(id, pid, bytes, limit);
  }

  remove(id: string): void {
    this.stmt.remove.run(id);
  }

  /** Removes the holds of processes for which `alive` is false; true if any went. */
  removeDead(alive: (pid: number) => boolean): boolean {
    let removed = false;
    for (const { pid } of this.stmt.pids.all()) {
      if (alive(pid)) continue;
      removed = this.stmt.removePid.run(pid).changes > 0 || removed;
    }
    return removed;
  }

  removePid(pid: number): void {
    this.stmt.removePid.run(pid);
  }
}
