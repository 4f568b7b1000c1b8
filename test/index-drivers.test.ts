import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DistfileIndex, type NameIndex } from '../src/db/index.js';
import { openDatabase } from '../src/db/open.js';
import { connectPostgres, listenBlobChanges, migratePostgres, POSTGRES_MIGRATIONS_DIR, type Sql } from '../src/db/postgres-index.js';
import { PostgresNameIndex } from '../src/db/postgres/names.js';
import { listMigrations, MIGRATIONS_DIR } from '../src/db/migrate.js';
import { claimFetchItems, withClusterLock } from '../src/db/postgres-work.js';
import { digestsOf, sha512 } from './helpers/core.js';
import { postgresMissing, startPostgres, type Postgres } from './helpers/postgres.js';
import { skipWithoutService } from './helpers/services.js';

/** One body of index tests for both engines: same answers from SQLite and PostgreSQL. */
interface Flavour {
  open(): Promise<{ driver: NameIndex; quarantine(sha512: string): Promise<void> }>;
}

const opened: { close(): unknown }[] = [];
const dirs: string[] = [];
let pg: Postgres | undefined;
let databases = 0;
const skipPg = skipWithoutService('PostgreSQL', postgresMissing());

const sqlite: Flavour = {
  async open() {
    const dir = await mkdtemp(path.join(tmpdir(), 'fp-index-'));
    dirs.push(dir);
    const db = openDatabase(path.join(dir, 'index.sqlite'));
    const driver = new DistfileIndex(db);
    opened.push(db);
    return { driver, quarantine: async (h) => void db.prepare('UPDATE blobs SET quarantined_at = 1 WHERE sha512 = ?').run(h) };
  },
};

const postgresFlavour: Flavour = {
  async open() {
    const sql = connectPostgres(await pg!.createDatabase(`index_${++databases}`));
    await migratePostgres(sql);
    const driver = new PostgresNameIndex(sql);
    opened.push({ close: () => sql.end({ timeout: 5 }) });
    return { driver, quarantine: async (h) => void (await sql`UPDATE blobs SET quarantined_at = 1 WHERE sha512 = ${h}`) };
  },
};

afterAll(async () => {
  for (const d of opened) await d.close();
  await pg?.stop();
  for (const dir of dirs) await rm(dir, { recursive: true, force: true });
});

const digests = digestsOf;

