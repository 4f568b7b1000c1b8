import { createHash } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { get, startTestServer, type TestServer } from './helpers/server.js';

const sha512 = (b: Buffer | string) => createHash('sha512').update(b).digest('hex');

describe('smoke', () => {
  let server: TestServer;
  beforeAll(async () => {
    server = await startTestServer();
  });
  afterAll(async () => server.stop());

  it('uploads a distfile and serves it under every path form', async () => {
    const up = await server.upload('foo-1.0.tar.gz', 'hello\n');
    expect(up.status).toBe(201);
    const h = sha512('hello\n');
    expect(up.json.sha512).toBe(h);
    for (const p of Object.values(up.json.urls as Record<string, string>)) {
      const res = await get(server.baseUrl + p);
      expect(res.status, p).toBe(200);
      expect(res.body.toString()).toBe('hello\n');
      expect(res.headers['content-length']).toBe('6');
    }
    const head = await get(server.baseUrl + up.json.urls.flat, {}, 'HEAD');
    expect(head.status).toBe(200);
    expect(head.headers['content-length']).toBe('6');
    const ranged = await get(server.baseUrl + up.json.urls.hash, { range: 'bytes=2-' });
    expect(ranged.status).toBe(206);
    expect(ranged.body.toString()).toBe('llo\n');
    const notMod = await get(server.baseUrl + up.json.urls.hash, { 'if-none-match': `"${h}"` });
    expect(notMod.status).toBe(304);
  });
});

describe('declared sha256', () => {
  it('refuses a body whose sha256 differs from ?sha256= and stores nothing', async () => {
    const server = await startTestServer();
    try {
      const wrong = await server.upload('bar-1.0.tar.gz', 'bar\n', { sha256: '0'.repeat(64) });
      expect(wrong.status).toBe(422);
      expect(wrong.json.error).toBe('DIGEST_MISMATCH');
      expect(wrong.json.mismatches).toEqual([
        { field: 'sha256', expected: '0'.repeat(64), actual: createHash('sha256').update('bar\n').digest('hex') },
      ]);
      expect((await get(`${server.baseUrl}/distfiles/bar-1.0.tar.gz`)).status).toBe(404);
      const bad = await server.upload('bar-1.0.tar.gz', 'bar\n', { sha256: 'xyz' });
      expect(bad.status).toBe(400);
      expect(bad.json.error).toBe('BAD_HASH');
      const right = await server.upload('bar-1.0.tar.gz', 'bar\n', {
        sha256: createHash('sha256').update('bar\n').digest('hex'),
      });
      expect(right.status).toBe(201);
    } finally {
      await server.stop();
    }
  });
});

describe('cli', () => {
  it('migrates a fresh data directory and reports the schema version', async () => {
    const { makeDataDir } = await import('./helpers/server.js');
    const { runCli } = await import('./helpers/cli.js');
    const dataDir = await makeDataDir();
    const res = await runCli(['migrate'], { FASTPULL_DATA_DIR: dataDir });
    expect(res.code, res.stderr).toBe(0);
    expect(res.stdout).toMatch(/applied 001_initial\.sql/);
    // Every migration on the branch applies; the latest version number is what the CLI reports.
    const { listMigrations } = await import('../src/db/migrate.js');
    const latest = Math.max(...listMigrations().map((m) => m.version));
    expect(res.stdout).toMatch(new RegExp(`schema version ${latest}\\n`));
  });
});
