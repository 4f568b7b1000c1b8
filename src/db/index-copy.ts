import type postgres from 'postgres';
import type { DB } from './open.js';
import type { Sql } from './postgres-index.js';

/**
 * Copying a SQLite index into PostgreSQL (`fastpull migrate-index`). Generic over the tables both schemas
 * have, so a later migration's table is copied without a change here: each table's primary key comes from
 * SQLite, and tables are copied parents first (by their foreign keys).
 */

/** Tables that are not data to carry over, and why (shown by the command). */
export const NOT_COPIED: Record<string, string> = {
  index_counters: "derived: PostgreSQL's triggers count the rows as they arrive; the cumulative counts are carried over",
  upload_holds: 'in-flight uploads of processes on this machine',
  pull_flights: 'pull-through downloads in flight',
};

export interface TablePlan {
  table: string;
  columns: string[];
  /** Primary-key columns, the copy's cursor; ['rowid'] for a table without one. */
  key: string[];
  rows: number;
}

export interface TableResult {
  table: string;
  rows: number;
  /** Rows inserted by this run; the rest were already there (a resumed copy). */
  copied: number;
}

type Row = Record<string, unknown>;

/** What will be copied, in an order that inserts parents before children. */
export function planCopy(db: DB): TablePlan[] {
  const tables = (
    db.prepare(`SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name`).pluck().all() as string[]
  ).filter((t) => !(t in NOT_COPIED));
  const parents = new Map(
    tables.map((t) => [t, (db.prepare('SELECT DISTINCT "table" FROM pragma_foreign_key_list(?)').pluck().all(t) as string[]).filter((p) => p !== t)]),
  );
  const ordered: string[] = [];
  const visit = (t: string, path: string[]) => {
    if (ordered.includes(t)) return;
    if (path.includes(t)) throw new Error(`foreign keys form a cycle: ${[...path, t].join(' -> ')}`);
    for (const p of parents.get(t) ?? []) if (tables.includes(p)) visit(p, [...path, t]);
    ordered.push(t);
  };
  for (const t of tables) visit(t, []);
  return ordered.map((table) => {
    const info = db.prepare('SELECT name, pk FROM pragma_table_info(?)').all(table) as { name: string; pk: number }[];
    const key = info.filter((c) => c.pk > 0).sort((a, b) => a.pk - b.pk).map((c) => c.name);
    const rows = (db.prepare(`SELECT count(*) FROM "${table}"`).pluck().get() as number) ?? 0;
    return { table, columns: info.map((c) => c.name), key: key.length > 0 ? key : ['rowid'], rows };
  });
}

/** Tables of the plan PostgreSQL lacks (its twin migration is missing), and those already holding rows. */
export async function inspectTarget(sql: Sql, plan: TablePlan[]): Promise<{ missing: string[]; nonEmpty: string[] }> {
  const existing = new Set(
    (await sql<{ table_name: string }[]>`
      SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'`).map((r) => r.table_name),
  );
  const missing = plan.filter((p) => !existing.has(p.table)).map((p) => p.table);
  const nonEmpty: string[] = [];
  for (const p of plan) {
    if (!existing.has(p.table)) continue;
    const [row] = await sql<{ any: boolean }[]>`SELECT EXISTS (SELECT 1 FROM ${sql(p.table)}) AS any`;
    if (row?.any) nonEmpty.push(p.table);
  }
  return { missing, nonEmpty };
}

/** PostgreSQL binds at most 65535 parameters per statement. */
const MAX_PARAMETERS = 65_000;

/**
 * Copies one table in key order, `batch` rows per INSERT, each batch in its own transaction: an interrupted
 * copy keeps what committed, and a re-run skips rows already there (ON CONFLICT DO NOTHING).
 * `db` should be inside a read transaction so every table comes from one snapshot.
 */
export async function copyTable(db: DB, sql: Sql, plan: TablePlan, batch: number, onBatch?: (done: number) => void): Promise<TableResult> {
  const size = Math.max(1, Math.min(batch, Math.floor(MAX_PARAMETERS / plan.columns.length)));
  const keyList = plan.key.map((k) => `"${k}"`).join(', ');
  const select = plan.key[0] === 'rowid' ? `rowid AS rowid, *` : '*';
  const first = db.prepare(`SELECT ${select} FROM "${plan.table}" ORDER BY ${keyList} LIMIT ?`);
  const next = db.prepare(
    `SELECT ${select} FROM "${plan.table}" WHERE (${keyList}) > (${plan.key.map(() => '?').join(', ')}) ORDER BY ${keyList} LIMIT ?`,
  );
  let rows = 0;
  let copied = 0;
  let cursor: unknown[] | undefined;
  for (;;) {
    const page = (cursor ? next.all(...cursor, size) : first.all(size)) as Row[];
    if (page.length === 0) break;
    const last = page[page.length - 1]!;
    cursor = plan.key.map((k) => last[k]);
    // SQLite's values (numbers, text, null, BLOBs as Buffers) are what the twin columns take.
    const values = page.map((r) => Object.fromEntries(plan.columns.map((c) => [c, r[c]]))) as Record<string, postgres.SerializableParameter>[];
    const result = await sql.begin((tx) => tx`INSERT INTO ${tx(plan.table)} ${tx(values, plan.columns)} ON CONFLICT DO NOTHING`);
    rows += page.length;
    copied += (result as unknown as { count: number }).count;
    onBatch?.(rows);
  }
  return { table: plan.table, rows, copied };
}

/**
 * Moves every sequence past the copied ids (identities of audit_log and events, the names' seq) so rows
 * PostgreSQL numbers itself never collide with copied ones; and carries SQLite's cumulative counters
 * (intact verifications, quarantines ever), which no recount can rebuild, over to the striped slots.
 */
export async function finishCopy(db: DB, sql: Sql, plan: TablePlan[]): Promise<void> {
  await sql.begin(async (tx) => {
    for (const p of plan) {
      const identities = await tx<{ column_name: string; seq: string }[]>`
        SELECT column_name, pg_get_serial_sequence(quote_ident(table_name), column_name) AS seq
        FROM information_schema.columns
        WHERE table_schema = current_schema() AND table_name = ${p.table}
          AND pg_get_serial_sequence(quote_ident(table_name), column_name) IS NOT NULL`;
      for (const { column_name: column, seq } of identities) {
        await tx`SELECT setval(${seq}, m) FROM (SELECT max(${tx(column)}) AS m FROM ${tx(p.table)}) x WHERE m IS NOT NULL`;
      }
    }
    if (plan.some((p) => p.table === 'names')) {
      await tx`SELECT setval('names_seq', m) FROM (SELECT max(seq) AS m FROM names) x WHERE m IS NOT NULL`;
    }
    const hasCounters = db.prepare(`SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'index_counters'`).get();
    const [slots] = await tx<{ n: number }[]>`SELECT count(*)::int AS n FROM information_schema.tables WHERE table_name = 'index_counter_slots'`;
    if (hasCounters && slots?.n) {
      const lite = db.prepare('SELECT verified_blobs, verified_bytes, quarantines FROM index_counters WHERE id = 1').get() as
        | { verified_blobs: number; verified_bytes: number; quarantines: number }
        | undefined;
      if (lite) {
        await tx`
          SELECT index_counters_add(0, 0, 0, 0, 0, 0, 0, 0,
            ${lite.verified_blobs} - verified_blobs, ${lite.verified_bytes} - verified_bytes, ${lite.quarantines} - quarantines)
          FROM index_counters`;
      }
    }
  });
}
