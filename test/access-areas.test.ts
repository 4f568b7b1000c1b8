import { mkdtemp, rm } from 'node:fs/promises';
import { createServer, type AddressInfo, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import Fastify, { type FastifyInstance } from 'fastify';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DbAuthenticator, TokenStore } from '../src/auth/token-store.js';
import { BootstrapAuthenticator } from '../src/auth/tokens.js';
import { openOriginIndex, type OriginIndex } from '../src/db/origin-index.js';
import { PG_NAMES_AFTER_SQL, PG_NAMES_WITH_PREFIX_NOCASE_SQL, PG_NAMES_WITH_PREFIX_SQL, PostgresStatus } from '../src/db/postgres/status.js';
import { connectPostgres } from '../src/db/postgres-index.js';
import { installAudit } from '../src/http/audit.js';
import { Metrics } from '../src/http/metrics.js';
import { requireScope } from '../src/http/auth.js';
import { sendError } from '../src/http/errors.js';
import { registerOpenApi } from '../src/http/openapi.js';
import { statusRoutes } from '../src/http/routes/status.js';
import { Readiness } from '../src/ops/readiness.js';
import { blake2b, sha256, sha512 } from './helpers/core.js';
import { runCli } from './helpers/cli.js';
import { postgresMissing, startPostgres, type Postgres } from './helpers/postgres.js';
import { skipWithoutService } from './helpers/services.js';

/**
 * The access areas (tokens, audit, status, counters) answer the same on both index engines; each test opens
 * a fresh index (a data dir for SQLite, a database for PostgreSQL) through openOriginIndex, as the server does.
 */
interface Engine {
  /** A fresh index and a second, independent handle on the same one (another process or replica). */
  open(): Promise<{ index: OriginIndex; twin: () => Promise<OriginIndex>; env: Record<string, string>; seed: Seeder }>;
}

/** Writes blobs and names straight into the tables, so the areas are tested without the names area's code. */
interface Seeder {
  blob(text: string, opts?: { quarantined?: boolean; pinned?: boolean }): Promise<string>;
  attach(filename: string, hash: string, seq: number, opts?: { detached?: boolean }): Promise<void>;
}

const opened: OriginIndex[] = [];
const dirs: string[] = [];
let pg: Postgres | undefined;
let databases = 0;
const skipPg = skipWithoutService('PostgreSQL', postgresMissing());

const track = async (index: Promise<OriginIndex>) => {
  const i = await index;
  opened.push(i);
  return i;
};

const digestsOf = (text: string) => {
  const b = Buffer.from(text);
  return { size: b.length, sha512: sha512(b), blake2b: blake2b(b), sha256: sha256(b) };
};

const sqliteEngine: Engine = {
  async open() {
    const dataDir = await mkdtemp(path.join(tmpdir(), 'fp-access-'));
    dirs.push(dataDir);
    const config = { dataDir, databaseUrl: undefined, databasePoolSize: 2 };
    const index = await track(openOriginIndex(config));
    const db = index.sqlite!;
    return {
      index,
      twin: () => track(openOriginIndex(config)),
      env: { FASTPULL_DATA_DIR: dataDir },
      seed: {
        async blob(text, opts = {}) {
          const d = digestsOf(text);
          db.prepare('INSERT INTO blobs (sha512, blake2b, sha256, size, ingested_at, quarantined_at, pinned) VALUES (?, ?, ?, ?, ?, ?, ?)').run(
            d.sha512, d.blake2b, d.sha256, d.size, 1000, opts.quarantined ? 2000 : null, opts.pinned ? 1 : 0,
          );
          return d.sha512;
        },
        async attach(filename, hash, seq, opts = {}) {
          db.prepare('INSERT INTO names (filename, sha512, seq, first_attached_at, attached_at, detached_at) VALUES (?, ?, ?, ?, ?, ?)').run(
            filename, hash, seq, seq * 10, seq * 10, opts.detached ? seq * 10 + 1 : null,
          );
        },
      },
    };
  },
};