describe.each([
  { name: 'sqlite', flavour: sqlite, skip: false },
  { name: 'postgres', flavour: postgresFlavour, skip: skipPg },
])('names index: $name', ({ name, flavour, skip }) => {
  beforeAll(async () => {
    if (!skip && name === 'postgres') pg ??= await startPostgres();
  }, 60_000);

  it.skipIf(skip)('records blobs and names; a name serves its latest attachment, a hash is exact', async () => {
    const { driver } = await flavour.open();
    const v1 = digests('kubectl 1\n');
    const v2 = digests('kubectl 2\n');
    await driver.recordBlob(v1, { filename: 'kubectl.tar.gz', by: 'spider', at: 1000 });
    expect(await driver.servableByName('kubectl.tar.gz')).toEqual({
      sha512: v1.sha512, blake2b: v1.blake2b, size: v1.size, filename: 'kubectl.tar.gz', modified_at: 1000, quarantined_at: null, version: '1000.0',
    });
    await driver.recordBlob(v2, { filename: 'kubectl.tar.gz', by: 'spider', at: 2000 });
    expect((await driver.servableByName('kubectl.tar.gz'))?.sha512).toBe(v2.sha512);
    expect(await driver.servableByHash(v1.sha512)).toEqual({
      sha512: v1.sha512, blake2b: v1.blake2b, size: v1.size, filename: 'kubectl.tar.gz', modified_at: 1000, quarantined_at: null, version: '1000.0',
    });
    expect((await driver.history('kubectl.tar.gz')).map((r) => [r.sha512, r.attached_by, r.detached_at])).toEqual([
      [v2.sha512, 'spider', null],
      [v1.sha512, 'spider', null],
    ]);
    // Re-pointing back to the older hash makes it current again, keeping its first attachment time.
    expect(await driver.attach('kubectl.tar.gz', v1.sha512, 'admin')).toBe(true);
    const back = await driver.history('kubectl.tar.gz');
    expect(back[0]).toMatchObject({ sha512: v1.sha512, attached_by: 'admin', first_attached_at: 1000 });
    expect((await driver.servableByName('kubectl.tar.gz'))?.sha512).toBe(v1.sha512);

    expect(await driver.detach('kubectl.tar.gz', 'admin')).toBe(2);
    expect(await driver.servableByName('kubectl.tar.gz')).toBeUndefined();
    expect((await driver.servableByHash(v1.sha512))?.filename).toBeNull();
    expect((await driver.namesOfBlob(v1.sha512)).map((r) => r.detached_by)).toEqual(['admin']);
    expect(await driver.detach('kubectl.tar.gz', 'admin')).toBe(0);
  });

  it.skipIf(skip)('refuses to attach a name to an unknown blob, and records nothing', async () => {
    const { driver } = await flavour.open();
    expect(await driver.attach('ghost.tar.gz', sha512('never stored'), 'spider')).toBe(false);
    expect(await driver.history('ghost.tar.gz')).toEqual([]);
    expect(await driver.servableByHash(sha512('never stored'))).toBeUndefined();
    expect(await driver.blob(sha512('never stored'))).toBeUndefined();
  });

  it.skipIf(skip)('recording again is idempotent, keeps a pin, and lifts a quarantine', async () => {
    const { driver, quarantine } = await flavour.open();
    const d = digests('dynamic archive\n');
    await driver.recordBlob(d, { pinned: true, at: 5 });
    await driver.recordBlob(d, { at: 9 });
    expect(await driver.blob(d.sha512)).toEqual({ ...d, ingested_at: 5, verified_at: null, quarantined_at: null, pinned: 1, generation: 0 });
    await quarantine(d.sha512);
    expect(await driver.servableByHash(d.sha512)).toMatchObject({ quarantined_at: 1, version: '5.1' });
    await driver.recordBlob(d);
    // Released: a new version, so nothing cached under the quarantined one is served.
    expect(await driver.servableByHash(d.sha512)).toMatchObject({ quarantined_at: null, version: '5.2' });
    // Sizes beyond 32 bits survive the round trip as numbers.
    const big = { ...digests('big'), size: 4_450_000_000 };
    await driver.recordBlob(big, { at: 1_764_500_000_000 });
    expect(await driver.blob(big.sha512)).toMatchObject({ size: 4_450_000_000, ingested_at: 1_764_500_000_000 });
  });
});

