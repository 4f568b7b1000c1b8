import type { Statement } from 'better-sqlite3';
import type { DB } from './open.js';
import type { Awaitable } from './awaitable.js';

/** The one row of index_counters (migration 005), kept current by triggers in every process. */
export interface IndexCounts {
  blobs: number;
  blobBytes: number;
  quarantinedBlobs: number;
  quarantinedBytes: number;
  pinnedBlobs: number;
  attachedNames: number;
  attachedPairs: number;
  dedupSavedBytes: number;
  /** Cumulative: intact verifications recorded by any process (scrub, fastpull verify, fsck, reindex). */
  verifiedBlobs: number;
  verifiedBytes: number;
  /** Cumulative: times a blob went into quarantine. */
  quarantines: number;
}

const COUNTS_SQL = `SELECT blobs, blob_bytes AS blobBytes, quarantined_blobs AS quarantinedBlobs,
  quarantined_bytes AS quarantinedBytes, pinned_blobs AS pinnedBlobs, attached_names AS attachedNames,
  attached_pairs AS attachedPairs, dedup_saved_bytes AS dedupSavedBytes, verified_blobs AS verifiedBlobs,
  verified_bytes AS verifiedBytes, quarantines
  FROM index_counters WHERE id = 1`;

/** The index counters, on either index engine. */
export interface CounterArea {
  /** Undefined once the index is closed (a scrape racing shutdown). */
  read(): Awaitable<IndexCounts | undefined>;
}

/** A primary-key read of one row: cheap enough for every scrape and status request, whatever the index size. */
export class IndexCounters implements CounterArea {
  private readonly stmt: Statement<[], IndexCounts>;

  constructor(private readonly db: DB) {
    this.stmt = db.prepare(COUNTS_SQL);
  }

  /** Undefined once the database is closed (a scrape racing shutdown). */
  read(): IndexCounts | undefined {
    return this.db.open ? this.stmt.get() : undefined;
  }
}