const postgresEngine: Engine = {
  async open() {
    const url = await pg!.createDatabase(`access_${++databases}`);
    const dataDir = await mkdtemp(path.join(tmpdir(), 'fp-access-'));
    dirs.push(dataDir);
    const config = { dataDir, databaseUrl: url, databasePoolSize: 2 };
    const index = await track(openOriginIndex(config));
    const sql = index.postgres!;
    return {
      index,
      twin: () => track(openOriginIndex(config)),
      env: { FASTPULL_DATA_DIR: dataDir, FASTPULL_DATABASE_URL: url },
      seed: {
        async blob(text, opts = {}) {
          const d = digestsOf(text);
          await sql`INSERT INTO blobs (sha512, blake2b, sha256, size, ingested_at, quarantined_at, pinned)
            VALUES (${d.sha512}, ${d.blake2b}, ${d.sha256}, ${d.size}, 1000, ${opts.quarantined ? 2000 : null}, ${opts.pinned ? 1 : 0})`;
          return d.sha512;
        },
        async attach(filename, hash, seq, opts = {}) {
          await sql`INSERT INTO names (filename, sha512, seq, first_attached_at, attached_at, detached_at)
            VALUES (${filename}, ${hash}, ${seq}, ${seq * 10}, ${seq * 10}, ${opts.detached ? seq * 10 + 1 : null})`;
        },
      },
    };
  },
};

afterAll(async () => {
  for (const i of opened) await i.close().catch(() => undefined);
  await pg?.stop();
  for (const dir of dirs) await rm(dir, { recursive: true, force: true });
});

