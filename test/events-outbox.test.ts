import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { recordEvent, type EventRow, type NewEvent } from '../src/db/events.js';
import { openDatabase, type DB } from '../src/db/open.js';
import { recordEvent as recordPostgresEvent } from '../src/db/postgres/events.js';
import { connectPostgres, migratePostgres, type Sql } from '../src/db/postgres-index.js';
import { sha512 } from './helpers/core.js';
import { postgresMissing, startPostgres, type Postgres } from './helpers/postgres.js';
import { skipWithoutService } from './helpers/services.js';

/** The outbox on both index engines: the same rows from the same changes. */
interface Engine {
  /** Raw setup, written the same way on both engines (`?` placeholders become `$n` on PostgreSQL). */
  exec(statement: string, ...params: (string | number | null)[]): Promise<void>;
  /** Records `event` inside a transaction, as a change's own code does. */
  record(event: NewEvent): Promise<number>;
  /** Records outside any transaction (must be refused). */
  recordBare(event: NewEvent): Promise<number>;
  rows(): Promise<EventRow[]>;
}

const dirs: string[] = [];
const pools: Sql[] = [];
const sqlites: DB[] = [];
let pg: Postgres | undefined;
let databases = 0;
const skipPg = skipWithoutService('PostgreSQL', postgresMissing());

async function openSqlite(): Promise<Engine> {
  const dir = await mkdtemp(path.join(tmpdir(), 'fp-outbox-'));
  dirs.push(dir);
  const db = openDatabase(path.join(dir, 'index.sqlite'));
  sqlites.push(db);
  return {
    exec: async (statement, ...params) => void db.prepare(statement).run(...params),
    record: async (event) => db.transaction(() => recordEvent(db, event))(),
    recordBare: async (event) => recordEvent(db, event),
    rows: async () => db.prepare('SELECT * FROM events ORDER BY id').all() as EventRow[],
  };
}

async function openPostgres(): Promise<Engine> {
  const sql = connectPostgres(await pg!.createDatabase(`outbox_${++databases}`), { max: 2 });
  pools.push(sql);
  await migratePostgres(sql);
  return {
    exec: async (statement, ...params) => {
      let n = 0;
      await sql.unsafe(statement.replace(/\?/g, () => `$${++n}`), params);
    },
    record: (event) => sql.begin((tx) => recordPostgresEvent(tx, event)) as Promise<number>,
    recordBare: (event) => recordPostgresEvent(sql, event),
    rows: async () => [...(await sql<EventRow[]>`SELECT * FROM events ORDER BY id`)],
  };
}

afterAll(async () => {
  for (const sql of pools) await sql.end({ timeout: 5 });
  for (const db of sqlites) db.close();
  await pg?.stop();
  for (const dir of dirs) await rm(dir, { recursive: true, force: true });
});

const hex = (text: string) => sha512(Buffer.from(text));

async function blob(engine: Engine, text: string, size: number): Promise<string> {
  const h = hex(text);
  await engine.exec(
    'INSERT INTO blobs (sha512, blake2b, sha256, size, ingested_at) VALUES (?, ?, ?, ?, ?)',
    h,
    h,
    h.slice(0, 64),
    size,
    1000,
  );
  return h;
}

async function attach(engine: Engine, filename: string, h: string, seq: number, detachedAt: number | null = null): Promise<void> {
  await engine.exec(
    'INSERT INTO names (filename, sha512, seq, first_attached_at, attached_at, detached_at) VALUES (?, ?, ?, ?, ?, ?)',
    filename,
    h,
    seq,
    seq,
    seq,
    detachedAt,
  );
}

describe.each([
  { name: 'sqlite', open: openSqlite, skip: false },
  { name: 'postgres', open: openPostgres, skip: skipPg },
])('outbox on $name', ({ name, open, skip }) => {
  beforeAll(async () => {
    if (!skip && name === 'postgres') pg ??= await startPostgres();
  }, 60_000);

  it.skipIf(skip)('records an event with the size and names its transaction sees, in SQLite’s exact text', async () => {
    const engine = await open();
    const h = await blob(engine, 'archive', 4_450_000_000);
    // Names JSON must not depend on the engine: odd characters, and an order SQLite's BINARY collation gives.
    await attach(engine, 'zlib-1.3.tar.xz', h, 1);
    await attach(engine, 'Été "quoted" \\ tab\there.tar.gz', h, 2);
    await attach(engine, 'libsigc++-2.10.8.tar.xz', h, 3);
    await attach(engine, 'b-old.tar.gz', h, 4, 5);
    await attach(engine, 'a-ctrl\u0001.tar.gz', h, 5, 6);

    const ids = [
      await engine.record({ type: 'blob.quarantined', sha512: h, actor: 'scrub', at: 10 }),
      await engine.record({ type: 'blob.deleted', sha512: h, at: 11 }),
      await engine.record({ type: 'name.repointed', sha512: h, names: ['x.tar.gz'], previousSha512: hex('older'), actor: 'spider', at: 12 }),
      await engine.record({ type: 'blob.stored', sha512: hex('unknown'), names: [], at: 13 }),
    ];
    expect(ids).toEqual([1, 2, 3, 4]);
    expect(await engine.rows()).toEqual([
      {
        id: 1, at: 10, type: 'blob.quarantined', sha512: h, size: 4_450_000_000, previous_sha512: null, actor: 'scrub',
        // Attached only, newest attachment first.
        names: JSON.stringify(['libsigc++-2.10.8.tar.xz', 'Été "quoted" \\ tab\there.tar.gz', 'zlib-1.3.tar.xz']),
      },
      {
        id: 2, at: 11, type: 'blob.deleted', sha512: h, size: 4_450_000_000, previous_sha512: null, actor: null,
        // Every name it ever had, in byte order.
        names: JSON.stringify(['a-ctrl\u0001.tar.gz', 'b-old.tar.gz', 'libsigc++-2.10.8.tar.xz', 'zlib-1.3.tar.xz', 'Été "quoted" \\ tab\there.tar.gz']),
      },
      { id: 3, at: 12, type: 'name.repointed', sha512: h, size: 4_450_000_000, names: '["x.tar.gz"]', previous_sha512: hex('older'), actor: 'spider' },
      { id: 4, at: 13, type: 'blob.stored', sha512: hex('unknown'), size: null, names: '[]', previous_sha512: null, actor: null },
    ]);
  });

  it.skipIf(skip)('a blob without names records an empty list', async () => {
    const engine = await open();
    const h = await blob(engine, 'nameless', 3);
    await engine.record({ type: 'blob.quarantined', sha512: h, at: 1 });
    await engine.record({ type: 'blob.deleted', sha512: h, at: 2 });
    expect((await engine.rows()).map((r) => r.names)).toEqual(['[]', '[]']);
  });

  it.skipIf(skip)('refuses to record outside a transaction, and writes nothing', async () => {
    const engine = await open();
    const h = await blob(engine, 'lonely', 6);
    await expect(engine.recordBare({ type: 'blob.quarantined', sha512: h })).rejects.toThrow(/inside the transaction/);
    expect(await engine.rows()).toEqual([]);
  });
});
