import type { Statement } from 'better-sqlite3';
import type { Digests } from '../store/digests.js';
import { recordEvent } from './events.js';
import type { DB } from './open.js';
import type { Awaitable } from './awaitable.js';

export interface BlobRef {
  sha512: string;
  size: number;
}

export interface ScrubCursor {
  verified: number;
  sha512: string;
}

export type BlobState = { size: number; quarantined_at: number | null };
export type RowRef = BlobRef & { quarantined_at: number | null };
export type GcRow = BlobRef & { ingested_at: number; quarantined_at: number | null };

/**
 * The index as maintenance sees it (verify, scrub, fsck, reindex, gc, stats): whole-table scans and the
 * changes they make, each change announced in the outbox in its own transaction. SQLite answers
 * synchronously, PostgreSQL with promises; callers await either.
 */
export interface MaintenanceIndex {
  /** Who the changes made through this handle are announced as (`scrub`, `cli:<user>`). */
  readonly actor: string | null;
  /** The same index, announcing its changes as `actor`. */
  as(actor: string | null): MaintenanceIndex;
  page(after: string, cutoff: number, limit: number): Awaitable<BlobRef[]>;
  count(cutoff: number): Awaitable<{ blobs: number; bytes: number }>;
  sample(limit: number): Awaitable<BlobRef[]>;
  scrubPage(cursor: ScrubCursor, cutoff: number, limit: number): Awaitable<(BlobRef & { v: number })[]>;
  markVerified(sha512: string, at?: number): Awaitable<void>;
  markQuarantined(sha512: string, at?: number): Awaitable<boolean>;
  /**
   * Quarantines a row whose blob is gone, asking `stillAbsent` under the write lock (SQLite) or with the row
   * locked (PostgreSQL) so a re-upload that put the blob back meanwhile wins.
   */
  markQuarantinedIfAbsent(sha512: string, stillAbsent: () => Awaitable<boolean>): Awaitable<boolean>;
  clearQuarantine(sha512: string): Awaitable<void>;
  blobState(sha512: string): Awaitable<BlobState | undefined>;
  /** One page of every blob row, in sha512 order after `after`. */
  rowsPage(after: string, limit: number): Awaitable<RowRef[]>;
  upsertFromDisk(digests: Digests, ingestedAt: number, options: { pinned: boolean }, verifiedAt?: number): Awaitable<void>;
  deleteBlob(sha512: string): Awaitable<boolean>;
  /** Deletes the row when its blob is still absent (asked as markQuarantinedIfAbsent does). */
  deleteIfAbsent(sha512: string, stillAbsent: () => Awaitable<boolean>): Awaitable<boolean>;
  gcCandidates(cutoff: number): Awaitable<GcRow[]>;
  /** Re-checks under the write lock that gc may still take it (no name since, not pinned, not re-ingested), then deletes it. */
  deleteIfCollectable(sha512: string, cutoff: number): Awaitable<boolean>;
  attachedNames(sha512: string): Awaitable<string[]>;
  stats(largest: number): Awaitable<Stats>;
}

/** Every blob row, paged so no statement stays open while the caller writes. */
export async function* allRows(index: Pick<MaintenanceIndex, 'rowsPage'>, pageSize = 1000): AsyncGenerator<RowRef> {
  let after = '';
  for (;;) {
    const rows = await index.rowsPage(after, pageSize);
    if (rows.length === 0) return;
    yield* rows;
    after = rows[rows.length - 1]!.sha512;
  }
}

/**
 * Prepared statements for maintenance work (verify, scrub, fsck, reindex, gc, stats).
 * Kept apart from DistfileIndex: these scan whole tables and are never on the download path.
 */
export class MaintenanceQueries implements MaintenanceIndex {
  private readonly stmt: {
    pageBySha: Statement<[{ after: string; cutoff: number; limit: number }], BlobRef>;
    countBySha: Statement<[{ cutoff: number }], { blobs: number; bytes: number | null }>;
    sample: Statement<[{ limit: number }], BlobRef>;
    scrubPage: Statement<[{ verified: number; after: string; cutoff: number; limit: number }], BlobRef & { v: number }>;
    markVerified: Statement<[{ sha512: string; at: number }]>;
    markQuarantined: Statement<[{ sha512: string; at: number }]>;
    clearQuarantine: Statement<[string]>;
    blobState: Statement<[string], { size: number; quarantined_at: number | null }>;
    allRows: Statement<[{ after: string; limit: number }], BlobRef & { quarantined_at: number | null }>;
    upsertFromDisk: Statement<[Record<string, unknown>]>;
    deleteBlob: Statement<[string]>;
    gcCandidates: Statement<[{ cutoff: number }], BlobRef & { ingested_at: number; quarantined_at: number | null }>;
    gcStillCollectable: Statement<[{ sha512: string; cutoff: number }], { ok: 1 }>;
    namesOf: Statement<[string], { filename: string }>;
  };