describe.each([
  { name: 'sqlite', engine: sqliteEngine, skip: false },
  { name: 'postgres', engine: postgresEngine, skip: skipPg },
])('access areas: $name', ({ name, engine, skip }) => {
  beforeAll(async () => {
    if (!skip && name === 'postgres') pg ??= await startPostgres();
  }, 60_000);

  it.skipIf(skip)('creates, lists, authenticates and revokes tokens, each change audited with its actor', async () => {
    const { index } = await engine.open();
    const store = new TokenStore(index.tokens);
    expect(await store.anyActive()).toBe(false);
    const secret = await store.create('ci-uploader', ['upload', 'read-api'], 'cli:alice');
    expect(secret).toMatch(/^fp_[A-Za-z0-9_-]{43}$/);
    expect(await store.anyActive()).toBe(true);

    const principal = await store.authenticate(secret);
    expect(principal?.name).toBe('ci-uploader');
    expect([...principal!.scopes].sort()).toEqual(['read-api', 'upload']);
    expect(await store.authenticate(`${secret}x`)).toBeUndefined();

    const [listed] = await store.list();
    expect(listed).toMatchObject({ name: 'ci-uploader', scopes: ['upload', 'read-api'], revokedAt: null });
    expect(listed!.lastUsedAt).toEqual(expect.any(Number));
    expect(JSON.stringify(await store.list())).not.toContain(secret);

    await expect(store.create('ci-uploader', ['admin'])).rejects.toThrow('a token named "ci-uploader" already exists');
    await expect(store.create('bootstrap', ['admin'])).rejects.toThrow('reserved');
    await expect(store.create('bad name', ['admin'])).rejects.toThrow('a token name is');

    expect(await store.revoke('ci-uploader', 'cli:bob')).toBe(true);
    expect(await store.revoke('ci-uploader', 'cli:bob')).toBe(false);
    expect(await store.authenticate(secret)).toBeUndefined();
    expect(await store.anyActive()).toBe(false);
    await expect(store.create('ci-uploader', ['admin'])).rejects.toThrow('names are never reused');
    expect((await store.list())[0]!.revokedAt).toEqual(expect.any(Number));

    // Refused creations wrote nothing: exactly one record per change.
    const trail = await index.audit.query({ limit: 10 });
    expect(trail.map((r) => [r.actor, r.action, r.detail])).toEqual([
      ['cli:alice', 'token.create', 'ci-uploader: upload read-api'],
      ['cli:bob', 'token.revoke', 'ci-uploader'],
    ]);
  });

  it.skipIf(skip)('a revocation through one connection is refused through another at the very next request', async () => {
    const { index, twin } = await engine.open();
    const other = await twin();
    const auth = (i: OriginIndex) => new DbAuthenticator(new BootstrapAuthenticator(undefined), new TokenStore(i.tokens));
    const a = auth(index);
    const b = auth(other);
    expect(await b.enabled()).toBe(false);
    const secret = await new TokenStore(index.tokens).create('replica-test', ['admin']);
    // Created on A, accepted on B at once: nothing is cached per process.
    expect(await b.enabled()).toBe(true);
    expect((await b.authenticate(secret))?.name).toBe('replica-test');
    expect((await a.authenticate(secret))?.name).toBe('replica-test');
    expect(await new TokenStore(index.tokens).revoke('replica-test')).toBe(true);
    expect(await b.authenticate(secret)).toBeUndefined();
    expect(await b.enabled()).toBe(false);
  });

  it.skipIf(skip)('records audit entries and answers the last N, oldest first, by actor', async () => {
    const { index } = await engine.open();
    const hash = 'a'.repeat(128);
    await index.audit.record({ actor: 'ci', action: 'PUT /api/v1/blobs/:filename', status: 201, filename: 'a.tar.gz', sha512: hash });
    await index.audit.record({ actor: 'scrub', action: 'quarantine', sha512: hash, detail: 'digest mismatch' });
    await index.audit.record({ actor: 'ci', action: 'DELETE /api/v1/names/:filename', status: 200, filename: 'a.tar.gz' });
    const all = await index.audit.query({ limit: 50 });
    expect(all.map((r) => r.action)).toEqual(['PUT /api/v1/blobs/:filename', 'quarantine', 'DELETE /api/v1/names/:filename']);
    expect(all[0]).toEqual({ at: expect.any(Number), actor: 'ci', action: 'PUT /api/v1/blobs/:filename', status: 201, filename: 'a.tar.gz', sha512: hash, detail: null });
    expect(all[1]).toMatchObject({ status: null, filename: null, detail: 'digest mismatch' });
    expect((await index.audit.query({ limit: 2 })).map((r) => r.actor)).toEqual(['scrub', 'ci']);
    expect((await index.audit.query({ actor: 'ci', limit: 1 })).map((r) => r.action)).toEqual(['DELETE /api/v1/names/:filename']);
    expect(await index.audit.query({ actor: 'nobody', limit: 5 })).toEqual([]);
  });

  it.skipIf(skip)('keeps counters and totals through inserts, quarantine, pins and detachments', async () => {
    const { index, seed } = await engine.open();
    expect(await index.counters.read()).toEqual({
      blobs: 0, blobBytes: 0, quarantinedBlobs: 0, quarantinedBytes: 0, pinnedBlobs: 0, attachedNames: 0,
      attachedPairs: 0, dedupSavedBytes: 0, verifiedBlobs: 0, verifiedBytes: 0, quarantines: 0,
    });
    const one = await seed.blob('0123456789'); // 10 bytes
    const two = await seed.blob('abc', { quarantined: true });
    await seed.blob('pinned!', { pinned: true });
    await seed.attach('one.tar.gz', one, 1);
    await seed.attach('one-copy.tar.gz', one, 2);
    await seed.attach('two.tar.gz', two, 3);
    await seed.attach('gone.tar.gz', two, 4, { detached: true });
    expect(await index.counters.read()).toMatchObject({
      blobs: 3, blobBytes: 20, quarantinedBlobs: 1, quarantinedBytes: 3, pinnedBlobs: 1,
      attachedNames: 3, attachedPairs: 3, dedupSavedBytes: 10, quarantines: 1,
    });
    expect(await index.status.totals()).toEqual({
      blobs: 3, bytes: 20, names: 3, quarantinedBlobs: 1, quarantinedBytes: 3, pinnedBlobs: 1, dedupSavedBytes: 10,
    });
  });

  it.skipIf(skip)('exports the counters as metrics, and a scrape still answers once the index is gone', async () => {
    const { index, seed } = await engine.open();
    const metrics = new Metrics({ counters: index.counters, defaultMetrics: false });
    const hash = await seed.blob('metered');
    await seed.attach('metered.txt', hash, 1);
    await seed.attach('metered-copy.txt', hash, 2);
    const text = await metrics.text();
    expect(text).toMatch(/^fastpull_stored_blobs 1$/m);
    expect(text).toMatch(/^fastpull_stored_blob_bytes 7$/m);
    expect(text).toMatch(/^fastpull_attached_names 2$/m);
    expect(text).toMatch(/^fastpull_dedup_saved_bytes 7$/m);
    await index.close();
    expect(await metrics.text()).toContain('fastpull_stored_blobs');
  });

  it.skipIf(skip)('lists recent attachments newest first and marks the hash each name serves', async () => {
    const { index, seed } = await engine.open();
    const v1 = await seed.blob('v1');
    const v2 = await seed.blob('v2', { quarantined: true });
    await seed.attach('tool.tar.gz', v1, 1);
    await seed.attach('other.zip', v1, 2);
    await seed.attach('tool.tar.gz', v2, 3);
    await seed.attach('old.tar.gz', v2, 4, { detached: true });
    const recent = await index.status.recent(10);
    expect(recent.map((r) => [r.filename, r.sha512 === v1 ? 'v1' : 'v2', r.seq, r.current, r.size])).toEqual([
      ['tool.tar.gz', 'v2', 3, 1, 2],
      ['other.zip', 'v1', 2, 1, 2],
      ['tool.tar.gz', 'v1', 1, 0, 2],
    ]);
    expect(recent[0]).toMatchObject({ attached_at: 30, quarantined_at: 2000 });
    expect((await index.status.recent(1)).map((r) => r.seq)).toEqual([3]);
  });

  it.skipIf(skip)('searches by prefix byte-wise or ignoring ASCII case, a page at a time', async () => {
    const { index, seed } = await engine.open();
    const h1 = await seed.blob('one');
    const h2 = await seed.blob('two');
    let seq = 0;
    for (const name of ['Foo-1.tar.gz', 'foo-2.tar.gz', 'foo-3.tar.gz', 'FOO-4.tar.gz', 'foobar.zip', 'fo%o.txt', 'fop.txt', 'föo.txt', 'bÄr.txt']) {
      await seed.attach(name, h1, ++seq);
    }
    await seed.attach('foo-2.tar.gz', h2, ++seq);
    await seed.attach('foo-gone.txt', h2, seq + 1, { detached: true });

    const exact = await index.status.searchPrefix('foo', 10);
    expect(exact.results.map((r) => r.filename)).toEqual(['foo-2.tar.gz', 'foo-3.tar.gz', 'foobar.zip']);
    expect(exact.truncated).toBe(false);
    // Both attached hashes, the one the name serves (highest seq) first.
    expect(exact.results[0]!.hashes.map((h) => [h.sha512 === h2 ? 'two' : 'one', h.current])).toEqual([['two', 1], ['one', 0]]);
    // % and _ are plain characters, not wildcards.
    expect((await index.status.searchPrefix('fo%', 10)).results.map((r) => r.filename)).toEqual(['fo%o.txt']);

    const page1 = await index.status.searchPrefix('foo', 2, { ignoreCase: true });
    expect(page1.results.map((r) => r.filename)).toEqual(['Foo-1.tar.gz', 'foo-2.tar.gz']);
    expect(page1.truncated).toBe(true);
    const page2 = await index.status.searchPrefix('foo', 2, { ignoreCase: true, after: 'foo-2.tar.gz' });
    expect(page2.results.map((r) => r.filename)).toEqual(['foo-3.tar.gz', 'FOO-4.tar.gz']);
    const page3 = await index.status.searchPrefix('foo', 2, { ignoreCase: true, after: 'FOO-4.tar.gz' });
    expect(page3).toMatchObject({ results: [{ filename: 'foobar.zip' }], truncated: false });
    // Case-sensitive paging continues strictly after the cursor.
    expect((await index.status.searchPrefix('foo', 5, { after: 'foo-2.tar.gz' })).results.map((r) => r.filename)).toEqual(['foo-3.tar.gz', 'foobar.zip']);
    expect(await index.status.searchPrefix('nothing', 5)).toEqual({ results: [], truncated: false });
    // Only ASCII letters fold, as in SQLite's NOCASE, whatever the database's locale.
    expect((await index.status.searchPrefix('BÄ', 5, { ignoreCase: true })).results.map((r) => r.filename)).toEqual(['bÄr.txt']);
    expect((await index.status.searchPrefix('bä', 5, { ignoreCase: true })).results).toEqual([]);
  });

  it.skipIf(skip)('readiness probes the index', async () => {
    const { index } = await engine.open();
    const readiness = new Readiness({ drainFile: null, dataDir: tmpdir(), minFreeBytes: 0, readOnly: true, storage: { kind: 'local' as const } }, index.status);
    expect((await readiness.check()).checks.database).toEqual({ ok: true });
    await index.close();
    const report = await readiness.check();
    expect(report.ready).toBe(false);
    expect(report.failing).toEqual(['database']);
    expect(report.checks.database).toEqual({ ok: false, detail: 'the database did not answer a query' });
  });

  it.skipIf(skip)('fastpull token and fastpull audit work on the index the configuration names', async () => {
    const { index, env } = await engine.open();
    const created = await runCli(['token', 'create', '--name', 'from-cli', '--scope', 'upload'], env);
    expect(created.code).toBe(0);
    const secret = created.stdout.trim().split('\n').at(-1)!;
    expect((await new TokenStore(index.tokens).authenticate(secret))?.name).toBe('from-cli');
    const listed = await runCli(['token', 'list', '--json'], env);
    expect(JSON.parse(listed.stdout)).toMatchObject([{ name: 'from-cli', scopes: ['upload'], revokedAt: null }]);
    expect((await runCli(['token', 'revoke', 'from-cli'], env)).code).toBe(0);
    expect(await new TokenStore(index.tokens).authenticate(secret)).toBeUndefined();
    const audit = await runCli(['audit', '--json'], env);
    expect(audit.code).toBe(0);
    expect(JSON.parse(audit.stdout).map((r: { action: string; detail: string }) => [r.action, r.detail])).toEqual([
      ['token.create', 'from-cli: upload'],
      ['token.revoke', 'from-cli'],
    ]);
  }, 60_000);
});

