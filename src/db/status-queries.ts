import type { Statement } from 'better-sqlite3';
import { IndexCounters, type IndexCounts } from './counters.js';
import type { DB } from './open.js';
import type { Awaitable } from './awaitable.js';

export interface Totals {
  blobs: number;
  bytes: number;
  /** Distinct file names with at least one attached hash (what name paths can serve). */
  names: number;
  quarantinedBlobs: number;
  quarantinedBytes: number;
  pinnedBlobs: number;
  /** Σ size × (attached names − 1): what storing by content saved. */
  dedupSavedBytes: number;
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

/**
 * The same range under NOCASE (ASCII letters fold, like SQLite's LIKE) over names_current_nocase.
 * Names equal but for case sort by their exact bytes, so the paging cursor (`after`, the last name
 * of the previous page) is a strict position: the range starts at it, and ties with it are kept
 * only when they sort after it.
 */
export const NAMES_WITH_PREFIX_NOCASE_SQL = `SELECT DISTINCT filename FROM names
  WHERE detached_at IS NULL AND filename >= @lo COLLATE NOCASE AND filename < @hi COLLATE NOCASE
    AND NOT (filename = @after COLLATE NOCASE AND filename <= @after)
  ORDER BY filename COLLATE NOCASE, filename LIMIT @limit`;

export interface SearchOptions {
  /** ASCII case-insensitive match. */
  ignoreCase?: boolean;
  /** The last name of the previous page: results continue after it. */
  after?: string | undefined;
}

export interface SearchResult {
  results: { filename: string; hashes: AttachedName[] }[];
  /** More names match than were returned. */
  truncated: boolean;
}

/** Read-only queries behind the public status page and readiness, on either index engine; each one is served by an index. */
export interface StatusArea {
  /** Kept current by triggers (migration 005): a few rows, whatever the size of the index. */
  totals(): Awaitable<Totals>;
  /** The most recently attached (name, hash) pairs, newest first. */
  recent(limit: number): Awaitable<AttachedName[]>;
  /**
   * Up to `limit` attached names starting with `prefix` (byte-wise and case-sensitive unless
   * ignoreCase), in name order, after `after` when given; each with all its attached hashes, the
   * one name paths serve (highest seq) first. The caller checks that `after` matches the prefix.
   */
  searchPrefix(prefix: string, limit: number, options?: SearchOptions): Awaitable<SearchResult>;
  /** Readiness's probe: resolves when the index answers a query, throws otherwise. */
  ping(): Awaitable<void>;
}

/** The index counters as the status page's totals. */
export function totalsOf(c: IndexCounts): Totals {
  return {
    blobs: c.blobs,
    bytes: c.blobBytes,
    names: c.attachedNames,
    quarantinedBlobs: c.quarantinedBlobs,
    quarantinedBytes: c.quarantinedBytes,
    pinnedBlobs: c.pinnedBlobs,
    dedupSavedBytes: c.dedupSavedBytes,
  };
}

/** The SQLite status queries: synchronous prepared statements. */
export class StatusQueries implements StatusArea {
  private readonly stmt: {
    recent: Statement<[number], AttachedName>;
    probe: Statement<[], unknown>;
    namesWithPrefix: Statement<[string, string, number], { filename: string }>;
    namesWithPrefixNocase: Statement<[{ lo: string; hi: string; after: string; limit: number }], { filename: string }>;
    attachedOf: Statement<[string], AttachedName>;
  };

  private readonly counters: IndexCounters;

  constructor(db: DB) {
    this.counters = new IndexCounters(db);
    this.stmt = {
      recent: db.prepare(
        `SELECT n.filename, n.sha512, n.seq, b.size, n.attached_at, b.quarantined_at, ${CURRENT}
         FROM names n JOIN blobs b ON b.sha512 = n.sha512
         WHERE n.detached_at IS NULL
         ORDER BY n.seq DESC LIMIT ?`,
      ),
      probe: db.prepare('SELECT 1 FROM blobs LIMIT 1'),
      namesWithPrefix: db.prepare(NAMES_WITH_PREFIX_SQL),
      namesWithPrefixNocase: db.prepare(NAMES_WITH_PREFIX_NOCASE_SQL),
      attachedOf: db.prepare(
        `SELECT n.filename, n.sha512, n.seq, b.size, n.attached_at, b.quarantined_at, ${CURRENT}
         FROM names n JOIN blobs b ON b.sha512 = n.sha512
         WHERE n.filename = ? AND n.detached_at IS NULL
         ORDER BY n.seq DESC`,
      ),
    };
  }

  totals(): Totals {
    return totalsOf(this.counters.read()!);
  }

  recent(limit: number): AttachedName[] {
    return this.stmt.recent.all(limit);
  }

  searchPrefix(prefix: string, limit: number, options: SearchOptions = {}): SearchResult {
    const hi = prefix + MAX_CODE_POINT;
    // One extra name tells the caller whether more match, without a count query.
    const names = options.ignoreCase
      ? this.stmt.namesWithPrefixNocase.all({ lo: options.after ?? prefix, hi, after: options.after ?? '', limit: limit + 1 })
      : // Names never hold NUL, so after + NUL is the first string past the cursor.
        this.stmt.namesWithPrefix.all(options.after !== undefined ? `${options.after}\0` : prefix, hi, limit + 1);
    return {
      results: names.slice(0, limit).map(({ filename }) => ({ filename, hashes: this.stmt.attachedOf.all(filename) })),
      truncated: names.length > limit,
    };
  }

  ping(): void {
    this.stmt.probe.get();
  }
}