  /** Who the changes made through these queries are announced as (`scrub`, `cli:<user>`). */
  readonly actor: string | null;

  constructor(
    readonly db: DB,
    options: { actor?: string | null } = {},
  ) {
    this.actor = options.actor ?? null;
    this.stmt = {
      pageBySha: db.prepare(
        `SELECT sha512, size FROM blobs
         WHERE sha512 > @after AND quarantined_at IS NULL AND coalesce(verified_at, 0) < @cutoff
         ORDER BY sha512 LIMIT @limit`,
      ),
      countBySha: db.prepare(
        `SELECT count(*) AS blobs, sum(size) AS bytes FROM blobs
         WHERE quarantined_at IS NULL AND coalesce(verified_at, 0) < @cutoff`,
      ),
      sample: db.prepare('SELECT sha512, size FROM blobs WHERE quarantined_at IS NULL ORDER BY random() LIMIT @limit'),
      // Keyset pagination on (verified_at, sha512): rows verified during the pass get verified_at >= cutoff
      // and drop out, while rows that stay unverified (missing files) are stepped over by the cursor.
      scrubPage: db.prepare(
        `SELECT sha512, size, coalesce(verified_at, 0) AS v FROM blobs
         WHERE quarantined_at IS NULL AND coalesce(verified_at, 0) < @cutoff
           AND (coalesce(verified_at, 0) > @verified OR (coalesce(verified_at, 0) = @verified AND sha512 > @after))
         ORDER BY coalesce(verified_at, 0), sha512 LIMIT @limit`,
      ),
      markVerified: db.prepare('UPDATE blobs SET verified_at = @at WHERE sha512 = @sha512'),
      markQuarantined: db.prepare(
        'UPDATE blobs SET quarantined_at = @at WHERE sha512 = @sha512 AND quarantined_at IS NULL',
      ),
      clearQuarantine: db.prepare('UPDATE blobs SET quarantined_at = NULL WHERE sha512 = ? AND quarantined_at IS NOT NULL'),
      blobState: db.prepare('SELECT size, quarantined_at FROM blobs WHERE sha512 = ?'),
      allRows: db.prepare(
        'SELECT sha512, size, quarantined_at FROM blobs WHERE sha512 > @after ORDER BY sha512 LIMIT @limit',
      ),
      upsertFromDisk: db.prepare(
        `INSERT INTO blobs (sha512, blake2b, sha256, size, ingested_at, verified_at, pinned)
         VALUES (@sha512, @blake2b, @sha256, @size, @ingested_at, @verified_at, @pinned)
         ON CONFLICT (sha512) DO UPDATE SET
           blake2b = excluded.blake2b, sha256 = excluded.sha256, size = excluded.size,
           verified_at = excluded.verified_at, quarantined_at = NULL`,
      ),
      deleteBlob: db.prepare('DELETE FROM blobs WHERE sha512 = ?'),
      gcCandidates: db.prepare(
        `SELECT b.sha512, b.size, b.ingested_at, b.quarantined_at FROM blobs b
         WHERE b.pinned = 0 AND b.ingested_at < @cutoff
           AND NOT EXISTS (SELECT 1 FROM names n WHERE n.sha512 = b.sha512 AND n.detached_at IS NULL)
         ORDER BY b.ingested_at, b.sha512`,
      ),
      gcStillCollectable: db.prepare(
        `SELECT 1 AS ok FROM blobs b
         WHERE b.sha512 = @sha512 AND b.pinned = 0 AND b.ingested_at < @cutoff
           AND NOT EXISTS (SELECT 1 FROM names n WHERE n.sha512 = b.sha512 AND n.detached_at IS NULL)`,
      ),
      namesOf: db.prepare(
        'SELECT filename FROM names WHERE sha512 = ? AND detached_at IS NULL ORDER BY seq DESC',
      ),
    };
  }

  as(actor: string | null): MaintenanceQueries {
    return new MaintenanceQueries(this.db, { actor });
  }

