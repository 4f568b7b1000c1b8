import type { Statement } from 'better-sqlite3';
import { recordEvent } from '../db/events.js';
import type { DB } from '../db/open.js';
import type { Digests } from '../store/digests.js';

export interface BlobRef {
  sha512: string;
  size: number;
}

export interface ScrubCursor {
  verified: number;
  sha512: string;
}

/**
 * Prepared statements for maintenance work (verify, scrub, fsck, reindex, gc, stats).
 * Kept apart from DistfileIndex: these scan whole tables and are never on the download path.
 */
export class MaintenanceQueries {
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

  /** Every blob row, in pages, so no statement stays open while the caller writes. */
  *allRows(pageSize = 1000): Generator<BlobRef & { quarantined_at: number | null }> {
    let after = '';
    for (;;) {
      const rows = this.stmt.allRows.all({ after, limit: pageSize });
      if (rows.length === 0) return;
      yield* rows;
      after = rows[rows.length - 1]!.sha512;
    }
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
