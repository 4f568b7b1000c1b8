import type { CounterArea, IndexCounts } from '../counters.js';
import type { Sql } from '../postgres-index.js';

/**
 * The index counters in PostgreSQL: the view `index_counters` sums 16 striped rows (migration 005's twin),
 * so the read costs the same whatever the index size. Aliases are quoted: PostgreSQL folds bare ones to lower case.
 */
export class PostgresCounters implements CounterArea {
  constructor(private readonly sql: Sql) {}

  async read(): Promise<IndexCounts | undefined> {
    const [row] = await this.sql<IndexCounts[]>`
      SELECT blobs, blob_bytes AS "blobBytes", quarantined_blobs AS "quarantinedBlobs",
        quarantined_bytes AS "quarantinedBytes", pinned_blobs AS "pinnedBlobs", attached_names AS "attachedNames",
        attached_pairs AS "attachedPairs", dedup_saved_bytes AS "dedupSavedBytes", verified_blobs AS "verifiedBlobs",
        verified_bytes AS "verifiedBytes", quarantines
      FROM index_counters WHERE id = 1`;
    return row;
  }
}
