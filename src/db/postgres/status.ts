import type { CounterArea } from '../counters.js';
import type { Sql } from '../postgres-index.js';
import { totalsOf, type AttachedName, type SearchOptions, type SearchResult, type StatusArea, type Totals } from '../status-queries.js';
import { PostgresCounters } from './counters.js';

/** The last code point: `prefix || chr(1114111)` sorts after every name that starts with prefix. */
const MAX_CODE_POINT = String.fromCodePoint(0x10ffff);

export interface PostgresStatusOptions {
  /** How long readiness waits for `SELECT 1` before calling the index unreachable. */
  pingTimeoutMs?: number;
}

/**
 * The status page's queries in PostgreSQL, with SQLite's answers: names compare byte-wise (COLLATE "C",
 * SQLite's BINARY), and the case-insensitive search folds like SQLite's NOCASE over lower(filename)
 * (names_current_nocase), which folds ASCII only in a database whose collation is C.
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
    const names = options.ignoreCase
      ? await this.namesNocase(options.after ?? prefix, hi, options.after ?? '', limit + 1)
      : // Names never hold NUL, so the first name past the cursor is the first one strictly greater.
        await this.sql<{ filename: string }[]>`
          SELECT DISTINCT filename COLLATE "C" AS filename FROM names
          WHERE detached_at IS NULL AND filename COLLATE "C" ${options.after !== undefined ? this.sql`>` : this.sql`>=`} ${options.after ?? prefix}
            AND filename COLLATE "C" < ${hi}
          ORDER BY 1 LIMIT ${limit + 1}`;
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

  /**
   * Names equal but for case sort by their exact bytes, so the paging cursor (`after`) is a strict position:
   * the range starts at it, and ties with it are kept only when they sort after it.
   */
  private namesNocase(lo: string, hi: string, after: string, limit: number) {
    return this.sql<{ filename: string }[]>`
      SELECT filename FROM names
      WHERE detached_at IS NULL
        AND lower(filename) COLLATE "C" >= lower(${lo}) AND lower(filename) COLLATE "C" < lower(${hi})
        AND NOT (lower(filename) COLLATE "C" = lower(${after}) AND filename COLLATE "C" <= ${after})
      GROUP BY filename
      ORDER BY lower(filename) COLLATE "C", filename COLLATE "C" LIMIT ${limit}`;
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