describe('HTTP over the PostgreSQL areas (a listening server)', () => {
  let app: FastifyInstance | undefined;
  afterAll(async () => {
    await app?.close();
  });

  it.skipIf(skipPg)('authenticates, audits, answers status and search, and refuses a token revoked through another pool at once', async () => {
    pg ??= await startPostgres();
    const config = { dataDir: tmpdir(), databaseUrl: await pg.createDatabase('http_areas'), databasePoolSize: 2 };
    const index = await track(openOriginIndex(config));
    const replica = await track(openOriginIndex(config));
    app = Fastify();
    app.setErrorHandler((err, request, reply) => sendError(request, reply, err));
    await registerOpenApi(app);
    installAudit(app, index.audit);
    const auth = new DbAuthenticator(new BootstrapAuthenticator(undefined), new TokenStore(index.tokens));
    app.post('/api/v1/things/:filename', { onRequest: requireScope(auth, 'upload') }, async (request) => ({ by: request.principal!.name }));
    await app.register(statusRoutes, { queries: index.status, readiness: new Readiness({ drainFile: null, dataDir: tmpdir(), minFreeBytes: 0, readOnly: true, storage: { kind: 'local' as const } }, index.status) });
    const base = await app.listen({ host: '127.0.0.1', port: 0 });
    const post = async (secret?: string) => {
      const res = await request(`${base}/api/v1/things/a.tar.gz`, { method: 'POST', headers: secret ? { authorization: `Bearer ${secret}` } : {} });
      return { status: res.statusCode, json: (await res.body.json()) as Record<string, unknown> };
    };

    expect(await post('whatever')).toMatchObject({ status: 403, json: { error: 'FORBIDDEN', message: expect.stringContaining('disabled') } });
    const secret = await new TokenStore(replica.tokens).create('spider', ['upload']);
    expect(await post()).toMatchObject({ status: 401, json: { error: 'UNAUTHORIZED' } });
    expect(await post(`${secret}x`)).toMatchObject({ status: 403, json: { error: 'FORBIDDEN', message: 'the token is not valid' } });
    expect(await post(secret)).toEqual({ status: 200, json: { by: 'spider' } });
    // The audit record is written after the response: poll the table, not the clock.
    await expect.poll(async () => (await index.audit.query({ actor: 'spider', limit: 5 })).map((r) => [r.action, r.status, r.filename])).toEqual([
      ['POST /api/v1/things/:filename', 200, 'a.tar.gz'],
    ]);
    expect(await new TokenStore(replica.tokens).revoke('spider')).toBe(true);
    expect(await post(secret)).toMatchObject({ status: 403, json: { error: 'FORBIDDEN' } });

    const sql = index.postgres!;
    const d = digestsOf('status body');
    await sql`INSERT INTO blobs (sha512, blake2b, sha256, size, ingested_at) VALUES (${d.sha512}, ${d.blake2b}, ${d.sha256}, ${d.size}, 1000)`;
    await sql`INSERT INTO names (filename, sha512, seq, first_attached_at, attached_at) VALUES ('Status-1.tar.gz', ${d.sha512}, 1, 5000, 5000)`;
    const status = await request(`${base}/api/v1/status?recent=5`);
    expect(status.statusCode).toBe(200);
    const body = (await status.body.json()) as { totals: unknown; recent: { filename: string; sha512: string; current: boolean }[]; readiness: { ready: boolean } };
    expect(body.totals).toEqual({ blobs: 1, bytes: d.size, names: 1, quarantinedBlobs: 0, quarantinedBytes: 0, pinnedBlobs: 0, dedupSavedBytes: 0 });
    expect(body.recent).toMatchObject([{ filename: 'Status-1.tar.gz', sha512: d.sha512, current: true }]);
    expect(body.readiness.ready).toBe(true);
    const search = await request(`${base}/api/v1/search?prefix=status&ignoreCase=true`);
    expect(((await search.body.json()) as { results: { filename: string }[] }).results.map((r) => r.filename)).toEqual(['Status-1.tar.gz']);
    const exact = await request(`${base}/api/v1/search?prefix=status`);
    expect(((await exact.body.json()) as { results: unknown[] }).results).toEqual([]);
  }, 60_000);
});

