import type { DB } from '../db/open.js';

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

export function collectStats(db: DB, largest = 10): Stats {
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
