import type { Digests } from '../../store/digests.js';
import type { BlobRef, BlobState, GcRow, MaintenanceIndex, RowRef, ScrubCursor, Stats } from '../maintenance.js';
import type { Awaitable } from '../awaitable.js';
import type { Sql } from '../postgres-index.js';
import { recordEvent } from './events.js';

/** A transaction handle of postgres.js (`sql.begin`'s argument), typed as the pool it behaves like. */
type Tx = Sql;

/** The PostgreSQL twin of MaintenanceQueries: the same statements, sums cast back to bigint (numbers). */
export class PostgresMaintenance implements MaintenanceIndex {
  constructor(
    private readonly sql: Sql,
    readonly actor: string | null = null,
  ) {}

  as(actor: string | null): PostgresMaintenance {
    return new PostgresMaintenance(this.sql, actor);
  }

  async page(after: string, cutoff: number, limit: number): Promise<BlobRef[]> {
    return [
      ...(await this.sql<BlobRef[]>`
        SELECT sha512, size FROM blobs
        WHERE sha512 > ${after} AND quarantined_at IS NULL AND coalesce(verified_at, 0) < ${cutoff}
        ORDER BY sha512 LIMIT ${limit}`),
    ];
  }

  async count(cutoff: number): Promise<{ blobs: number; bytes: number }> {
    const [row] = await this.sql<{ blobs: number; bytes: number }[]>`
      SELECT count(*) AS blobs, coalesce(sum(size), 0)::bigint AS bytes FROM blobs
      WHERE quarantined_at IS NULL AND coalesce(verified_at, 0) < ${cutoff}`;
    return { blobs: row!.blobs, bytes: row!.bytes };
  }

  async sample(limit: number): Promise<BlobRef[]> {
    return [...(await this.sql<BlobRef[]>`SELECT sha512, size FROM blobs WHERE quarantined_at IS NULL ORDER BY random() LIMIT ${limit}`)];
  }

  async scrubPage(cursor: ScrubCursor, cutoff: number, limit: number): Promise<(BlobRef & { v: number })[]> {
    return [
      ...(await this.sql<(BlobRef & { v: number })[]>`
        SELECT sha512, size, coalesce(verified_at, 0) AS v FROM blobs
        WHERE quarantined_at IS NULL AND coalesce(verified_at, 0) < ${cutoff}
          AND (coalesce(verified_at, 0) > ${cursor.verified}
               OR (coalesce(verified_at, 0) = ${cursor.verified} AND sha512 > ${cursor.sha512}))
        ORDER BY coalesce(verified_at, 0), sha512 LIMIT ${limit}`),
    ];
  }

  async markVerified(sha512: string, at = Date.now()): Promise<void> {
    await this.sql`UPDATE blobs SET verified_at = ${at} WHERE sha512 = ${sha512}`;
  }

  markQuarantined(sha512: string, at = Date.now()): Promise<boolean> {
    return this.sql.begin((tx) => this.quarantineIn(tx as unknown as Tx, sha512, at)) as Promise<boolean>;
  }

  markQuarantinedIfAbsent(sha512: string, stillAbsent: () => Awaitable<boolean>): Promise<boolean> {
    return this.sql.begin(async (tx) => {
      // The row stays locked while the store is asked: a re-upload's release of the quarantine waits for us.
      await tx`SELECT 1 FROM blobs WHERE sha512 = ${sha512} FOR UPDATE`;
      return (await stillAbsent()) && (await this.quarantineIn(tx as unknown as Tx, sha512, Date.now()));
    }) as Promise<boolean>;
  }

  async clearQuarantine(sha512: string): Promise<void> {
    await this.sql.begin(async (tx) => {
      const r = await tx`UPDATE blobs SET quarantined_at = NULL WHERE sha512 = ${sha512} AND quarantined_at IS NOT NULL`;
      if (r.count === 1) await recordEvent(tx as unknown as Tx, { type: 'blob.restored', sha512, actor: this.actor });
    });
  }

  async blobState(sha512: string): Promise<BlobState | undefined> {
    const [row] = await this.sql<BlobState[]>`SELECT size, quarantined_at FROM blobs WHERE sha512 = ${sha512}`;
    return row;
  }

  async rowsPage(after: string, limit: number): Promise<RowRef[]> {
    return [...(await this.sql<RowRef[]>`SELECT sha512, size, quarantined_at FROM blobs WHERE sha512 > ${after} ORDER BY sha512 LIMIT ${limit}`)];
  }

  async upsertFromDisk(digests: Digests, ingestedAt: number, options: { pinned: boolean }, verifiedAt = Date.now()): Promise<void> {
    await this.sql.begin(async (t) => {
      const tx = t as unknown as Tx;
      const [before] = await tx<BlobState[]>`SELECT size, quarantined_at FROM blobs WHERE sha512 = ${digests.sha512} FOR UPDATE`;
      await tx`
        INSERT INTO blobs (sha512, blake2b, sha256, size, ingested_at, verified_at, pinned)
        VALUES (${digests.sha512}, ${digests.blake2b}, ${digests.sha256}, ${digests.size}, ${Math.floor(ingestedAt)},
                ${verifiedAt}, ${options.pinned ? 1 : 0})
        ON CONFLICT (sha512) DO UPDATE SET
          blake2b = excluded.blake2b, sha256 = excluded.sha256, size = excluded.size,
          verified_at = excluded.verified_at, quarantined_at = NULL`;
      if (before === undefined) await recordEvent(tx, { type: 'blob.stored', sha512: digests.sha512, names: [], actor: this.actor });
      else if (before.quarantined_at !== null) await recordEvent(tx, { type: 'blob.restored', sha512: digests.sha512, actor: this.actor });
    });
  }

