import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DistfileIndex } from '../src/db/index.js';
import { NOT_COPIED, planCopy } from '../src/db/index-copy.js';
import { databaseFile, openDatabase, type DB } from '../src/db/open.js';
import { connectPostgres, type Sql } from '../src/db/postgres-index.js';
import { PostgresNameIndex } from '../src/db/postgres/names.js';
import { runCli } from './helpers/cli.js';
import { blake2b, sha256, sha512 } from './helpers/core.js';
import { postgresMissing, startPostgres, type Postgres } from './helpers/postgres.js';
import { skipWithoutService } from './helpers/services.js';

const skip = skipWithoutService('PostgreSQL', postgresMissing());

const digests = (text: string) => {
  const b = Buffer.from(text);
  return { size: b.length, sha512: sha512(b), blake2b: blake2b(b), sha256: sha256(b) };
};

/** An index with a bit of everything: history, quarantine, pins, jobs, tokens, audit, events, holds. */
function fillIndex(db: DB): void {
  const index = new DistfileIndex(db);
  const blobs = Array.from({ length: 230 }, (_, i) => digests(`distfile ${i}\n`));
  blobs.forEach((d, i) => index.recordBlob(d, { filename: `pkg-${i}.tar.gz`, by: 'spider', at: 1000 + i, pinned: i % 50 === 0 }));
  // History: re-points, a dedup pair, a detached name.
  for (let i = 0; i < 20; i++) index.attach(`pkg-${i}.tar.gz`, blobs[i + 100]!.sha512, 'admin');
  index.attach('copy-of-7.tar.gz', blobs[7]!.sha512, 'admin');
  index.detach('pkg-3.tar.gz', 'admin');
  const big = { ...digests('a large one'), size: 4_450_000_000 };
  index.recordBlob(big, { filename: 'huge.iso', at: 1_764_500_000_000 });
  db.prepare('UPDATE blobs SET verified_at = ? WHERE sha512 = ?').run(5000, blobs[1]!.sha512);
  db.prepare('UPDATE blobs SET quarantined_at = ? WHERE sha512 = ?').run(6000, blobs[2]!.sha512);

  db.prepare(`INSERT INTO fetch_jobs (id, created_at, created_by) VALUES ('job-1', 10, 'admin')`).run();
  const item = db.prepare(`INSERT INTO fetch_items (job_id, idx, url, mirrors, filename, expected_size, state, queued_at, sha512, size, source)
    VALUES ('job-1', ?, ?, '["http://m.invalid/x"]', ?, ?, ?, 11, ?, ?, ?)`);
  item.run(0, 'http://u.invalid/a', 'a.tgz', 4, 'done', blobs[0]!.sha512, blobs[0]!.size, 'upstream');
  item.run(1, 'http://u.invalid/b', 'b.tgz', null, 'queued', null, null, null);
  db.prepare('INSERT INTO fetched_urls (url, sha512, fetched_at) VALUES (?, ?, 12)').run('http://u.invalid/a', blobs[0]!.sha512);
  const token = db.prepare('INSERT INTO tokens (name, secret_sha256, scopes, created_at, revoked_at) VALUES (?, ?, ?, ?, ?)');
  token.run('ci', randomBytes(32), 'upload', 20, null);
  token.run('old', randomBytes(32), 'admin read-api', 21, 22);
  const audit = db.prepare('INSERT INTO audit_log (at, actor, action, status, filename, sha512, detail) VALUES (?, ?, ?, ?, ?, ?, ?)');
  for (let i = 0; i < 5; i++) audit.run(30 + i, 'token:ci', 'upload', 201, `pkg-${i}.tar.gz`, blobs[i]!.sha512, null);
  db.prepare(`INSERT INTO events (at, type, sha512, size, names, actor) VALUES (40, 'quarantine', ?, ?, '["pkg-2.tar.gz"]', 'cli:root')`).run(
    blobs[2]!.sha512,
    blobs[2]!.size,
  );
  db.prepare(`INSERT INTO event_targets (target, through_id) VALUES ('cdn', 1)`).run();
  db.prepare(`INSERT INTO event_deliveries (target, event_id, sha512, state, next_at) VALUES ('cdn', 1, ?, 'pending', 41)`).run(blobs[2]!.sha512);
  db.prepare(`INSERT INTO upload_holds (id, pid, bytes) VALUES ('hold-1', 1, 100)`).run();
}