  /** Blobs (not quarantined) last verified before `cutoff`, in sha512 order after `after`. */
  page(after: string, cutoff: number, limit: number): BlobRef[] {
    return this.stmt.pageBySha.all({ after, cutoff, limit });
  }

  count(cutoff: number): { blobs: number; bytes: number } {
    const row = this.stmt.countBySha.get({ cutoff })!;
    return { blobs: row.blobs, bytes: row.bytes ?? 0 };
  }

  sample(limit: number): BlobRef[] {
    return this.stmt.sample.all({ limit });
  }

  scrubPage(cursor: ScrubCursor, cutoff: number, limit: number): (BlobRef & { v: number })[] {
    return this.stmt.scrubPage.all({ verified: cursor.verified, after: cursor.sha512, cutoff, limit });
  }

  markVerified(sha512: string, at = Date.now()): void {
    this.stmt.markVerified.run({ sha512, at });
  }

  /**
   * True when this call quarantined it (false: already quarantined or no such row). The quarantine
   * and its event (which carries every name attached now, for the CDN purge) commit together.
   */
  markQuarantined(sha512: string, at = Date.now()): boolean {
    return this.db
      .transaction(() => {
        if (this.stmt.markQuarantined.run({ sha512, at }).changes !== 1) return false;
        recordEvent(this.db, { type: 'blob.quarantined', sha512, actor: this.actor, at });
        return true;
      })
      .immediate();
  }

  clearQuarantine(sha512: string): void {
    this.db
      .transaction(() => {
        if (this.stmt.clearQuarantine.run(sha512).changes === 1) recordEvent(this.db, { type: 'blob.restored', sha512, actor: this.actor });
      })
      .immediate();
  }

  blobState(sha512: string): { size: number; quarantined_at: number | null } | undefined {
    return this.stmt.blobState.get(sha512);
  }

  rowsPage(after: string, limit: number): RowRef[] {
    return this.stmt.allRows.all({ after, limit });
  }

  /**
   * A synchronous check (local disk) runs under the write lock; an asynchronous one (an object store
   * HEAD) cannot, so it runs first and the row's state is re-checked in the transaction.
   */
  markQuarantinedIfAbsent(sha512: string, stillAbsent: () => Awaitable<boolean>): Awaitable<boolean> {
    return this.underLock(stillAbsent, () => this.markQuarantined(sha512));
  }

  deleteIfAbsent(sha512: string, stillAbsent: () => Awaitable<boolean>): Awaitable<boolean> {
    return this.underLock(stillAbsent, () => this.deleteBlob(sha512));
  }

  deleteIfCollectable(sha512: string, cutoff: number): boolean {
    return this.db
      .transaction(() => this.stmt.gcStillCollectable.get({ sha512, cutoff }) !== undefined && this.deleteBlob(sha512))
      .immediate();
  }

  stats(largest: number): Stats {
    return sqliteStats(this.db, largest);
  }

  private underLock(check: () => Awaitable<boolean>, change: () => boolean): Awaitable<boolean> {
    let pending: Promise<boolean> | undefined;
    const result = this.db
      .transaction(() => {
        const absent = check();
        if (typeof absent === 'boolean') return absent && change();
        pending = absent;
        return false;
      })
      .immediate();
    const later = pending as Promise<boolean> | undefined;
    return later === undefined ? result : later.then((absent) => absent && this.db.transaction(change).immediate());
  }

  /**
   * Records a blob found on disk, announcing it in the same transaction. `pinned` (reindex, where
   * every name is lost) keeps it from gc; unpinned (fsck's orphans) it is reclaimed after the grace
   * period unless a name or upload claims it.
   */
  upsertFromDisk(digests: Digests, ingestedAt: number, options: { pinned: boolean }, verifiedAt = Date.now()): void {
    this.db
      .transaction(() => {
        const before = this.stmt.blobState.get(digests.sha512);
        this.stmt.upsertFromDisk.run({
          ...digests,
          ingested_at: Math.floor(ingestedAt),
          verified_at: verifiedAt,
          pinned: options.pinned ? 1 : 0,
        });
        if (before === undefined) recordEvent(this.db, { type: 'blob.stored', sha512: digests.sha512, names: [], actor: this.actor });
        else if (before.quarantined_at !== null) recordEvent(this.db, { type: 'blob.restored', sha512: digests.sha512, actor: this.actor });
      })
      .immediate();
  }

