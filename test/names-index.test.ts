import { existsSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import http from 'node:http';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../src/config.js';
import type { NameIndex } from '../src/db/index.js';
import { isPromise } from '../src/db/awaitable.js';
import { openOriginIndex, type OriginIndex } from '../src/db/origin-index.js';
import { Lru } from '../src/db/postgres/lru.js';
import { createHotPath } from '../src/http/hot-path.js';
import { Ingest } from '../src/ingest/ingest.js';
import { createLogger } from '../src/logger.js';
import { BlobStore } from '../src/store/blob-store.js';
import { localSource } from '../src/store/remote-reader.js';
import { runCli } from './helpers/cli.js';
import { digestsOf, sha512 } from './helpers/core.js';
import { postgresMissing, startPostgres, type Postgres } from './helpers/postgres.js';
import { get } from './helpers/server.js';
import { skipWithoutService } from './helpers/services.js';

/**
 * The names area over both engines, opened the way the server opens it (openOriginIndex): the same
 * outbox events for the same changes, and on PostgreSQL the per-process caches of several replicas.
 */
const skipPg = skipWithoutService('PostgreSQL', postgresMissing());
let pg: Postgres | undefined;
let databases = 0;
const dirs: string[] = [];
const opened: OriginIndex[] = [];

afterAll(async () => {
  for (const index of opened) await index.close();
  await pg?.stop();
  for (const dir of dirs) await rm(dir, { recursive: true, force: true });
});

const digests = digestsOf;

async function open(engine: 'sqlite' | 'postgres', databaseUrl?: string, nameMaxAge = 300): Promise<OriginIndex> {
  const dataDir = await mkdtemp(path.join(tmpdir(), 'fp-names-'));
  dirs.push(dataDir);
  if (engine === 'postgres') databaseUrl ??= await pg!.createDatabase(`names_${++databases}`);
  const index = await openOriginIndex({ dataDir, databaseUrl: engine === 'postgres' ? databaseUrl : undefined, databasePoolSize: 3, nameMaxAge });
  opened.push(index);
  return index;
}

/** Runs a statement on whichever engine holds the index (`?` placeholders). */
async function run(index: OriginIndex, query: string, ...params: (string | number)[]): Promise<Record<string, unknown>[]> {
  if (index.sqlite) {
    const statement = index.sqlite.prepare(query);
    if (statement.reader) return statement.all(...params) as Record<string, unknown>[];
    statement.run(...params);
    return [];
  }
  let n = 0;
  return [...(await index.postgres!.unsafe(query.replace(/\?/g, () => `$${++n}`), params))];
}

/** Asks until `check` holds (bounded): another replica learns of a change on its own schedule. */
async function eventually(check: () => Promise<boolean>, what: string): Promise<void> {
  for (let i = 0; i < 200; i++) {
    if (await check()) return;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  throw new Error(`never happened: ${what}`);
}

describe.each([
  { engine: 'sqlite' as const, skip: false },
  { engine: 'postgres' as const, skip: skipPg },
])('names area: $engine', ({ engine, skip }) => {
  beforeAll(async () => {
    if (!skip && engine === 'postgres') pg ??= await startPostgres();
  }, 60_000);

  it.skipIf(skip)('announces each change in the outbox, in the same transaction, exactly as the other engine does', async () => {
    const index = await open(engine);
    const names: NameIndex = index.names;
    const a = digests('announced a\n');
    const b = digests('announced b\n');
    await names.recordBlob(a, { filename: 'a.tgz', by: 'alice', at: 10 });
    await names.recordBlob(a, { filename: 'a.tgz', by: 'alice', at: 11 }); // nothing new: no event
    await names.recordBlob(b, { at: 12 });
    expect(await names.attach('a.tgz', b.sha512, 'bob')).toBe(true); // re-point
    expect(await names.attach('a.tgz', b.sha512, 'bob')).toBe(true); // same hash again: no event
    expect(await names.attach('copy.tgz', a.sha512, 'bob')).toBe(true);
    expect(await names.attach('ghost.tgz', sha512('never stored'), 'bob')).toBe(false);
    await run(index, 'UPDATE blobs SET quarantined_at = 13 WHERE sha512 = ?', a.sha512);
    await names.recordBlob(a, { by: 'carol', at: 14 }); // release by re-upload
    expect(await names.detach('a.tgz', 'dave')).toBe(2);
    expect(await names.detach('a.tgz', 'dave')).toBe(0); // nothing attached: no event

    // The embedded default answers the download lookups synchronously (the lean path relies on it); PostgreSQL
    // with a promise until its cache holds the row.
    expect(isPromise(names.servableByHash(b.sha512))).toBe(engine === 'postgres');
    expect(isPromise(names.servableByName('copy.tgz'))).toBe(engine === 'postgres');

    const events = await run(index, 'SELECT type, sha512, size, names, previous_sha512, actor FROM events ORDER BY id');
    expect(events).toEqual([
      { type: 'blob.stored', sha512: a.sha512, size: a.size, names: '["a.tgz"]', previous_sha512: null, actor: 'alice' },
      { type: 'name.attached', sha512: a.sha512, size: a.size, names: '["a.tgz"]', previous_sha512: null, actor: 'alice' },
      { type: 'blob.stored', sha512: b.sha512, size: b.size, names: '[]', previous_sha512: null, actor: null },
      { type: 'name.repointed', sha512: b.sha512, size: b.size, names: '["a.tgz"]', previous_sha512: a.sha512, actor: 'bob' },
      { type: 'name.attached', sha512: a.sha512, size: a.size, names: '["copy.tgz"]', previous_sha512: null, actor: 'bob' },
      // A restored blob names what is attached to it when it comes back.
      { type: 'blob.restored', sha512: a.sha512, size: a.size, names: '["copy.tgz","a.tgz"]', previous_sha512: null, actor: 'carol' },
      { type: 'name.detached', sha512: b.sha512, size: b.size, names: '["a.tgz"]', previous_sha512: null, actor: 'dave' },
    ]);
  });
});

describe.skipIf(skipPg)('names area: PostgreSQL replicas and their caches', () => {
  let url: string;
  let a: OriginIndex;
  let b: OriginIndex;
  beforeAll(async () => {
    pg ??= await startPostgres();
    url = await pg.createDatabase('replicas');
    a = await open('postgres', url);
    // nameMaxAge 1 s: B trusts a cached name for 1 s, not the 2 s cap.
    b = await open('postgres', url, 1);
  }, 60_000);

  it('serves an upload through another replica at once: misses are never cached', async () => {
    const d = digests('fresh upload\n');
    expect(await b.names.servableByHash(d.sha512)).toBeUndefined();
    expect(await b.names.servableByName('fresh.tgz')).toBeUndefined();
    await a.names.recordBlob(d, { filename: 'fresh.tgz' });
    expect(await b.names.servableByHash(d.sha512)).toMatchObject({ sha512: d.sha512, filename: 'fresh.tgz', quarantined_at: null });
    expect(await b.names.servableByName('fresh.tgz')).toMatchObject({ sha512: d.sha512 });
    // Now cached on B: answered without a round trip (no promise), which the download path relies on.
    const hit = b.names.servableByHash(d.sha512);
    expect(isPromise(hit)).toBe(false);
    expect(hit).toMatchObject({ sha512: d.sha512 });
    expect(isPromise(b.names.servableByName('fresh.tgz'))).toBe(false);
  });

  it('drops a cached blob on every replica when it is quarantined, released or deleted anywhere', async () => {
    const d = digests('watched blob\n');
    await a.names.recordBlob(d, { filename: 'watched.tgz' });
    expect(await b.names.servableByHash(d.sha512)).toMatchObject({ quarantined_at: null, version: expect.stringMatching(/\.0$/) });
    expect(await b.names.servableByName('watched.tgz')).toMatchObject({ sha512: d.sha512 });
    expect(isPromise(b.names.servableByHash(d.sha512))).toBe(false);
    expect(isPromise(b.names.servableByName('watched.tgz'))).toBe(false);

    // Quarantined by another process (as verify or the scrub do: a plain UPDATE, announced by the trigger).
    await a.postgres!`UPDATE blobs SET quarantined_at = 7 WHERE sha512 = ${d.sha512}`;
    await eventually(async () => (await b.names.servableByHash(d.sha512))?.quarantined_at === 7, 'B sees the quarantine by hash');
    expect((await b.names.servableByName('watched.tgz'))?.quarantined_at).toBe(7);
    // A quarantined blob is not cached: it is asked again each time.
    expect(isPromise(b.names.servableByHash(d.sha512))).toBe(true);

    await a.names.recordBlob(d); // released by a re-upload through A
    await eventually(async () => (await b.names.servableByHash(d.sha512))?.quarantined_at === null, 'B sees the release');
    expect((await b.names.servableByName('watched.tgz'))?.quarantined_at).toBeNull();

    await a.postgres!`DELETE FROM blobs WHERE sha512 = ${d.sha512}`; // gc
    await eventually(async () => (await b.names.servableByHash(d.sha512)) === undefined, 'B sees the delete by hash');
    expect(await b.names.servableByName('watched.tgz')).toBeUndefined();
  });

  it('honours a re-point through another replica within the name TTL', async () => {
    const v1 = digests('release 1\n');
    const v2 = digests('release 2\n');
    await a.names.recordBlob(v1, { filename: 'tool.tgz' });
    await a.names.recordBlob(v2);
    expect((await b.names.servableByName('tool.tgz'))?.sha512).toBe(v1.sha512);
    expect(isPromise(b.names.servableByName('tool.tgz'))).toBe(false);
    await a.names.attach('tool.tgz', v2.sha512, 'admin');
    // The replica that made the change sees it at once; the other within its TTL (1 s here).
    expect((await a.names.servableByName('tool.tgz'))?.sha512).toBe(v2.sha512);
    await eventually(async () => (await b.names.servableByName('tool.tgz'))?.sha512 === v2.sha512, 'B follows the re-point');
    await a.names.detach('tool.tgz', 'admin');
    expect(await a.names.servableByName('tool.tgz')).toBeUndefined();
    await eventually(async () => (await b.names.servableByName('tool.tgz')) === undefined, 'B follows the detach');
  });

  it('starts over when its listening connection is lost, since announcements made meanwhile are gone', async () => {
    const d = digests('while away\n');
    await a.names.recordBlob(d);
    await b.names.servableByHash(d.sha512);
    expect(isPromise(b.names.servableByHash(d.sha512))).toBe(false);
    await a.postgres!`
      SELECT pg_terminate_backend(pid) FROM pg_stat_activity
      WHERE datname = current_database() AND query ILIKE 'listen%' AND pid <> pg_backend_pid()`;
    await eventually(async () => isPromise(b.names.servableByHash(d.sha512)), 'B drops its cache after re-listening');
    // And it listens again: a later quarantine still reaches it.
    await b.names.servableByHash(d.sha512);
    await eventually(async () => {
      await a.postgres!`UPDATE blobs SET quarantined_at = 9 WHERE sha512 = ${d.sha512} AND quarantined_at IS NULL`;
      return (await b.names.servableByHash(d.sha512))?.quarantined_at === 9;
    }, 'B hears announcements again');
  });
});

describe.skipIf(skipPg)('the download path over PostgreSQL', () => {
  let index: OriginIndex;
  let store: BlobStore;
  let server: http.Server;
  let base: string;
  beforeAll(async () => {
    pg ??= await startPostgres();
    index = await open('postgres');
    const dir = await mkdtemp(path.join(tmpdir(), 'fp-names-store-'));
    dirs.push(dir);
    store = new BlobStore(dir);
    await store.init();
    const hot = createHotPath({
      config: loadConfig({ dataDir: dir, logLevel: 'silent' }, {}),
      index: index.names,
      source: localSource(store),
      logger: createLogger('silent'),
      closing: () => false,
    })!;
    // What fastify would answer: anything the lean path hands over, marked so the test can tell.
    server = http.createServer((req, res) => hot(req, res, (_req, r) => r.writeHead(404, { 'x-handed-over': '1' }).end()));
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    base = `http://127.0.0.1:${(server.address() as { port: number }).port}`;
  }, 60_000);
  afterAll(async () => {
    server?.closeAllConnections();
    await new Promise((resolve) => server?.close(resolve));
  });

  it('answers hash and name paths from the database, then from the cache, and hands over what is not servable', async () => {
    const body = Buffer.from('served through postgres\n'.repeat(100));
    const ingest = new Ingest(store, index.names);
    const { digests } = await ingest.ingest(Readable.from([body]), { filename: 'pg-1.0.tar.gz', by: 'test' });
    const h = digests.sha512;
    const hashPath = `${base}/${h.slice(0, 2)}/${h.slice(2, 4)}/${h.slice(4, 6)}/${h}`;
    for (const round of ['database', 'cache']) {
      const byHash = await get(hashPath);
      expect([round, byHash.status, byHash.headers['content-disposition']]).toEqual([round, 200, 'attachment; filename="pg-1.0.tar.gz"']);
      expect(byHash.body.equals(body)).toBe(true);
      const byName = await get(`${base}/distfiles/pg-1.0.tar.gz`);
      expect([round, byName.status]).toEqual([round, 200]);
      expect(byName.body.equals(body)).toBe(true);
    }
    expect(isPromise(index.names.servableByHash(h))).toBe(false);
    const range = await get(hashPath, { range: 'bytes=0-5' });
    expect([range.status, range.body.toString()]).toEqual([206, 'served']);
    expect((await get(hashPath, { 'if-none-match': `"${h}"` })).status).toBe(304);
    const unknown = await get(`${base}/distfiles/never-stored.tar.gz`);
    expect([unknown.status, unknown.headers['x-handed-over']]).toEqual([404, '1']);

    await index.postgres!`UPDATE blobs SET quarantined_at = 1 WHERE sha512 = ${h}`;
    await eventually(async () => (await get(hashPath)).headers['x-handed-over'] === '1', 'a quarantined blob is handed over');
    expect((await get(`${base}/distfiles/pg-1.0.tar.gz`)).headers['x-handed-over']).toBe('1');
    // A re-upload of the good bytes releases it, through the asynchronous dedup check of the store.
    expect((await ingest.ingest(Readable.from([body]), { by: 'test' })).created).toBe(true);
    expect((await get(hashPath)).status).toBe(200);
  });
});

describe.skipIf(skipPg)('CLI commands on the configured index', () => {
  it('fastpull import records into PostgreSQL when FASTPULL_DATABASE_URL is set, not into a SQLite file; purge reads it', async () => {
    pg ??= await startPostgres();
    const url = await pg.createDatabase('import_cli');
    const tree = await mkdtemp(path.join(tmpdir(), 'fp-names-tree-'));
    const dataDir = await mkdtemp(path.join(tmpdir(), 'fp-names-data-'));
    dirs.push(tree, dataDir);
    await writeFile(path.join(tree, 'foo-1.0.tar.gz'), 'foo\n');
    await writeFile(path.join(tree, 'bar-2.0.tar.xz'), 'bar\n');
    const env = { FASTPULL_DATA_DIR: dataDir, FASTPULL_DATABASE_URL: url };
    const first = await runCli(['import', tree], env);
    expect(first.code, first.stderr).toBe(0);
    expect(first.stdout).toMatch(/imported: +2/);
    expect(existsSync(path.join(dataDir, 'index.sqlite'))).toBe(false);
    const index = await open('postgres', url);
    expect(await index.names.servableByName('foo-1.0.tar.gz')).toMatchObject({ sha512: sha512('foo\n'), size: 4 });
    // Two files imported side by side: their events interleave.
    expect((await run(index, 'SELECT type FROM events ORDER BY type')).map((r) => r.type)).toEqual([
      'blob.stored', 'blob.stored', 'name.attached', 'name.attached',
    ]);
    expect((await run(index, 'SELECT action FROM audit_log')).map((r) => r.action)).toEqual(['import']);
    // A re-run finds everything present, by the same index.
    const again = await runCli(['import', tree], env);
    expect(again.code, again.stderr).toBe(0);
    expect(again.stdout).toMatch(/already present: +2/);

    // fastpull purge names the paths of the names attached in that same index.
    const purge = await runCli(['purge', '--dry-run', sha512('foo\n')], env);
    expect(purge.code, purge.stderr).toBe(0);
    expect(purge.stdout.split('\n')).toContain('/distfiles/foo-1.0.tar.gz');
    expect(purge.stderr).not.toMatch(/no index/);
  }, 60_000);
});

describe('the caches are bounded', () => {
  it('forgets the least recently used entry first, and expired ones', () => {
    let now = 0;
    const lru = new Lru<string, number>(2, () => now);
    lru.set('a', 1, 100);
    lru.set('b', 2, 100);
    expect(lru.get('a')).toBe(1); // a is now the most recently used
    lru.set('c', 3, 100);
    expect(lru.size).toBe(2);
    expect(lru.get('b')).toBeUndefined();
    expect(lru.get('a')).toBe(1);
    now = 100;
    expect(lru.get('c')).toBeUndefined();
    expect(lru.size).toBe(1);
    lru.set('d', 4, 0); // a TTL of 0 caches nothing
    expect(lru.get('d')).toBeUndefined();
  });
});
