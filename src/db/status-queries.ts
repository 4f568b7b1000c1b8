import type { Statement } from 'better-sqlite3';
import type { DB } from './open.js';

export interface Totals {
  blobs: number;
  bytes: number;
  /** Distinct file names with at least one attached hash (what name paths can serve). */
  names: number;
}

export interface AttachedName {
  filename: string;
  sha512: string;
  seq: number;
  size: number;
  attached_at: number;
  quarantined_at: number | null;
  /** 1 when this is the hash the name's paths serve (the attached pair with the highest seq). */
  current: number;
}

/** The last code point: `prefix || char(1114111)` sorts after every name that starts with prefix. */
const MAX_CODE_POINT = String.fromCodePoint(0x10ffff);

const CURRENT = `n.seq = (SELECT max(m.seq) FROM names m WHERE m.filename = n.filename AND m.detached_at IS NULL) AS current`;

/**
 * A range on filename rather than LIKE: LIKE is case-insensitive and treats % and _ as wildcards,
 * and would not use names_current. Exported so a test can hold the query plan to an index search.
 */
export const NAMES_WITH_PREFIX_SQL = `SELECT DISTINCT filename FROM names
  WHERE detached_at IS NULL AND filename >= ? AND filename < ?
  ORDER BY filename LIMIT ?`;

/** Read-only queries behind the public status page; each one is served by an index. */
export class StatusQueries {
  private readonly stmt: {
    blobTotals: Statement<[], { blobs: number; bytes: number }>;
    nameTotal: Statement<[], { names: number }>;
    recent: Statement<[number], AttachedName>;
    namesWithPrefix: Statement<[string, string, number], { filename: string }>;
    attachedOf: Statement<[string], AttachedName>;
  };

  constructor(db: DB) {
    this.stmt = {
      blobTotals: db.prepare('SELECT count(*) AS blobs, coalesce(sum(size), 0) AS bytes FROM blobs'),
      // Counting over the partial index names_current touches only attached rows.
      nameTotal: db.prepare('SELECT count(DISTINCT filename) AS names FROM names WHERE detached_at IS NULL'),
      recent: db.prepare(
        `SELECT n.filename, n.sha512, n.seq, b.size, n.attached_at, b.quarantined_at, ${CURRENT}
         FROM names n JOIN blobs b ON b.sha512 = n.sha512
         WHERE n.detached_at IS NULL
         ORDER BY n.seq DESC LIMIT ?`,
      ),
      namesWithPrefix: db.prepare(NAMES_WITH_PREFIX_SQL),
      attachedOf: db.prepare(
        `SELECT n.filename, n.sha512, n.seq, b.size, n.attached_at, b.quarantined_at, ${CURRENT}
         FROM names n JOIN blobs b ON b.sha512 = n.sha512
         WHERE n.filename = ? AND n.detached_at IS NULL
         ORDER BY n.seq DESC`,
      ),
    };
  }

  totals(): Totals {
    const { blobs, bytes } = this.stmt.blobTotals.get()!;
    const { names } = this.stmt.nameTotal.get()!;
    return { blobs, bytes, names };
  }

  /** The most recently attached (name, hash) pairs, newest first. */
  recent(limit: number): AttachedName[] {
    return this.stmt.recent.all(limit);
  }

  /**
   * Up to `limit` attached names starting with `prefix` (byte-wise, case-sensitive), in name order;
   * each with all its attached hashes, the one name paths serve (highest seq) first.
   */
  searchPrefix(prefix: string, limit: number): { results: { filename: string; hashes: AttachedName[] }[]; truncated: boolean } {
    // One extra name tells the caller whether more match, without a count query.
    const names = this.stmt.namesWithPrefix.all(prefix, prefix + MAX_CODE_POINT, limit + 1);
    return {
      results: names.slice(0, limit).map(({ filename }) => ({ filename, hashes: this.stmt.attachedOf.all(filename) })),
      truncated: names.length > limit,
    };
  }
}