describe.skipIf(skipPg)('PostgreSQL specifics', () => {
  let sql: Sql;
  let url: string;
  beforeAll(async () => {
    pg ??= await startPostgres();
    url = await pg.createDatabase('specifics');
    sql = connectPostgres(url, { max: 3 });
  }, 60_000);
  afterAll(async () => {
    await sql?.end({ timeout: 5 });
  });

  it('mirrors every SQLite migration, and replicas starting together apply each once', async () => {
    const sqliteVersions = listMigrations(MIGRATIONS_DIR).map((m) => m.version);
    const others = [connectPostgres(url, { max: 1 }), connectPostgres(url, { max: 1 })];
    try {
      const results = await Promise.all([sql, ...others].map((s) => migratePostgres(s)));
      const twins = listMigrations(POSTGRES_MIGRATIONS_DIR);
      expect(results.flatMap((r) => r.applied).sort()).toEqual(twins.map((m) => m.name));
      const latest = twins[twins.length - 1]!.version;
      expect(results.map((r) => r.version)).toEqual([latest, latest, latest]);
      expect(await migratePostgres(sql)).toEqual({ applied: [], version: latest });
      // A twin carries its SQLite migration's number; later SQLite migrations (events, counters…) need theirs.
      for (const m of twins) expect(sqliteVersions, m.name).toContain(m.version);
    } finally {
      for (const s of others) await s.end({ timeout: 5 });
    }
    const tables = (await sql<{ table_name: string }[]>`
      SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY table_name`).map((r) => r.table_name);
    expect(tables).toEqual([
      'audit_log', 'blobs', 'event_deliveries', 'event_targets', 'events', 'fetch_items', 'fetch_jobs', 'fetched_urls',
      'index_counter_slots', 'index_counters', 'names', 'pull_flights', 'schema_migrations', 'tokens', 'upload_holds',
    ]);
    // Every SQLite table has its twin with the same columns (index_counters is a view over striped slots there).
    const twinDir = await mkdtemp(path.join(tmpdir(), 'fp-twin-'));
    dirs.push(twinDir);
    const sqliteDb = openDatabase(path.join(twinDir, 'index.sqlite'));
    try {
      const sqliteTables = sqliteDb.prepare(`SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'`).pluck().all() as string[];
      for (const table of sqliteTables) {
        const want = (sqliteDb.prepare(`SELECT name FROM pragma_table_info(?)`).pluck().all(table) as string[]).sort();
        const have = (await sql<{ column_name: string }[]>`
          SELECT column_name FROM information_schema.columns WHERE table_schema = 'public' AND table_name = ${table}`).map((r) => r.column_name).sort();
        expect(have, table).toEqual(want);
      }
    } finally {
      sqliteDb.close();
    }
  });

  it('keeps the index counters by triggers exactly as SQLite does, over inserts, re-points, detaches and deletes', async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'fp-counters-'));
    dirs.push(dir);
    const db = openDatabase(path.join(dir, 'index.sqlite'));
    const lite = new DistfileIndex(db);
    opened.push(db);
    const pgSql = connectPostgres(await pg!.createDatabase('counters'), { max: 3 });
    await migratePostgres(pgSql);
    const post = new PostgresNameIndex(pgSql);
    opened.push({ close: () => pgSql.end({ timeout: 5 }) });
    const counts = async () => ({
      sqlite: db.prepare('SELECT * FROM index_counters WHERE id = 1').get(),
      postgres: (await pgSql`SELECT * FROM index_counters WHERE id = 1`)[0],
    });
    const a = digests('counted a\n');
    const b = { ...digests('counted b, big'), size: 5_000_000_000 };
    const c = digests('counted c\n');
    const steps: [string, (d: NameIndex, run: (q: string, ...p: unknown[]) => Promise<void>) => unknown][] = [
      ['insert blobs, one pinned', async (d) => {
        await d.recordBlob(a, { filename: 'a.tgz', at: 1 });
        await d.recordBlob(b, { filename: 'b.tgz', pinned: true, at: 2 });
        await d.recordBlob(c, { at: 3 });
      }],
      ['dedup: a second name on a blob', (d) => d.attach('a-copy.tgz', a.sha512, 'x')],
      ['a third name on it', (d) => d.attach('a-third.tgz', a.sha512, 'x')],
      ['re-point a name to another blob', (d) => d.attach('a.tgz', c.sha512, 'x')],
      ['detach a name with two attached hashes', (d) => d.detach('a.tgz', 'x')],
      ['re-attach a detached pair', (d) => d.attach('a.tgz', a.sha512, 'x')],
      ['verify and quarantine', async (_d, run) => {
        await run('UPDATE blobs SET verified_at = 10 WHERE sha512 = ?', a.sha512);
        await run('UPDATE blobs SET verified_at = 11 WHERE sha512 = ?', a.sha512);
        await run('UPDATE blobs SET quarantined_at = 12 WHERE sha512 = ?', b.sha512);
      }],
      ['release by re-upload', (d) => d.recordBlob(b)],
      ['delete a blob with names attached (gc)', (_d, run) => run('DELETE FROM blobs WHERE sha512 = ?', a.sha512)],
      ['delete every blob', (_d, run) => run('DELETE FROM blobs')],
    ];
    for (const [step, apply] of steps) {
      await apply(lite, async (q, ...p) => void db.prepare(q).run(...p));
      await apply(post, async (q, ...p) => {
        let n = 0;
        await pgSql.unsafe(q.replace(/\?/g, () => `$${++n}`), p as string[]);
      });
      const { sqlite, postgres } = await counts();
      expect(postgres, step).toEqual(sqlite);
      if (step === 'release by re-upload') {
        // Drift of the racy counts (two replicas attaching one new name at once) is settled by a recount,
        // which leaves the cumulative counts alone.
        await pgSql`UPDATE index_counter_slots SET attached_names = attached_names + 3, dedup_saved_bytes = dedup_saved_bytes - 7,
                    verified_blobs = verified_blobs + 1 WHERE slot = (SELECT min(slot) FROM index_counter_slots)`;
        await pgSql`SELECT index_counters_recount()`;
        expect((await counts()).postgres, 'recount').toEqual({ ...(sqlite as Record<string, number>), verified_blobs: (sqlite as Record<string, number>).verified_blobs! + 1 });
        await pgSql`UPDATE index_counter_slots SET verified_blobs = verified_blobs - 1 WHERE slot = (SELECT min(slot) FROM index_counter_slots)`;
      }
    }
    // After a delete of everything only the cumulative counts remain.
    expect((await counts()).postgres).toMatchObject({ blobs: 0, attached_pairs: 0, attached_names: 0, dedup_saved_bytes: 0, verified_blobs: 2, quarantines: 1 });
    // The counters are spread over slots of the writing sessions, never one hot row for every writer.
    const [{ slots } = { slots: 0 }] = await pgSql<{ slots: number }[]>`SELECT count(*)::int AS slots FROM index_counter_slots`;
    expect(slots).toBeGreaterThanOrEqual(1);
    expect(slots).toBeLessThanOrEqual(16);
  });

  it('keeps to its bounded pool under a burst, and orders concurrent re-points by one sequence', async () => {
    const driver = new PostgresNameIndex(sql);
    const blobs = Array.from({ length: 20 }, () => digests(randomBytes(16).toString('hex')));
    for (const d of blobs) await driver.recordBlob(d);
    await Promise.all(blobs.map((d) => driver.attach('contended.tar.gz', d.sha512, 'spider')));
    const lookups = await Promise.all(Array.from({ length: 200 }, (_, i) => driver.servableByHash(blobs[i % 20]!.sha512)));
    expect(lookups.every((b) => b !== undefined)).toBe(true);
    const [{ n } = { n: -1 }] = await sql<{ n: number }[]>`
      SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = current_database() AND backend_type = 'client backend'`;
    expect(n).toBeLessThanOrEqual(3);
    const history = await driver.history('contended.tar.gz');
    expect(history).toHaveLength(20);
    expect(new Set(history.map((r) => r.seq)).size).toBe(20);
    expect((await driver.servableByName('contended.tar.gz'))?.sha512).toBe(history[0]!.sha512);
  });

  it('two replicas claiming fetch items at once take each item exactly once, oldest first', async () => {
    await migratePostgres(sql);
    await sql`INSERT INTO fetch_jobs (id, created_at) VALUES ('job-a', 1), ('job-b', 2)`;
    for (let i = 0; i < 60; i++) {
      const job = i % 2 === 0 ? 'job-a' : 'job-b';
      await sql`INSERT INTO fetch_items (job_id, idx, url, filename, state, queued_at)
                VALUES (${job}, ${i}, ${`http://upstream.invalid/${i}`}, ${`f${i}.tgz`}, 'queued', ${1000 + i})`;
    }
    const replicas = [connectPostgres(url, { max: 2 }), connectPostgres(url, { max: 2 })];
    try {
      const claimed = await Promise.all(
        replicas.map(async (replica) => {
          const mine: number[] = [];
          for (;;) {
            const batch = await claimFetchItems(replica, 7);
            if (batch.length === 0) return mine;
            // Each batch comes back in queue order.
            expect(batch.map((r) => r.queued_at)).toEqual([...batch.map((r) => r.queued_at)].sort((a, b) => a - b));
            mine.push(...batch.map((r) => r.idx));
          }
        }),
      );
      expect(claimed.flat().sort((a, b) => a - b)).toEqual(Array.from({ length: 60 }, (_, i) => i));
      const [row] = await sql<{ n: number }[]>`SELECT count(*)::int AS n FROM fetch_items WHERE state = 'downloading' AND attempts = 1`;
      expect(row?.n).toBe(60);
    } finally {
      for (const r of replicas) await r.end({ timeout: 5 });
    }
  });

  it('a cluster lock runs a singleton job on one replica at a time, and a dead holder releases it', async () => {
    const a = connectPostgres(url, { max: 2 });
    const b = connectPostgres(url, { max: 2 });
    try {
      let release!: () => void;
      const holding = new Promise<void>((resolve) => (release = resolve));
      let entered!: () => void;
      const inside = new Promise<void>((resolve) => (entered = resolve));
      const gcOnA = withClusterLock(a, 'gc', async () => {
        entered();
        await holding;
        return 'a';
      });
      await inside;
      expect(await withClusterLock(b, 'gc', async () => 'b')).toEqual({ ran: false });
      // Another job's lock is independent.
      expect(await withClusterLock(b, 'scrub', async () => 'scrub')).toEqual({ ran: true, value: 'scrub' });
      release();
      expect(await gcOnA).toEqual({ ran: true, value: 'a' });
      expect(await withClusterLock(b, 'gc', async () => 'b')).toEqual({ ran: true, value: 'b' });

      // The holder's connections die (as when its process is killed): the server releases the lock.
      let enteredAgain!: () => void;
      const insideAgain = new Promise<void>((resolve) => (enteredAgain = resolve));
      // A job that never finishes: only its connection going away can free the lock.
      void withClusterLock(a, 'gc', () => {
        enteredAgain();
        return new Promise<never>(() => undefined);
      }).catch(() => undefined);
      await insideAgain;
      expect(await withClusterLock(b, 'gc', async () => 'b')).toEqual({ ran: false });
      await a.end({ timeout: 0 });
      // The server notices the closed socket on its own schedule: ask until it has (bounded).
      let after: { ran: boolean } = { ran: false };
      for (let i = 0; i < 100 && !after.ran; i++) {
        if (i > 0) await new Promise((resolve) => setTimeout(resolve, 100));
        after = await withClusterLock(b, 'gc', async () => 'b');
      }
      expect(after).toEqual({ ran: true, value: 'b' });
    } finally {
      await a.end({ timeout: 0 });
      await b.end({ timeout: 5 });
    }
  });

  it('tells every listening replica when a blob changes what it serves or goes, at commit', async () => {
    await migratePostgres(sql);
    const replica = connectPostgres(url, { max: 2 });
    const heard: string[] = [];
    let wake = () => undefined as void;
    const stop = await listenBlobChanges(replica, (sha512) => {
      heard.push(sha512);
      wake();
    });
    const next = (n: number) => new Promise<void>((resolve) => (wake = () => void (heard.length >= n && resolve())));
    try {
      const driver = new PostgresNameIndex(sql);
      const quiet = digests('quiet');
      const watched = digests('watched');
      await driver.recordBlob(quiet, { filename: 'quiet.tgz' });
      await driver.recordBlob(watched);
      // Attaching names and re-recording an intact blob change nothing a cache holds: no announcement.
      await driver.recordBlob(quiet);
      await driver.attach('other.tgz', quiet.sha512, null);
      // Quarantine inside a transaction: heard only once it commits.
      let arrived = next(1);
      await sql.begin(async (tx) => {
        await tx`UPDATE blobs SET quarantined_at = 7 WHERE sha512 = ${watched.sha512}`;
        await new Promise((resolve) => setTimeout(resolve, 100));
        expect(heard).toEqual([]);
      });
      await arrived;
      arrived = next(2);
      await driver.recordBlob(watched); // released by a re-upload
      await arrived;
      arrived = next(3);
      await sql`DELETE FROM blobs WHERE sha512 = ${watched.sha512}`; // gc
      await arrived;
      expect(heard).toEqual([watched.sha512, watched.sha512, watched.sha512]);
    } finally {
      await stop();
      await replica.end({ timeout: 5 });
    }
  });
});
