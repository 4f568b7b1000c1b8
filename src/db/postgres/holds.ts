import type { HoldAttempt, UploadHoldArea } from '../upload-holds.js';
import type { Sql } from '../postgres-index.js';
import { renewalPeriod, replicaId } from './replica.js';

/** Serialises admissions across replicas, per transaction ('fphd'). */
const HOLDS_LOCK = 0x66_70_68_64;
/** A hold lasts this long unless its replica renews it: a dead replica's holds free their room by then. */
export const DEFAULT_HOLD_TTL_MS = 60_000;

/**
 * Upload holds in PostgreSQL, shared by replicas on different machines: a pid means nothing across
 * machines, so each hold names its replica and expires unless that replica renews it while the upload runs.
 * Admissions are serialised by a transaction-scoped advisory lock: the read of stored + held bytes and the
 * write of the hold are one step for every replica, as SQLite's write lock makes them one step there.
 */
export class PgUploadHolds implements UploadHoldArea {
  readonly renewEveryMs: number;

  constructor(
    private readonly sql: Sql,
    readonly owner = replicaId(),
    readonly ttlMs = DEFAULT_HOLD_TTL_MS,
  ) {
    this.renewEveryMs = renewalPeriod(ttlMs);
  }

  async storedBytes(): Promise<number> {
    const [row] = await this.sql<{ bytes: number }[]>`SELECT blob_bytes AS bytes FROM index_counters`;
    return row?.bytes ?? 0;
  }

  async heldBytes(): Promise<number> {
    const [row] = await this.sql<{ bytes: number }[]>`
      SELECT coalesce(sum(bytes), 0)::bigint AS bytes FROM upload_holds WHERE expires_at >= ${Date.now()}`;
    return row?.bytes ?? 0;
  }

  async tryHold(id: string, bytes: number, limit: number): Promise<HoldAttempt> {
    return this.sql.begin(async (tx) => {
      const now = Date.now();
      await tx`SELECT pg_advisory_xact_lock(${HOLDS_LOCK})`;
      // Expired holds are a dead replica's: their room is free again.
      await tx`DELETE FROM upload_holds WHERE expires_at < ${now}`;
      const [stored] = await tx<{ bytes: number }[]>`SELECT blob_bytes AS bytes FROM index_counters`;
      const [held] = await tx<{ bytes: number }[]>`SELECT coalesce(sum(bytes), 0)::bigint AS bytes FROM upload_holds WHERE id != ${id}`;
      const attempt = { stored: stored?.bytes ?? 0, held: held?.bytes ?? 0 };
      if (attempt.stored + attempt.held + bytes > limit) return { ok: false, ...attempt };
      if (bytes > 0) {
        await tx`
          INSERT INTO upload_holds (id, pid, bytes, owner, expires_at) VALUES (${id}, ${process.pid}, ${bytes}, ${this.owner}, ${now + this.ttlMs})
          ON CONFLICT (id) DO UPDATE SET bytes = excluded.bytes, expires_at = excluded.expires_at`;
      }
      return { ok: true, ...attempt };
    }) as Promise<HoldAttempt>;
  }

  async remove(id: string): Promise<void> {
    await this.sql`DELETE FROM upload_holds WHERE id = ${id}`;
  }

  async removeDead(): Promise<boolean> {
    return (await this.sql`DELETE FROM upload_holds WHERE expires_at < ${Date.now()}`).count > 0;
  }

  /** Nothing to do: an earlier life of this process had another replica id, and its holds expire on their own. */
  removeOwn(): void {}

  async renew(): Promise<void> {
    await this.sql`UPDATE upload_holds SET expires_at = ${Date.now() + this.ttlMs} WHERE owner = ${this.owner}`;
  }
}
