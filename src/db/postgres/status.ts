import type { CounterArea } from '../counters.js';
import type { Sql } from '../postgres-index.js';
import { totalsOf, type AttachedName, type SearchOptions, type SearchResult, type StatusArea, type Totals } from '../status-queries.js';
import { PostgresCounters } from './counters.js';

/** The last code point: `prefix || chr(1114111)` sorts after every name that starts with prefix. */
const MAX_CODE_POINT = String.fromCodePoint(0x10ffff);

/**
 * Attached names in [$1, $2) byte-wise, first $3, over names_current_c (migration 012): rows come in index
 * order, so LIMIT stops the range early. Exported so a test can hold the plan to that index.
 */
export const PG_NAMES_WITH_PREFIX_SQL = `SELECT DISTINCT filename COLLATE "C" AS filename FROM names
  WHERE detached_at IS NULL AND filename COLLATE "C" >= $1 AND filename COLLATE "C" < $2
  ORDER BY 1 LIMIT $3`;

/** The same strictly after the cursor $1 (a NUL suffix, as SQLite does it, is not valid text here). */
export const PG_NAMES_AFTER_SQL = `SELECT DISTINCT filename COLLATE "C" AS filename FROM names
  WHERE detached_at IS NULL AND filename COLLATE "C" > $1 AND filename COLLATE "C" < $2
  ORDER BY 1 LIMIT $3`;

/**
 * Under ASCII case folding (lower() under "C", SQLite's NOCASE) over names_current_nocase_c: range [$1, $2)
 * from $3 = lo, limit $4. Names equal but for case sort by their exact bytes, so the paging cursor ($3, the
 * last name of the previous page) is a strict position: ties with it are kept only when they sort after it.
 */
export const PG_NAMES_WITH_PREFIX_NOCASE_SQL = `SELECT DISTINCT lower(filename COLLATE "C") COLLATE "C" AS folded, filename COLLATE "C" AS filename
  FROM names
  WHERE detached_at IS NULL
    AND lower(filename COLLATE "C") COLLATE "C" >= lower($1 COLLATE "C") AND lower(filename COLLATE "C") COLLATE "C" < lower($2 COLLATE "C")
    AND NOT (lower(filename COLLATE "C") COLLATE "C" = lower($3 COLLATE "C") AND filename COLLATE "C" <= $3)
  ORDER BY 1, 2 LIMIT $4`;

export interface PostgresStatusOptions {
  /** How long readiness waits for `SELECT 1` before calling the index unreachable. */
  pingTimeoutMs?: number;
}

/**
 * The status page's queries in PostgreSQL, with SQLite's answers: names compare byte-wise (COLLATE "C",
 * SQLite's BINARY) and the case-insensitive search folds ASCII letters only (SQLite's NOCASE), whatever
 * the database's collation.
 */
export class PostgresStatus implements StatusArea {
  private readonly counters: CounterArea;
  private readonly pingTimeoutMs: number;

  constructor(
    private readonly sql: Sql,
    options: PostgresStatusOptions = {},
  ) {
    this.counters = new PostgresCounters(sql);
    this.pingTimeoutMs = options.pingTimeoutMs ?? 2000;
  }

  async totals(): Promise<Totals> {
    return totalsOf((await this.counters.read())!);
  }

  async recent(limit: number): Promise<AttachedName[]> {
    return [
      ...(await this.sql<AttachedName[]>`
        SELECT n.filename, n.sha512, n.seq, b.size, n.attached_at, b.quarantined_at,
               (n.seq = (SELECT max(m.seq) FROM names m WHERE m.filename = n.filename AND m.detached_at IS NULL))::int AS current
        FROM names n JOIN blobs b ON b.sha512 = n.sha512
        WHERE n.detached_at IS NULL
        ORDER BY n.seq DESC LIMIT ${limit}`),
    ];
  }

  async searchPrefix(prefix: string, limit: number, options: SearchOptions = {}): Promise<SearchResult> {
    const hi = prefix + MAX_CODE_POINT;
    // One extra name tells the caller whether more match, without a count query.
    const names = (
      options.ignoreCase
        ? await this.sql.unsafe(PG_NAMES_WITH_PREFIX_NOCASE_SQL, [options.after ?? prefix, hi, options.after ?? '', limit + 1], { prepare: true })
        : await this.sql.unsafe(options.after !== undefined ? PG_NAMES_AFTER_SQL : PG_NAMES_WITH_PREFIX_SQL, [options.after ?? prefix, hi, limit + 1], {
            prepare: true,
          })
    ) as unknown as { filename: string }[];
    const page = names.slice(0, limit).map((n) => n.filename);
    // Every page's hashes in one round trip, not one per name.
    const rows =
      page.length === 0
        ? []
        : await this.sql<AttachedName[]>`
            SELECT n.filename, n.sha512, n.seq, b.size, n.attached_at, b.quarantined_at,
                   (n.seq = max(n.seq) OVER (PARTITION BY n.filename))::int AS current
            FROM names n JOIN blobs b ON b.sha512 = n.sha512
            WHERE n.filename = ANY(${page}) AND n.detached_at IS NULL
            ORDER BY n.seq DESC`;
    const byName = new Map<string, AttachedName[]>(page.map((f) => [f, []]));
    for (const row of rows) byName.get(row.filename)?.push(row);
    return { results: page.map((filename) => ({ filename, hashes: byName.get(filename)! })), truncated: names.length > limit };
  }

  /** `SELECT 1`, bounded: an unreachable server must fail readiness within the probe's budget, not connect_timeout's. */
  async ping(): Promise<void> {
    const query = this.sql`SELECT 1`;
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        query.cancel();
        reject(new Error(`the database did not answer within ${this.pingTimeoutMs} ms`));
      }, this.pingTimeoutMs);
    });
    try {
      await Promise.race([query, timeout]);
    } finally {
      clearTimeout(timer);
    }
  }
}
