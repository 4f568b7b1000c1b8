import { createHash } from 'node:crypto';
import { mkdir, rm, stat, writeFile } from 'node:fs/promises';
import { connect } from 'node:net';
import path from 'node:path';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { scratchDir } from './helpers/backend.js';
import { runCli } from './helpers/cli.js';
import { startServeProcess } from './helpers/serve-process.js';
import { ADMIN_TOKEN, get, makeDataDir, startTestServer, type TestServer } from './helpers/server.js';

const sha512 = (b: Buffer | string) => createHash('sha512').update(b).digest('hex');

async function readyz(base: string) {
  const res = await get(`${base}/readyz`);
  return { status: res.status, json: JSON.parse(res.body.toString()), headers: res.headers };
}

describe('healthz and readyz', () => {
  let server: TestServer;
  beforeAll(async () => {
    server = await startTestServer({ minFreeBytes: 1 });
    expect((await server.upload('foo-1.0.tar.gz', 'hello\n')).status).toBe(201);
  });
  afterAll(async () => server.stop());

  it('healthz answers 200 while the process runs', async () => {
    const res = await get(`${server.baseUrl}/healthz`);
    expect(res.status).toBe(200);
    expect(JSON.parse(res.body.toString())).toEqual({ status: 'ok' });
    expect(res.headers['cache-control']).toBe('no-store');
  });

  it('readyz answers 200 with every check passing', async () => {
    const r = await readyz(server.baseUrl);
    expect(r.status).toBe(200);
    expect(r.json.status).toBe('ready');
    expect(r.json.failing).toEqual([]);
    expect(Object.keys(r.json.checks).sort()).toEqual(['database', 'disk', 'drain', 'events', 'shutdown', 'writable']);
    // Event delivery is reported, never a reason to drain.
    expect(r.json.checks.events).toEqual({ ok: true, detail: 'no event targets configured' });
    expect(r.headers['cache-control']).toBe('no-store');
  });

  it('a drain file makes readyz 503 while downloads keep answering 200', async () => {
    const drain = path.join(server.dataDir, 'drain');
    await writeFile(drain, '');
    try {
      const r = await readyz(server.baseUrl);
      expect(r.status).toBe(503);
      expect(r.json.failing).toEqual(['drain']);
      // The probe answer is public: no filesystem paths in it.
      expect(JSON.stringify(r.json)).not.toContain(server.dataDir);
      const dl = await get(`${server.baseUrl}/distfiles/foo-1.0.tar.gz`);
      expect(dl.status).toBe(200);
      expect(dl.body.toString()).toBe('hello\n');
      expect((await get(`${server.baseUrl}/healthz`)).status).toBe(200);
    } finally {
      await rm(drain, { force: true });
    }
    expect((await readyz(server.baseUrl)).status).toBe(200);
  });

  it('fastpull drain and drain --off toggle readyz of a running server on the same data dir', async () => {
    const on = await runCli(['drain'], { FASTPULL_DATA_DIR: server.dataDir });
    expect(on.code, on.stderr).toBe(0);
    expect(on.stdout).toContain(path.join(server.dataDir, 'drain'));
    const r = await readyz(server.baseUrl);
    expect(r.status).toBe(503);
    expect(r.json.failing).toEqual(['drain']);
    expect((await get(`${server.baseUrl}/${sha512('hello\n')}`)).status).toBe(200);

    const off = await runCli(['drain', '--off'], { FASTPULL_DATA_DIR: server.dataDir });
    expect(off.code, off.stderr).toBe(0);
    await expect(stat(path.join(server.dataDir, 'drain'))).rejects.toThrow();
    expect((await readyz(server.baseUrl)).status).toBe(200);
  });

  it('fails the writable check when uploads could not land in the data dir', async () => {
    // Root ignores permission bits, so make the temp (s3: spool) dir impossible to write by replacing it with a file.
    const tmp = scratchDir(server);
    await rm(tmp, { recursive: true });
    await writeFile(tmp, 'not a directory');
    try {
      const r = await readyz(server.baseUrl);
      expect(r.status).toBe(503);
      expect(r.json.failing).toEqual(['writable']);
      expect(r.json.checks.writable.detail).toMatch(/ENOTDIR/);
    } finally {
      await rm(tmp);
      await mkdir(tmp);
    }
    expect((await readyz(server.baseUrl)).status).toBe(200);
  });
});

describe('readyz failures that need their own server', () => {
  it('fails the disk check below the free-space threshold', async () => {
    const server = await startTestServer({ minFreeBytes: Number.MAX_SAFE_INTEGER });
    try {
      const r = await readyz(server.baseUrl);
      expect(r.status).toBe(503);
      expect(r.json.failing).toEqual(['disk']);
      expect(r.json.checks.disk.detail).toMatch(/bytes free/);
    } finally {
      await server.stop();
    }
  });

  it('honours FASTPULL_DRAIN_FILE in the server and in the CLI', async () => {
    const elsewhere = await makeDataDir();
    const drainFile = path.join(elsewhere, 'lb', 'drain-me');
    const server = await startTestServer({ minFreeBytes: 1, drainFile });
    try {
      const on = await runCli(['drain'], { FASTPULL_DATA_DIR: server.dataDir, FASTPULL_DRAIN_FILE: drainFile });
      expect(on.code, on.stderr).toBe(0);
      await stat(drainFile);
      expect((await readyz(server.baseUrl)).status).toBe(503);
      await runCli(['drain', '--off'], { FASTPULL_DATA_DIR: server.dataDir, FASTPULL_DRAIN_FILE: drainFile });
      expect((await readyz(server.baseUrl)).status).toBe(200);
    } finally {
      await server.stop();
      await rm(elsewhere, { recursive: true, force: true });
    }
  });

  it('fails once shutdown has begun, so a balancer stops sending traffic while downloads finish', async () => {
    const server = await startTestServer({ minFreeBytes: 1 });
    try {
      server.readiness.shuttingDown = true;
      const r = await readyz(server.baseUrl);
      expect(r.status).toBe(503);
      expect(r.json.failing).toEqual(['shutdown']);
    } finally {
      await server.stop();
    }
  });

  it('fails the database check when the database does not answer', async () => {
    const server = await startTestServer({ minFreeBytes: 1 });
    try {
      await server.originIndex.close();
      const r = await readyz(server.baseUrl);
      expect(r.status).toBe(503);
      expect(r.json.failing).toEqual(['database']);
      expect(r.json.checks.database.detail).toBe('the database did not answer a query');
    } finally {
      await server.stop();
    }
  });
});