describe('PostgreSQL search plans', () => {
  it.skipIf(skipPg)('searches by a range on the "C" collation indexes, in index order, never filtering every name', async () => {
    pg ??= await startPostgres();
    const index = await track(openOriginIndex({ dataDir: tmpdir(), databaseUrl: await pg.createDatabase('plans'), databasePoolSize: 1 }));
    const plan = (text: string, params: (string | number)[]) =>
      index.postgres!.begin(async (tx) => {
        // A near-empty table would be read whole whatever the indexes: ask whether an index can serve the range.
        await tx`SET LOCAL enable_seqscan = off`;
        await tx`SET LOCAL enable_bitmapscan = off`;
        const rows = (await tx.unsafe(`EXPLAIN ${text}`, params)) as unknown as { 'QUERY PLAN': string }[];
        return rows.map((r) => r['QUERY PLAN']).join('\n');
      }) as Promise<string>;
    const exact = await plan(PG_NAMES_WITH_PREFIX_SQL, ['foo', 'foo\u{10ffff}', 21]);
    expect(exact).toMatch(/Index Only Scan using names_current_c on names/);
    expect(exact).toMatch(/Index Cond: .*filename.* >= 'foo'::text\) AND .*filename.* < /);
    expect(exact).not.toMatch(/Sort/);
    const after = await plan(PG_NAMES_AFTER_SQL, ['foo-1', 'foo\u{10ffff}', 21]);
    expect(after).toMatch(/Index Only Scan using names_current_c on names/);
    const nocase = await plan(PG_NAMES_WITH_PREFIX_NOCASE_SQL, ['foo', 'foo\u{10ffff}', '', 21]);
    expect(nocase).toMatch(/Index (Only )?Scan using names_current_nocase_c on names/);
    expect(nocase).toMatch(/Index Cond: .*lower.* >= 'foo'::text COLLATE "C"\) AND /);
    expect(nocase).not.toMatch(/Sort/);
  }, 60_000);
});

describe('PostgreSQL readiness', () => {
  it.skipIf(skipPg)('calls an index that accepts connections but never answers unreachable, at the probe timeout', async () => {
    // A listener that accepts and stays silent: the pool hangs in its startup handshake, the probe does not.
    const sockets = new Set<Socket>();
    const silent = createServer((socket) => void sockets.add(socket));
    await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
    const port = (silent.address() as AddressInfo).port;
    const sql = connectPostgres(`postgres://postgres@127.0.0.1:${port}/none`, { max: 1, connectTimeout: 600 });
    try {
      const readiness = new Readiness({ drainFile: null, dataDir: tmpdir(), minFreeBytes: 0, readOnly: true, storage: { kind: 'local' as const } }, new PostgresStatus(sql, { pingTimeoutMs: 300 }));
      const report = await readiness.check();
      expect(report.failing).toEqual(['database']);
      expect(report.checks.database?.detail).toBe('the database did not answer a query');
    } finally {
      await sql.end({ timeout: 0 });
      for (const s of sockets) s.destroy();
      await new Promise((resolve) => silent.close(resolve));
    }
  });
});
