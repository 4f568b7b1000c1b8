import { randomBytes } from 'node:crypto';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runCli } from './helpers/cli.js';
import { startRecordingProxy, type RecordingProxy } from './helpers/proxy.js';
import { ADMIN_TOKEN, get, startTestServer, type TestServer } from './helpers/server.js';
import { distLine, put, removeTempDirs, sha512, shard, tempDir } from './helpers/trees.js';

afterAll(removeTempDirs);

async function apiGet(server: TestServer, p: string): Promise<{ status: number; json: any }> {
  const res = await request(`${server.baseUrl}/api/v1${p}`, { headers: { authorization: `Bearer ${ADMIN_TOKEN}` } });
  return { status: res.statusCode, json: await res.body.json() };
}

/** A loopback port nothing listens on: connections to it are refused at once. */
async function closedPort(): Promise<number> {
  const server = http.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

const count = (proxy: RecordingProxy, method: string, pathPart = '') =>
  proxy.seen.filter((r) => r.method === method && r.path.includes(pathPart)).length;

describe('fastpull push', () => {
  let server: TestServer;
  let proxy: RecordingProxy;
  beforeAll(async () => {
    server = await startTestServer();
    proxy = await startRecordingProxy(server.baseUrl);
  });
  afterAll(async () => {
    await proxy?.close();
    server?.app.server.closeAllConnections();
    await server?.stop();
  });

  it('links names to bytes the origin already has and uploads only the rest', async () => {
    const shared = randomBytes(100_000);
    expect((await server.upload('shared-1.0.tar.gz', shared)).status).toBe(201);
    const dir = await tempDir('push');
    const newA = randomBytes(300_000);
    const newB = randomBytes(1234);
    const files = [
      await put(dir, 'shared-copy-1.0.tar.gz', shared),
      await put(dir, 'new-a-1.tar.gz', newA),
      await put(dir, 'libsigc++-2.10.8.tar.xz', newB),
    ];
    proxy.seen.length = 0;
    const res = await runCli(['push', '--origin', proxy.url, ...files], { FASTPULL_TOKEN: ADMIN_TOKEN });
    expect(res.code, res.stdout + res.stderr).toBe(0);
    expect(res.stdout).toMatch(/uploaded:\s+2/);
    expect(res.stdout).toMatch(/linked \(origin had the bytes\):\s+1/);
    expect(res.stdout).toMatch(/failed:\s+0/);

    // Seen from the wire: one HEAD per file, a link for the shared bytes, a PUT only for the new ones.
    expect(count(proxy, 'HEAD', `/distfiles/${shard(sha512(shared))}/${sha512(shared)}`)).toBe(1);
    expect(count(proxy, 'HEAD')).toBe(3);
    expect(count(proxy, 'POST', '/api/v1/links')).toBe(1);
    expect(count(proxy, 'PUT')).toBe(2);
    expect(count(proxy, 'PUT', 'shared-copy')).toBe(0);
    expect(count(proxy, 'PUT', '/api/v1/distfiles/new-a-1.tar.gz?size=300000&sha512=')).toBe(1);
    expect(count(proxy, 'PUT', '/api/v1/distfiles/libsigc%2B%2B-2.10.8.tar.xz?')).toBe(1);
    expect(proxy.seen.filter((r) => r.method === 'PUT').map((r) => r.status)).toEqual([201, 201]);

    // Seen from the origin: the copy's name points at the blob uploaded earlier under another name.
    const copy = await apiGet(server, '/distfiles/shared-copy-1.0.tar.gz');
    expect(copy.status).toBe(200);
    expect(copy.json.current.sha512).toBe(sha512(shared));
    const blob = await apiGet(server, `/blobs/${sha512(shared)}`);
    expect(blob.json.names.map((n: any) => n.filename).sort()).toEqual(['shared-1.0.tar.gz', 'shared-copy-1.0.tar.gz']);
    for (const [name, body] of [
      ['new-a-1.tar.gz', newA],
      ['libsigc%2B%2B-2.10.8.tar.xz', newB],
      ['shared-copy-1.0.tar.gz', shared],
    ] as const) {
      const served = await get(`${server.baseUrl}/distfiles/${name}`);
      expect(served.status, name).toBe(200);
      expect(served.body.equals(body)).toBe(true);
    }

    // Pushing the same files again sends no bytes at all.
    proxy.seen.length = 0;
    const again = await runCli(['push', ...files], { FASTPULL_TOKEN: ADMIN_TOKEN, FASTPULL_ORIGIN: proxy.url });
    expect(again.code, again.stderr).toBe(0);
    expect(again.stdout).toMatch(/uploaded:\s+0/);
    expect(again.stdout).toMatch(/linked \(origin had the bytes\):\s+3/);
    expect(count(proxy, 'PUT')).toBe(0);
    expect(count(proxy, 'POST')).toBe(3);
  });

  it('retries 5xx answers with backoff and then succeeds', async () => {
    const dir = await tempDir('push-retry');
    const body = randomBytes(50_000);
    const file = await put(dir, 'flaky-1.tar.gz', body);
    proxy.seen.length = 0;
    proxy.failNext('HEAD', 1, 502);
    proxy.failNext('PUT', 2, 503);
    const res = await runCli(['push', '--origin', proxy.url, '--retry-delay-ms', '10', file], { FASTPULL_TOKEN: ADMIN_TOKEN });
    expect(res.code, res.stdout + res.stderr).toBe(0);
    expect(res.stderr).toMatch(/retry 1: HEAD [0-9a-f]{16}…: HTTP 502/);
    expect(res.stderr).toMatch(/retry 2: upload flaky-1\.tar\.gz: HTTP 503/);
    expect(proxy.seen.filter((r) => r.method === 'PUT').map((r) => r.status)).toEqual([503, 503, 201]);
    const served = await get(`${server.baseUrl}/distfiles/flaky-1.tar.gz`);
    expect(served.body.equals(body)).toBe(true);
  });

  it('does not retry a 4xx, keeps going with the other files, and exits non-zero', async () => {
    const dir = await tempDir('push-fail');
    const good = await put(dir, 'good-1.tar.gz', randomBytes(1000));
    const missing = path.join(dir, 'no-such-file.tar.gz');
    proxy.seen.length = 0;
    const wrongToken = await runCli(['push', '--origin', proxy.url, '--retry-delay-ms', '10', good], {
      FASTPULL_TOKEN: 'not-the-token',
    });
    expect(wrongToken.code).toBe(1);
    expect(wrongToken.stdout).toMatch(/failed:\s+1/);
    expect(wrongToken.stdout).toMatch(/good-1\.tar\.gz: upload good-1\.tar\.gz: HTTP 403/);
    expect(count(proxy, 'PUT')).toBe(1);

    const mixed = await runCli(['push', '--origin', proxy.url, missing, good], { FASTPULL_TOKEN: ADMIN_TOKEN });
    expect(mixed.code).toBe(1);
    expect(mixed.stdout).toMatch(/uploaded:\s+1/);
    expect(mixed.stdout).toMatch(/no-such-file\.tar\.gz: ENOENT/);
    expect((await get(`${server.baseUrl}/distfiles/good-1.tar.gz`)).status).toBe(200);
  });

  it('gives up on an unreachable origin after its retries', async () => {
    const dir = await tempDir('push-down');
    const file = await put(dir, 'lonely-1.tar.gz', 'x');
    const origin = `http://127.0.0.1:${await closedPort()}`;
    const res = await runCli(['push', '--origin', origin, '--retries', '2', '--retry-delay-ms', '10', file], {
      FASTPULL_TOKEN: ADMIN_TOKEN,
    });
    expect(res.code).toBe(1);
    expect(res.stdout).toMatch(/ECONNREFUSED \(gave up after 3 attempts\)/);
    expect(res.stderr.match(/retry \d: HEAD/g)).toHaveLength(2);
  });

  it('refuses to run without a token or origin', async () => {
    const noToken = await runCli(['push', '--origin', proxy.url, '/dev/null']);
    expect(noToken.code).toBe(2);
    expect(noToken.stderr).toMatch(/no token/);
    const noOrigin = await runCli(['push', '/dev/null'], { FASTPULL_TOKEN: ADMIN_TOKEN });
    expect(noOrigin.code).toBe(2);
    expect(noOrigin.stderr).toMatch(/no origin/);
  });
});

describe('fastpull coverage', () => {
  let server: TestServer;
  beforeAll(async () => {
    server = await startTestServer();
  });
  afterAll(async () => {
    server?.app.server.closeAllConnections();
    await server?.stop();
  });

  it('lists the Manifest entries the origin lacks and exits 1, or exits 0 when nothing is missing', async () => {
    const have = randomBytes(2000);
    const alsoHave = Buffer.from('hello\n');
    expect((await server.upload('have-1.tar.gz', have)).status).toBe(201);
    expect((await server.upload('foo-1.0.tar.gz', alsoHave)).status).toBe(201);
    const lacking = randomBytes(10);
    const dir = await tempDir('coverage');
    const complete = await put(dir, 'Manifest.complete', [distLine('have-1.tar.gz', have), distLine('renamed.tar.gz', alsoHave), ''].join('\n'));
    const partial = await put(
      dir,
      'Manifest.partial',
      [
        'EBUILD x-1.ebuild 10 BLAKE2B 00 SHA512 00',
        distLine('have-1.tar.gz', have),
        distLine('lacking-1.tar.gz', lacking),
        distLine('truncated-1.tar.gz', alsoHave, { size: 99 }),
        '',
      ].join('\n'),
    );

    const ok = await runCli(['coverage', '--origin', server.baseUrl, complete]);
    expect(ok.code, ok.stderr).toBe(0);
    expect(ok.stdout).toBe('');
    expect(ok.stderr).toMatch(/2 of 2 DIST entries present/);

    const res = await runCli(['coverage', '--origin', server.baseUrl, partial, complete]);
    expect(res.code, res.stderr).toBe(1);
    expect(res.stdout.trim().split('\n')).toEqual([
      `MISSING lacking-1.tar.gz 10 ${sha512(lacking)}`,
      `WRONG-SIZE truncated-1.tar.gz 99 ${sha512(alsoHave)} (origin has 6 bytes)`,
    ]);
    expect(res.stderr).toMatch(/2 of 4 DIST entries present/);
  });

  it('exits 2 when the origin cannot be asked', async () => {
    const dir = await tempDir('coverage-down');
    const manifest = await put(dir, 'Manifest', `${distLine('a.tar.gz', 'a')}\n`);
    const res = await runCli(['coverage', '--origin', `http://127.0.0.1:${await closedPort()}`, '--retries', '0', manifest]);
    expect(res.code).toBe(2);
    expect(res.stderr).toMatch(/could not be checked/);
  });
});