/** Sends headers announcing a body and waits for the answer without sending a single body byte. */
function putWithoutBody(base: string, pathname: string, headers: Record<string, string>): Promise<string> {
  const { hostname, port } = new URL(base);
  return new Promise((resolve, reject) => {
    const socket = connect(Number(port), hostname);
    let data = '';
    socket.on('data', (d) => {
      data += d.toString();
      if (data.includes('\r\n\r\n') && /\}\s*$/.test(data)) {
        socket.destroy();
        resolve(data);
      }
    });
    socket.on('error', reject);
    socket.on('close', () => resolve(data));
    const lines = [`PUT ${pathname} HTTP/1.1`, `Host: ${hostname}:${port}`, ...Object.entries(headers).map(([k, v]) => `${k}: ${v}`)];
    socket.write(`${lines.join('\r\n')}\r\n\r\n`);
  });
}

describe('read-only mode', () => {
  let server: TestServer;
  beforeAll(async () => {
    const dataDir = await makeDataDir();
    // Put a file in first, then reopen the same data dir read-only.
    const writer = await startTestServer({ dataDir });
    expect((await writer.upload('foo-1.0.tar.gz', 'hello\n')).status).toBe(201);
    await writer.stop();
    server = await startTestServer({ dataDir, readOnly: true, minFreeBytes: 1 });
  });
  afterAll(async () => {
    await server.stop();
    await rm(server.dataDir, { recursive: true, force: true });
  });

  it('refuses every write endpoint with READ_ONLY before reading the body', async () => {
    const auth = { authorization: `Bearer ${ADMIN_TOKEN}` };
    // 4 GiB announced, nothing sent: an answer can only come from a check made before the body.
    const raw = await putWithoutBody(server.baseUrl, '/api/v1/distfiles/huge.tar.gz', {
      ...auth,
      'content-length': String(4 * 1024 ** 3),
    });
    expect(raw).toMatch(/^HTTP\/1\.1 503 /);
    expect(raw).toMatch(/"error":"READ_ONLY"/);

    const attempts = [
      { method: 'PUT' as const, path: '/api/v1/distfiles/new-1.0.tar.gz', body: 'x' },
      { method: 'PUT' as const, path: `/api/v1/blobs/${sha512('x')}`, body: 'x' },
      { method: 'POST' as const, path: '/api/v1/links', body: JSON.stringify({ filename: 'a', sha512: sha512('hello\n') }) },
      { method: 'DELETE' as const, path: '/api/v1/distfiles/foo-1.0.tar.gz' },
    ];
    for (const a of attempts) {
      for (const headers of [auth, {}]) {
        const res = await request(`${server.baseUrl}${a.path}`, {
          method: a.method,
          headers: { ...headers, ...(a.method === 'POST' ? { 'content-type': 'application/json' } : {}) },
          ...(a.body !== undefined ? { body: a.body } : {}),
        });
        const json = (await res.body.json()) as any;
        expect(res.statusCode, `${a.method} ${a.path}`).toBe(503);
        expect(json.error).toBe('READ_ONLY');
        expect(json.message).toMatch(/read-only mode/);
      }
    }
  });

  it('keeps serving downloads and the read API', async () => {
    const dl = await get(`${server.baseUrl}/distfiles/foo-1.0.tar.gz`);
    expect(dl.status).toBe(200);
    expect(dl.body.toString()).toBe('hello\n');
    const info = await get(`${server.baseUrl}/api/v1/distfiles/foo-1.0.tar.gz`, { authorization: `Bearer ${ADMIN_TOKEN}` });
    expect(info.status).toBe(200);
    expect(JSON.parse(info.body.toString()).current.sha512).toBe(sha512('hello\n'));
    // The name is still attached: the refused DELETE above changed nothing.
    expect(JSON.parse(info.body.toString()).history[0].detachedAt).toBeNull();
    expect((await readyz(server.baseUrl)).status).toBe(200);
  });

  it('fastpull serve --read-only turns it on from the command line', async () => {
    const proc = await startServeProcess(
      { FASTPULL_DATA_DIR: server.dataDir, FASTPULL_ADMIN_TOKEN: ADMIN_TOKEN },
      ['--read-only'],
    );
    try {
      const res = await request(`${proc.baseUrl}/api/v1/distfiles/new-1.0.tar.gz`, {
        method: 'PUT',
        body: 'x',
        headers: { authorization: `Bearer ${ADMIN_TOKEN}` },
      });
      expect(res.statusCode).toBe(503);
      expect(((await res.body.json()) as any).error).toBe('READ_ONLY');
      expect((await get(`${proc.baseUrl}/distfiles/foo-1.0.tar.gz`)).status).toBe(200);
    } finally {
      proc.child.kill('SIGTERM');
      expect(await proc.exited).toBe(0);
    }
  });
});
