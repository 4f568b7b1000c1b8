import { existsSync } from 'node:fs';
import { loadConfig } from '../config.js';
import { copyTable, finishCopy, inspectTarget, NOT_COPIED, planCopy } from '../db/index-copy.js';
import { databaseFile, openDatabase } from '../db/open.js';
import { connectPostgres, migratePostgres } from '../db/postgres-index.js';
import { intOption, runCommand, UsageError } from './args.js';

const USAGE = `usage: fastpull migrate-index --to postgres://USER@HOST:PORT/DATABASE [--resume] [--batch N] [--data-dir DIR]
  copies the SQLite index <dataDir>/index.sqlite (blobs, names with their history, fetch jobs, tokens,
  audit log, events) into PostgreSQL, applying its migrations first. Rows go in batches, each batch in
  its own transaction; a re-run skips rows already there. Stop the servers writing to the SQLite index
  first (or run once more with --resume after stopping them): rows changed after being copied are not
  copied again.

  --to URL      the PostgreSQL database (postgres:// or postgresql://)
  --resume      continue into a database that already holds rows (an interrupted copy); without it a
                non-empty target is refused
  --batch N     rows per INSERT (default 1000, 1 to 10000)`;

/** The URL without its password, for messages. */
function redact(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = '***';
    return u.toString();
  } catch {
    return url;
  }
}

export async function migrateIndexCommand(args: string[]): Promise<number> {
  const spec = {
    name: 'migrate-index',
    usage: USAGE,
    options: { to: { type: 'string' }, resume: { type: 'boolean' }, batch: { type: 'string' }, 'data-dir': { type: 'string' } },
  } as const;
  return runCommand(spec, args, async (values) => {
    const to = values.to;
    if (to === undefined) throw new UsageError('--to postgres://… is required');
    if (!/^postgres(ql)?:\/\/[^\s]+$/.test(to)) throw new UsageError(`--to: expected a postgres:// URL, got "${to}"`);
    const batch = values.batch !== undefined ? intOption(values.batch, 'batch', 1, 10_000) : 1000;
    const config = loadConfig(values['data-dir'] !== undefined ? { dataDir: values['data-dir'] } : {});
    const file = databaseFile(config.dataDir);
    if (!existsSync(file)) throw new UsageError(`no index at ${file}`);

    // Read-only and unmigrated: the source is left exactly as it was.
    const db = openDatabase(file, { readonly: true, migrate: false });
    const sql = connectPostgres(to, { max: 2 });
    try {
      const { applied } = await migratePostgres(sql);
      for (const name of applied) console.log(`postgres: applied ${name}`);
      // One snapshot for every table: names never refer to blobs the copy has not seen.
      db.exec('BEGIN');
      const plan = planCopy(db);
      const { missing, nonEmpty } = await inspectTarget(sql, plan);
      if (missing.length > 0) {
        console.error(`fastpull migrate-index: PostgreSQL has no table ${missing.join(', ')}: this version has no PostgreSQL migration for it`);
        return 1;
      }
      if (nonEmpty.length > 0 && !values.resume) {
        throw new UsageError(`${redact(to)} already holds rows (${nonEmpty.join(', ')}); pass --resume to continue an interrupted copy`);
      }
      console.log(`copying ${file} into ${redact(to)}`);
      for (const [table, why] of Object.entries(NOT_COPIED)) console.log(`  ${table}: not copied (${why})`);
      let copied = 0;
      let rows = 0;
      for (const p of plan) {
        const result = await copyTable(db, sql, p, batch);
        copied += result.copied;
        rows += result.rows;
        const already = result.rows - result.copied;
        console.log(`  ${p.table}: ${result.rows} rows, ${result.copied} copied${already > 0 ? `, ${already} already there` : ''}`);
      }
      await finishCopy(db, sql, plan);
      console.log(`done: ${rows} rows in ${plan.length} tables, ${copied} copied, ${rows - copied} already there`);
      return 0;
    } finally {
      if (db.inTransaction) db.exec('COMMIT');
      db.close();
      await sql.end({ timeout: 5 });
    }
  });
}