  deleteBlob(sha512: string): Promise<boolean> {
    return this.sql.begin((tx) => this.deleteIn(tx as unknown as Tx, sha512)) as Promise<boolean>;
  }

  deleteIfAbsent(sha512: string, stillAbsent: () => Awaitable<boolean>): Promise<boolean> {
    return this.sql.begin(async (tx) => {
      await tx`SELECT 1 FROM blobs WHERE sha512 = ${sha512} FOR UPDATE`;
      return (await stillAbsent()) && (await this.deleteIn(tx as unknown as Tx, sha512));
    }) as Promise<boolean>;
  }

  async gcCandidates(cutoff: number): Promise<GcRow[]> {
    return [
      ...(await this.sql<GcRow[]>`
        SELECT b.sha512, b.size, b.ingested_at, b.quarantined_at FROM blobs b
        WHERE b.pinned = 0 AND b.ingested_at < ${cutoff}
          AND NOT EXISTS (SELECT 1 FROM names n WHERE n.sha512 = b.sha512 AND n.detached_at IS NULL)
        ORDER BY b.ingested_at, b.sha512`),
    ];
  }

  deleteIfCollectable(sha512: string, cutoff: number): Promise<boolean> {
    return this.sql.begin(async (t) => {
      const tx = t as unknown as Tx;
      // Locking the row first makes an attach (which inserts a name referencing it) wait for our decision.
      const rows = await tx`
        SELECT 1 FROM blobs b
        WHERE b.sha512 = ${sha512} AND b.pinned = 0 AND b.ingested_at < ${cutoff}
          AND NOT EXISTS (SELECT 1 FROM names n WHERE n.sha512 = b.sha512 AND n.detached_at IS NULL)
        FOR UPDATE`;
      return rows.length === 1 && (await this.deleteIn(tx, sha512));
    }) as Promise<boolean>;
  }

  async attachedNames(sha512: string): Promise<string[]> {
    const rows = await this.sql<{ filename: string }[]>`
      SELECT filename FROM names WHERE sha512 = ${sha512} AND detached_at IS NULL ORDER BY seq DESC`;
    return rows.map((r) => r.filename);
  }

  async stats(largest: number): Promise<Stats> {
    const [[counts], [names], [refs], top] = await Promise.all([
      this.sql<{ blobs: number; quarantined: number; pinned: number; bytes: number; qbytes: number }[]>`
        SELECT count(*) AS blobs, count(quarantined_at) AS quarantined, coalesce(sum(pinned), 0)::bigint AS pinned,
               coalesce(sum(CASE WHEN quarantined_at IS NULL THEN size END), 0)::bigint AS bytes,
               coalesce(sum(CASE WHEN quarantined_at IS NOT NULL THEN size END), 0)::bigint AS qbytes
        FROM blobs`,
      this.sql<{ names: number; attached: number; pairs: number }[]>`
        SELECT count(DISTINCT filename) AS names,
               count(DISTINCT CASE WHEN detached_at IS NULL THEN filename END) AS attached,
               count(CASE WHEN detached_at IS NULL THEN 1 END) AS pairs
        FROM names`,
      this.sql<{ saved: number; shared: number; unref: number; unrefbytes: number }[]>`
        SELECT coalesce(sum(CASE WHEN r.n > 1 THEN b.size * (r.n - 1) ELSE 0 END), 0)::bigint AS saved,
               count(CASE WHEN r.n > 1 THEN 1 END) AS shared,
               count(CASE WHEN r.n IS NULL THEN 1 END) AS unref,
               coalesce(sum(CASE WHEN r.n IS NULL THEN b.size END), 0)::bigint AS unrefbytes
        FROM blobs b LEFT JOIN (SELECT sha512, count(*) AS n FROM names WHERE detached_at IS NULL GROUP BY sha512) r
          ON r.sha512 = b.sha512`,
      this.sql<Stats['largest']>`
        SELECT filename, sha512, size FROM (
          SELECT n.filename, n.sha512, b.size,
                 row_number() OVER (PARTITION BY n.filename ORDER BY n.seq DESC) AS rn
          FROM names n JOIN blobs b ON b.sha512 = n.sha512
          WHERE n.detached_at IS NULL) t
        WHERE rn = 1 ORDER BY size DESC, filename COLLATE "C" LIMIT ${largest}`,
    ]);
    return {
      blobs: counts!.blobs,
      names: names!.names,
      attachedNames: names!.attached,
      attachedPairs: names!.pairs,
      quarantined: counts!.quarantined,
      pinned: counts!.pinned,
      bytesStored: counts!.bytes,
      quarantinedBytes: counts!.qbytes,
      unreferencedBlobs: refs!.unref,
      unreferencedBytes: refs!.unrefbytes,
      dedupSavedBytes: refs!.saved,
      sharedBlobs: refs!.shared,
      largest: [...top],
    };
  }

  private async quarantineIn(tx: Tx, sha512: string, at: number): Promise<boolean> {
    const r = await tx`UPDATE blobs SET quarantined_at = ${at} WHERE sha512 = ${sha512} AND quarantined_at IS NULL`;
    if (r.count !== 1) return false;
    await recordEvent(tx, { type: 'blob.quarantined', sha512, actor: this.actor, at });
    return true;
  }

  private async deleteIn(tx: Tx, sha512: string): Promise<boolean> {
    const [row] = await tx`SELECT 1 FROM blobs WHERE sha512 = ${sha512} FOR UPDATE`;
    if (row === undefined) return false;
    await recordEvent(tx, { type: 'blob.deleted', sha512, actor: this.actor });
    return (await tx`DELETE FROM blobs WHERE sha512 = ${sha512}`).count === 1;
  }
}