describe.skipIf(skip)('fastpull migrate-index', () => {
  let pg: Postgres;
  let dataDir: string;
  let db: DB;
  let url: string;
  let sql: Sql;

  beforeAll(async () => {
    pg = await startPostgres('migrate_index');
    url = pg.url;
    dataDir = await mkdtemp(path.join(tmpdir(), 'fp-migrate-index-'));
    db = openDatabase(databaseFile(dataDir));
    fillIndex(db);
    sql = connectPostgres(url, { max: 2 });
  }, 60_000);
  afterAll(async () => {
    await sql?.end({ timeout: 5 });
    db?.close();
    await pg?.stop();
    if (dataDir) await rm(dataDir, { recursive: true, force: true });
  });

  const migrateIndex = (args: string[]) => runCli(['migrate-index', ...args], { FASTPULL_DATA_DIR: dataDir });

  it('copies every table with history, tokens, audit and events; rows, counters and sequences match', { timeout: 120_000 }, async () => {
    const first = await migrateIndex(['--to', url, '--batch', '100']);
    expect(first.code, first.stderr).toBe(0);
    expect(first.stdout).toMatch(/^ {2}blobs: 231 rows, 231 copied$/m);
    expect(first.stdout).toMatch(/^ {2}upload_holds: not copied/m);

    const plan = planCopy(db);
    expect(plan.map((p) => p.table)).toEqual(expect.arrayContaining(['blobs', 'names', 'fetch_items', 'tokens', 'audit_log', 'events', 'event_deliveries']));
    // Parents before children.
    const at = (t: string) => plan.findIndex((p) => p.table === t);
    expect(at('blobs')).toBeLessThan(at('names'));
    expect(at('fetch_jobs')).toBeLessThan(at('fetch_items'));
    expect(at('events')).toBeLessThan(at('event_deliveries'));
    for (const p of plan) {
      // Sorted here, not by each database: their text collations differ.
      const byKey = (rows: readonly Record<string, unknown>[]) =>
        [...rows].sort((a, b) => {
          const [x, y] = [JSON.stringify(p.key.map((k) => a[k])), JSON.stringify(p.key.map((k) => b[k]))];
          return x < y ? -1 : x > y ? 1 : 0;
        });
      const lite = byKey(db.prepare(`SELECT * FROM "${p.table}"`).all() as Record<string, unknown>[]);
      const post = byKey(await sql.unsafe(`SELECT * FROM "${p.table}"`));
      expect(post.length, p.table).toBe(lite.length);
      expect(post.length, p.table).toBeGreaterThan(0);
      // Every row, column for column (bytea as Buffer, bigints as numbers, JSON text verbatim).
      expect(post, p.table).toEqual(lite);
    }
    for (const table of Object.keys(NOT_COPIED)) {
      if (table === 'index_counters') continue;
      expect((await sql.unsafe(`SELECT count(*)::int AS n FROM "${table}"`))[0]).toEqual({ n: 0 });
    }
    // Counters rebuilt by PostgreSQL's triggers, cumulative ones carried over: equal to SQLite's.
    expect((await sql`SELECT * FROM index_counters WHERE id = 1`)[0]).toEqual(db.prepare('SELECT * FROM index_counters WHERE id = 1').get());

    // New rows continue after the copied ids: a name re-pointed in PostgreSQL becomes current.
    const driver = new PostgresNameIndex(sql);
    const maxSeq = db.prepare('SELECT max(seq) FROM names').pluck().get() as number;
    expect(await driver.attach('pkg-0.tar.gz', sha512('distfile 5\n'), 'admin')).toBe(true);
    expect((await driver.history('pkg-0.tar.gz'))[0]).toMatchObject({ sha512: sha512('distfile 5\n') });
    expect((await driver.history('pkg-0.tar.gz'))[0]!.seq).toBeGreaterThan(maxSeq);
    const [audit] = await sql<{ id: number }[]>`INSERT INTO audit_log (at, actor, action) VALUES (50, 'x', 'y') RETURNING id`;
    expect(audit!.id).toBe((db.prepare('SELECT max(id) FROM audit_log').pluck().get() as number) + 1);
    const [event] = await sql<{ id: number }[]>`INSERT INTO events (at, type, sha512) VALUES (51, 'gc', ${'0'.repeat(128)}) RETURNING id`;
    // The re-point above announced itself in the outbox first.
    const copiedEvents = db.prepare('SELECT max(id) FROM events').pluck().get() as number;
    expect(event!.id).toBe(copiedEvents + 2);
    await sql`DELETE FROM audit_log WHERE id = ${audit!.id}`;
    await sql`DELETE FROM events WHERE id > ${copiedEvents}`;
    await sql`DELETE FROM names WHERE filename = 'pkg-0.tar.gz' AND sha512 = ${sha512('distfile 5\n')}`;
  });

  it('refuses a non-empty target without --resume; with it, a re-run adds nothing', { timeout: 120_000 }, async () => {
    const before = (await sql<{ n: number }[]>`SELECT count(*)::int AS n FROM names`)[0]!.n;
    expect(before).toBe(db.prepare('SELECT count(*) FROM names').pluck().get());
    const refused = await migrateIndex(['--to', url]);
    expect(refused.code).toBe(2);
    expect(refused.stderr).toMatch(/^fastpull migrate-index: postgres:\/\/\S+ already holds rows \(.*\bblobs\b.*\bnames\b.*\); pass --resume/);

    const again = await migrateIndex(['--to', url, '--resume']);
    expect(again.code, again.stderr).toBe(0);
    expect(again.stdout).toMatch(/^ {2}blobs: 231 rows, 0 copied, 231 already there$/m);
    expect(again.stdout).toMatch(/^done: \d+ rows in \d+ tables, 0 copied, \d+ already there$/m);
    expect((await sql<{ n: number }[]>`SELECT count(*)::int AS n FROM names`)[0]!.n).toBe(before);
    expect((await sql`SELECT * FROM index_counters WHERE id = 1`)[0]).toMatchObject({ blobs: 231 });

    // An interrupted copy (the later batches never committed): --resume fills exactly the gap.
    const gone = await sql`DELETE FROM blobs WHERE sha512 IN (SELECT sha512 FROM blobs ORDER BY sha512 DESC LIMIT 40) RETURNING sha512`;
    const namesLeft = (await sql<{ n: number }[]>`SELECT count(*)::int AS n FROM names`)[0]!.n;
    const filled = await migrateIndex(['--to', url, '--resume', '--batch', '16']);
    expect(filled.code, filled.stderr).toBe(0);
    expect(filled.stdout).toMatch(new RegExp(`^ {2}blobs: 231 rows, ${gone.length} copied, ${231 - gone.length} already there$`, 'm'));
    expect(filled.stdout).toMatch(new RegExp(`^ {2}names: ${before} rows, ${before - namesLeft} copied, `, 'm'));
    expect((await sql<{ n: number }[]>`SELECT count(*)::int AS n FROM names`)[0]!.n).toBe(before);
    expect((await sql`SELECT * FROM index_counters WHERE id = 1`)[0]).toEqual(db.prepare('SELECT * FROM index_counters WHERE id = 1').get());
  });

  it('says what is wrong with its arguments', async () => {
    const bad = await migrateIndex(['--to', 'mysql://db/x']);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/^fastpull migrate-index: --to: expected a postgres:\/\/ URL, got "mysql:\/\/db\/x"/);
    const none = await migrateIndex([]);
    expect(none.code).toBe(2);
    expect(none.stderr).toMatch(/--to postgres:\/\/… is required/);
    const missing = await runCli(['migrate-index', '--to', url], { FASTPULL_DATA_DIR: path.join(dataDir, 'nope') });
    expect(missing.code).toBe(2);
    expect(missing.stderr).toMatch(/no index at /);
  });
});