  /** Deletes a blob row (its name history goes with it), announcing it in the same transaction. */
  deleteBlob(sha512: string): boolean {
    return this.db
      .transaction(() => {
        if (this.stmt.blobState.get(sha512) === undefined) return false;
        recordEvent(this.db, { type: 'blob.deleted', sha512, actor: this.actor });
        return this.stmt.deleteBlob.run(sha512).changes === 1;
      })
      .immediate();
  }

  gcCandidates(cutoff: number): (BlobRef & { ingested_at: number; quarantined_at: number | null })[] {
    return this.stmt.gcCandidates.all({ cutoff });
  }

  gcStillCollectable(sha512: string, cutoff: number): boolean {
    return this.stmt.gcStillCollectable.get({ sha512, cutoff }) !== undefined;
  }

  attachedNames(sha512: string): string[] {
    return this.stmt.namesOf.all(sha512).map((r) => r.filename);
  }
}

export interface Stats {
  blobs: number;
  /** Distinct file names ever seen. */
  names: number;
  /** Distinct file names with at least one attached hash (servable by name). */
  attachedNames: number;
  /** (name, hash) pairs currently attached. */
  attachedPairs: number;
  quarantined: number;
  pinned: number;
  /** Sum of blob sizes in the index, quarantined ones excluded. */
  bytesStored: number;
  quarantinedBytes: number;
  /** Blobs that no attached name references. */
  unreferencedBlobs: number;
  unreferencedBytes: number;
  /**
   * Bytes dedup saved: if each attached (name, hash) pair had its own copy, the store would hold
   * sum over blobs of size × attached pairs; it holds each blob once. So: sum of size × (pairs − 1)
   * over blobs with at least one attached pair.
   */
  dedupSavedBytes: number;
  /** Blobs referenced by more than one attached name. */
  sharedBlobs: number;
  largest: { filename: string; sha512: string; size: number }[];
}

export function sqliteStats(db: DB, largest = 10): Stats {
  const one = <T>(sql: string) => db.prepare(sql).get() as T;
  const counts = one<{ blobs: number; quarantined: number; pinned: number; bytes: number | null; qbytes: number | null }>(
    `SELECT count(*) AS blobs, count(quarantined_at) AS quarantined, sum(pinned) AS pinned,
            sum(CASE WHEN quarantined_at IS NULL THEN size END) AS bytes,
            sum(CASE WHEN quarantined_at IS NOT NULL THEN size END) AS qbytes
     FROM blobs`,
  );
  const names = one<{ names: number; attached: number; pairs: number }>(
    `SELECT count(DISTINCT filename) AS names,
            count(DISTINCT CASE WHEN detached_at IS NULL THEN filename END) AS attached,
            count(CASE WHEN detached_at IS NULL THEN 1 END) AS pairs
     FROM names`,
  );
  const refs = one<{ saved: number | null; shared: number; unref: number; unrefBytes: number | null }>(
    `SELECT sum(CASE WHEN r.n > 1 THEN b.size * (r.n - 1) ELSE 0 END) AS saved,
            count(CASE WHEN r.n > 1 THEN 1 END) AS shared,
            count(CASE WHEN r.n IS NULL THEN 1 END) AS unref,
            sum(CASE WHEN r.n IS NULL THEN b.size END) AS unrefBytes
     FROM blobs b LEFT JOIN (SELECT sha512, count(*) AS n FROM names WHERE detached_at IS NULL GROUP BY sha512) r
       ON r.sha512 = b.sha512`,
  );
  const top = db
    .prepare(
      `SELECT filename, sha512, size FROM (
         SELECT n.filename, n.sha512, b.size,
                row_number() OVER (PARTITION BY n.filename ORDER BY n.seq DESC) AS rn
         FROM names n JOIN blobs b ON b.sha512 = n.sha512
         WHERE n.detached_at IS NULL)
       WHERE rn = 1 ORDER BY size DESC, filename LIMIT ?`,
    )
    .all(largest) as Stats['largest'];
  return {
    blobs: counts.blobs,
    names: names.names,
    attachedNames: names.attached,
    attachedPairs: names.pairs,
    quarantined: counts.quarantined,
    pinned: counts.pinned ?? 0,
    bytesStored: counts.bytes ?? 0,
    quarantinedBytes: counts.qbytes ?? 0,
    unreferencedBlobs: refs.unref,
    unreferencedBytes: refs.unrefBytes ?? 0,
    dedupSavedBytes: refs.saved ?? 0,
    sharedBlobs: refs.shared,
    largest: top,
  };
}
