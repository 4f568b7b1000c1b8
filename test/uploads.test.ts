import { spawn, spawnSync } from 'node:child_process';
import { mkdir, mkdtemp, rm, utimes, writeFile } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { request } from 'undici';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { blobSize, damageBlob, indexCounts, scratchDir, storedBlobs, TEST_BACKEND, unfinishedWrites } from './helpers/backend.js';
import { AUTH, blake2b, errorBody, filesUnder, pseudoRandomBytes, rawRequest, sha256, sha512 } from './helpers/core.js';
import { ADMIN_TOKEN, get, makeDataDir, startTestServer, type TestServer } from './helpers/server.js';
import { skipOrFail } from './helpers/tools.js';

const api = (server: TestServer, p: string) => `${server.baseUrl}/api/v1${p}`;

async function call(
  server: TestServer,
  method: 'GET' | 'PUT' | 'POST' | 'DELETE',
  p: string,
  body?: string | Buffer | AsyncIterable<Buffer>,
  headers: Record<string, string> = AUTH,
) {
  const payload = body === undefined || typeof body === 'string' || Buffer.isBuffer(body) ? body : Readable.from(body);
  const res = await request(api(server, p), { method, headers, ...(payload !== undefined ? { body: payload } : {}) });
  const text = await res.body.text();
  return { status: res.statusCode, headers: res.headers, json: text ? JSON.parse(text) : undefined };
}

/** Nothing of a refused upload may remain: no blob file, no temp file, no index row. */
async function expectNothingStored(server: TestServer) {
  expect(await storedBlobs(server)).toEqual([]);
  expect(await unfinishedWrites(server)).toEqual([]);
  expect((await indexCounts(server))).toEqual({ blobs: 0, names: 0 });
}

/** Waits (bounded) for a condition the server reaches asynchronously, e.g. after a client hung up. */
async function eventually(check: () => Promise<boolean>, what: string, tries = 200) {
  for (let i = 0; i < tries; i++) {
    if (await check()) return;
    await new Promise((r) => setTimeout(r, 25));
  }
  throw new Error(`never happened: ${what}`);
}

async function* chunksOf(data: Buffer, size = 16 * 1024): AsyncGenerator<Buffer> {
  for (let off = 0; off < data.length; off += size) yield data.subarray(off, off + size);
}

describe('PUT /api/v1/distfiles/{filename}', () => {
  let server: TestServer;
  beforeEach(async () => {
    server = await startTestServer();
    return () => server.stop();
  });

  it('answers 201 for a new blob and 200 for the same bytes again, attaching the name both times', async () => {
    const data = pseudoRandomBytes(5000);
    const first = await server.upload('pkg-1.0.tar.gz', data);
    expect(first.status).toBe(201);
    const h = sha512(data);
    expect(first.json).toEqual({
      filename: 'pkg-1.0.tar.gz',
      size: 5000,
      sha512: h,
      blake2b: blake2b(data),
      sha256: sha256(data),
      urls: {
        contentHash: `/distfiles/${h.slice(0, 2)}/${h.slice(2, 4)}/${h.slice(4, 6)}/${h}`,
        direct: `/${h.slice(0, 2)}/${h.slice(2, 4)}/${h.slice(4, 6)}/${h}`,
        hash: `/distfiles/${h}`,
        filenameHash: expect.stringMatching(/^\/distfiles\/[0-9a-f]{2}\/pkg-1\.0\.tar\.gz$/),
        flat: '/distfiles/pkg-1.0.tar.gz',
      },
    });

    const again = await server.upload('pkg-1.0-copy.tar.gz', data);
    expect(again.status).toBe(200);
    expect(again.json.sha512).toBe(h);
    expect((await get(server.baseUrl + '/distfiles/pkg-1.0-copy.tar.gz')).body.equals(data)).toBe(true);
    expect(await storedBlobs(server)).toEqual([
      path.join(h.slice(0, 2), h.slice(2, 4), h.slice(4, 6), h),
    ]);
    expect((await indexCounts(server))).toEqual({ blobs: 1, names: 2 });
  });

  it('accepts declared size, sha512 and blake2b that match (upper-case hex as in some Manifests)', async () => {
    const data = Buffer.from('declared correctly');
    const res = await server.upload('ok-1.0.tar.gz', data, {
      size: String(data.length),
      sha512: sha512(data).toUpperCase(),
      blake2b: blake2b(data),
    });
    expect(res.status).toBe(201);
  });

  const wrong = sha512('something else');
  const cases: [string, Record<string, string>, string][] = [
    ['sha512', { sha512: wrong }, 'sha512'],
    ['blake2b', { blake2b: blake2b('something else') }, 'blake2b'],
    ['size (smaller than the body)', { size: '3' }, 'size'],
    ['size (larger than the body)', { size: '999999' }, 'size'],
  ];
  for (const [what, query, field] of cases) {
    it(`refuses a ${what} mismatch with 422 DIGEST_MISMATCH and leaves nothing`, async () => {
      const data = pseudoRandomBytes(70_000, 5);
      const res = await server.upload('mismatch-1.0.tar.gz', data, query);
      expect(res.status).toBe(422);
      expect(res.json.error).toBe('DIGEST_MISMATCH');
      expect(typeof res.json.message).toBe('string');
      const m = res.json.mismatches.find((x: any) => x.field === field);
      expect(m).toBeDefined();
      expect(m.expected).toBe(field === 'size' ? Number(query.size) : query[field]);
      if (field !== 'size') expect(m.actual).toBe(field === 'sha512' ? sha512(data) : blake2b(data));
      await expectNothingStored(server);
    });
  }

  it('refuses a size mismatch found only while streaming (no Content-Length)', async () => {
    const data = pseudoRandomBytes(200_000, 6);
    for (const size of ['100', '300000']) {
      const res = await call(server, 'PUT', `/distfiles/chunked.tar.gz?size=${size}`, chunksOf(data));
      expect(res.status, size).toBe(422);
      expect(res.json.error).toBe('DIGEST_MISMATCH');
      expect(res.json.mismatches[0].field).toBe('size');
    }
    await expectNothingStored(server);
  });

  it('lets two concurrent uploads of the same bytes both succeed, leaving one blob', async () => {
    const data = pseudoRandomBytes(3 * 1024 * 1024, 9);
    const results = await Promise.all(
      ['same-a.tar.gz', 'same-b.tar.gz', 'same-c.tar.gz', 'same-a.tar.gz'].map((n) =>
        call(server, 'PUT', `/distfiles/${n}`, chunksOf(data, 64 * 1024)),
      ),
    );
    for (const r of results) {
      expect([200, 201]).toContain(r.status);
      expect(r.json.sha512).toBe(sha512(data));
    }
    expect(results.filter((r) => r.status === 201)).toHaveLength(1);
    const h = sha512(data);
    expect(await storedBlobs(server)).toEqual([
      path.join(h.slice(0, 2), h.slice(2, 4), h.slice(4, 6), h),
    ]);
    expect(await unfinishedWrites(server)).toEqual([]);
    expect((await indexCounts(server))).toEqual({ blobs: 1, names: 3 });
    for (const n of ['same-a.tar.gz', 'same-b.tar.gz', 'same-c.tar.gz']) {
      expect((await get(`${server.baseUrl}/distfiles/${n}`)).body.equals(data)).toBe(true);
    }
  });

  const badNames: [string, string][] = [
    ['a slash', 'a%2Fb.tar.gz'],
    ['a backslash', 'a%5Cb.tar.gz'],
    ['NUL', 'a%00b.tar.gz'],
    ['..', '..'],
    ['encoded ..', '%2e%2e'],
    ['.. inside', 'a..%2F..b'],
    ['a newline', 'a%0Ab.tar.gz'],
    ['a tab', 'a%09b.tar.gz'],
    ['DEL', 'a%7Fb.tar.gz'],
    ['256 bytes', 'x'.repeat(256)],
    ['256 bytes of UTF-8', '%C3%A9'.repeat(128)],
    ['a lone surrogate', '%ED%A0%80.tar.gz'],
  ];
  for (const [what, encoded] of badNames) {
    it(`refuses a filename with ${what} (400, nothing stored)`, async () => {
      const res = await rawRequest(server.baseUrl, `/api/v1/distfiles/${encoded}`, {
        method: 'PUT',
        headers: AUTH,
        body: 'payload',
      });
      expect(res.status).toBe(400);
      expect(['BAD_FILENAME', 'BAD_REQUEST']).toContain(errorBody(res.body).error);
      await expectNothingStored(server);
    });
  }

  it('says BAD_FILENAME precisely for a name the router can decode', async () => {
    for (const encoded of ['a%2Fb', 'a%00b', '%2e%2e', 'a%0Ab', 'x'.repeat(256)]) {
      const res = await rawRequest(server.baseUrl, `/api/v1/distfiles/${encoded}`, {
        method: 'PUT',
        headers: AUTH,
        body: 'payload',
      });
      expect(errorBody(res.body).error, encoded).toBe('BAD_FILENAME');
    }
  });

  it('takes a raw + in the upload path as a plus', async () => {
    const res = await rawRequest(server.baseUrl, '/api/v1/distfiles/c++-1.0.tar.gz', { method: 'PUT', headers: AUTH, body: 'cpp' });
    expect(res.status).toBe(201);
    expect(JSON.parse(res.body.toString()).filename).toBe('c++-1.0.tar.gz');
    expect((await get(`${server.baseUrl}/distfiles/c%2B%2B-1.0.tar.gz`)).body.toString()).toBe('cpp');
  });

  it('accepts a 255-byte name', async () => {
    const res = await server.upload('y'.repeat(255), 'long name');
    expect(res.status).toBe(201);
  });

  it('refuses malformed declared hashes and sizes with 400', async () => {
    for (const [query, code] of [
      [{ sha512: 'abc' }, 'BAD_HASH'],
      [{ sha512: 'g'.repeat(128) }, 'BAD_HASH'],
      [{ blake2b: '0'.repeat(127) }, 'BAD_HASH'],
      [{ size: '-1' }, 'BAD_REQUEST'],
      [{ size: 'ten' }, 'BAD_REQUEST'],
    ] as [Record<string, string>, string][]) {
      const res = await server.upload('q.tar.gz', 'x', query);
      expect(res.status, JSON.stringify(query)).toBe(400);
      expect(res.json.error).toBe(code);
    }
    await expectNothingStored(server);
  });

  it('refuses a repeated query parameter with 400, not a 500', async () => {
    const h = sha512('x');
    for (const qs of [`sha512=${h}&sha512=${h}`, `blake2b=${blake2b('x')}&blake2b=${blake2b('x')}`, 'size=1&size=1']) {
      for (const p of [`/api/v1/distfiles/dup.tar.gz?${qs}`, `/api/v1/blobs/${h}?${qs}`]) {
        const res = await rawRequest(server.baseUrl, p, { method: 'PUT', headers: AUTH, body: 'x' });
        expect(res.status, p).toBe(400);
        expect(errorBody(res.body).error, p).toBe('BAD_QUERY');
      }
    }
    await expectNothingStored(server);
  });

  it('answers 401 without a token and 403 with a wrong one, storing nothing', async () => {
    const none = await call(server, 'PUT', '/distfiles/x.tar.gz', 'data', {});
    expect(none.status).toBe(401);
    expect(none.json.error).toBe('UNAUTHORIZED');
    expect(none.headers['www-authenticate']).toBe('Bearer');
    const basic = await call(server, 'PUT', '/distfiles/x.tar.gz', 'data', { authorization: 'Basic Zm9vOmJhcg==' });
    expect(basic.status).toBe(401);
    const wrong = await call(server, 'PUT', '/distfiles/x.tar.gz', 'data', { authorization: 'Bearer not-the-token' });
    expect(wrong.status).toBe(403);
    expect(wrong.json.error).toBe('FORBIDDEN');
    for (const [method, p] of [
      ['GET', '/distfiles/x.tar.gz'],
      ['DELETE', '/distfiles/x.tar.gz'],
      ['GET', `/blobs/${sha512('x')}`],
      ['PUT', `/blobs/${sha512('data')}`],
    ] as const) {
      expect((await call(server, method, p, method === 'PUT' ? 'data' : undefined, {})).status, p).toBe(401);
      expect(
        (await call(server, method, p, method === 'PUT' ? 'data' : undefined, { authorization: 'Bearer nope' })).status,
        p,
      ).toBe(403);
    }
    const link = await request(api(server, '/links'), {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ filename: 'x', sha512: sha512('x') }),
    });
    expect(link.statusCode).toBe(401);
    await link.body.dump();
    await expectNothingStored(server);
  });
});

describe('blobs, links, history', () => {
  let server: TestServer;
  beforeEach(async () => {
    server = await startTestServer();
    return () => server.stop();
  });

  it('PUT /api/v1/blobs/{sha512} stores a good body (pinned, no name) and refuses a bad one', async () => {
    const data = pseudoRandomBytes(10_000, 11);
    const h = sha512(data);
    const bad = await call(server, 'PUT', `/blobs/${h}`, Buffer.concat([data, Buffer.from('x')]));
    expect(bad.status).toBe(422);
    expect(bad.json.error).toBe('DIGEST_MISMATCH');
    expect(bad.json.mismatches.find((m: any) => m.field === 'sha512')).toMatchObject({ expected: h });
    await expectNothingStored(server);

    const good = await call(server, 'PUT', `/blobs/${h}`, data);
    expect(good.status).toBe(201);
    expect(good.json.filename).toBeUndefined();
    expect(good.json.urls.flat).toBeUndefined();
    expect(good.json.sha512).toBe(h);
    expect((await get(`${server.baseUrl}/${h.slice(0, 2)}/${h.slice(2, 4)}/${h.slice(4, 6)}/${h}`)).body.equals(data)).toBe(
      true,
    );
    expect((await call(server, 'PUT', `/blobs/${h}`, data)).status).toBe(200);
    expect((await indexCounts(server))).toEqual({ blobs: 1, names: 0 });
    const info = await call(server, 'GET', `/blobs/${h}`);
    expect(info.json.pinned).toBe(true);

    for (const p of [`/blobs/${h.toUpperCase()}`, `/blobs/${h.slice(1)}`, '/blobs/xyz']) {
      const res = await call(server, 'PUT', p, data);
      expect(res.status, p).toBe(400);
      expect(res.json.error).toBe('BAD_HASH');
    }
  });

  it('POST /api/v1/links attaches a name to a stored blob, 404 for an unknown one', async () => {
    const up = await server.upload('orig-1.0.tar.gz', 'linked bytes');
    const link = await call(
      server,
      'POST',
      '/links',
      JSON.stringify({ filename: 'alias-1.0.tar.gz', sha512: up.json.sha512 }),
      { ...AUTH, 'content-type': 'application/json' },
    );
    expect(link.status).toBe(200);
    expect(link.json).toMatchObject({ filename: 'alias-1.0.tar.gz', sha512: up.json.sha512, size: 12 });
    expect(link.json.urls.flat).toBe('/distfiles/alias-1.0.tar.gz');
    expect((await get(`${server.baseUrl}/distfiles/alias-1.0.tar.gz`)).body.toString()).toBe('linked bytes');

    const before = (await indexCounts(server));
    const unknown = await call(
      server,
      'POST',
      '/links',
      JSON.stringify({ filename: 'ghost.tar.gz', sha512: sha512('never stored') }),
      { ...AUTH, 'content-type': 'application/json' },
    );
    expect(unknown.status).toBe(404);
    expect(unknown.json.error).toBe('BLOB_NOT_FOUND');
    expect(unknown.headers['cache-control']).toBe('no-store');

    for (const [body, code] of [
      [{ filename: 'x/y', sha512: up.json.sha512 }, 'BAD_FILENAME'],
      [{ filename: '..', sha512: up.json.sha512 }, 'BAD_FILENAME'],
      [{ filename: 'ok', sha512: 'abc' }, 'BAD_HASH'],
      [{ filename: 'ok' }, 'BAD_REQUEST'],
    ] as [object, string][]) {
      const res = await call(server, 'POST', '/links', JSON.stringify(body), { ...AUTH, 'content-type': 'application/json' });
      expect(res.status, JSON.stringify(body)).toBe(400);
      expect(res.json.error, JSON.stringify(body)).toBe(code);
    }
    const notJson = await call(server, 'POST', '/links', '{oops', { ...AUTH, 'content-type': 'application/json' });
    expect(notJson.status).toBe(400);
    expect(notJson.json.error).toBe('BAD_REQUEST');
    expect((await indexCounts(server))).toEqual(before);
  });

  it('keeps every hash a name has had; by name serves the newest; re-attaching makes an old one current', async () => {
    const v1 = await server.upload('kubectl-1.0.tar.gz', 'first roll');
    const v2 = await server.upload('kubectl-1.0.tar.gz', 'second roll');
    expect(v2.status).toBe(201);
    const flat = `${server.baseUrl}/distfiles/kubectl-1.0.tar.gz`;
    expect((await get(flat)).body.toString()).toBe('second roll');
    expect((await get(server.baseUrl + v2.json.urls.filenameHash)).body.toString()).toBe('second roll');
    // By hash is always exact.
    expect((await get(server.baseUrl + v1.json.urls.hash)).body.toString()).toBe('first roll');

    let hist = await call(server, 'GET', '/distfiles/kubectl-1.0.tar.gz');
    expect(hist.status).toBe(200);
    expect(hist.json.current.sha512).toBe(v2.json.sha512);
    expect(hist.json.history.map((r: any) => r.sha512)).toEqual([v2.json.sha512, v1.json.sha512]);
    expect(hist.json.history[0]).toMatchObject({ attachedBy: 'bootstrap', detachedAt: null });

    // Re-uploading the first bytes (dedup) or linking them makes them current again.
    const again = await server.upload('kubectl-1.0.tar.gz', 'first roll');
    expect(again.status).toBe(200);
    expect((await get(flat)).body.toString()).toBe('first roll');
    await call(server, 'POST', '/links', JSON.stringify({ filename: 'kubectl-1.0.tar.gz', sha512: v2.json.sha512 }), {
      ...AUTH,
      'content-type': 'application/json',
    });
    expect((await get(flat)).body.toString()).toBe('second roll');
    expect((await get(flat)).headers.etag).toBe(`"${v2.json.sha512}"`);
    hist = await call(server, 'GET', '/distfiles/kubectl-1.0.tar.gz');
    expect(hist.json.history.map((r: any) => r.sha512)).toEqual([v2.json.sha512, v1.json.sha512]);
    expect(hist.json.current.sha512).toBe(v2.json.sha512);

    expect((await call(server, 'GET', '/distfiles/never-seen.tar.gz')).json.error).toBe('NAME_NOT_FOUND');
  });

  it('shows nothing of an upload in progress: the name keeps serving the old bytes until the new ones are stored', async () => {
    await server.upload('moving-1.0.tar.gz', 'old bytes');
    const next = pseudoRandomBytes(512 * 1024, 41);
    let release: () => void = () => undefined;
    const gate = new Promise<void>((r) => (release = r));
    async function* slowBody() {
      yield next.subarray(0, 256 * 1024);
      await gate;
      yield next.subarray(256 * 1024);
    }
    const pending = call(server, 'PUT', '/distfiles/moving-1.0.tar.gz', slowBody());
    await eventually(async () => (await unfinishedWrites(server)).length > 0, 'upload under way');
    const during = await get(`${server.baseUrl}/distfiles/moving-1.0.tar.gz`);
    expect(during.body.toString()).toBe('old bytes');
    expect((await get(`${server.baseUrl}/distfiles/${sha512(next)}`)).status).toBe(404);
    release();
    expect((await pending).status).toBe(201);
    expect((await get(`${server.baseUrl}/distfiles/moving-1.0.tar.gz`)).body.equals(next)).toBe(true);
  });

  it('GET /api/v1/blobs/{sha512} lists every name of a blob', async () => {
    const a = await server.upload('one.tar.gz', 'shared bytes');
    await server.upload('two.tar.gz', 'shared bytes');
    await server.upload('three.tar.gz', 'shared bytes');
    const info = await call(server, 'GET', `/blobs/${a.json.sha512}`);
    expect(info.status).toBe(200);
    expect(info.json).toMatchObject({ sha512: a.json.sha512, size: 12, blake2b: blake2b('shared bytes'), pinned: false });
    expect(info.json.names.map((n: any) => n.filename).sort()).toEqual(['one.tar.gz', 'three.tar.gz', 'two.tar.gz']);
    const missing = await call(server, 'GET', `/blobs/${sha512('nope')}`);
    expect(missing.status).toBe(404);
    expect(missing.json.error).toBe('BLOB_NOT_FOUND');
    expect((await call(server, 'GET', '/blobs/NOTAHASH')).json.error).toBe('BAD_HASH');
  });

  it('DELETE detaches a name: the name 404s, the blob is still served by hash', async () => {
    const up = await server.upload('gone-1.0.tar.gz', 'detach me');
    await server.upload('gone-1.0.tar.gz', 'detach me too');
    const del = await call(server, 'DELETE', '/distfiles/gone-1.0.tar.gz');
    expect(del.status).toBe(200);
    expect(del.json).toEqual({ filename: 'gone-1.0.tar.gz', detached: 2 });
    const byName = await get(`${server.baseUrl}/distfiles/gone-1.0.tar.gz`);
    expect(byName.status).toBe(404);
    expect((await get(server.baseUrl + up.json.urls.filenameHash)).status).toBe(404);
    expect((await get(server.baseUrl + up.json.urls.contentHash)).body.toString()).toBe('detach me');
    // Served by hash, a detached blob no longer suggests the detached name.
    expect((await get(server.baseUrl + up.json.urls.contentHash)).headers['content-disposition']).toBeUndefined();
    const hist = await call(server, 'GET', '/distfiles/gone-1.0.tar.gz');
    expect(hist.json.current).toBeNull();
    expect(hist.json.history).toHaveLength(2);
    for (const row of hist.json.history) expect(row.detachedAt).not.toBeNull();
    expect((await call(server, 'DELETE', '/distfiles/gone-1.0.tar.gz')).json.error).toBe('NAME_NOT_FOUND');
    const bad = await rawRequest(server.baseUrl, '/api/v1/distfiles/a%2Fb', { method: 'DELETE', headers: AUTH });
    expect(errorBody(bad.body).error).toBe('BAD_FILENAME');
    // Uploading again re-attaches.
    expect((await server.upload('gone-1.0.tar.gz', 'detach me')).status).toBe(200);
    expect((await get(`${server.baseUrl}/distfiles/gone-1.0.tar.gz`)).body.toString()).toBe('detach me');
  });
});

describe('limits and failures', () => {
  const LIMIT = 64 * 1024;
  let server: TestServer;
  beforeEach(async () => {
    server = await startTestServer({ maxUploadBytes: LIMIT });
    return () => server.stop();
  });

  it('refuses a body over FASTPULL_MAX_UPLOAD_BYTES with 413, with and without Content-Length', async () => {
    const atLimit = await server.upload('exact.bin', pseudoRandomBytes(LIMIT, 1));
    expect(atLimit.status).toBe(201);
    const before = (await indexCounts(server));
    const blobsBefore = await storedBlobs(server);

    const withLength = await server.upload('over.bin', pseudoRandomBytes(LIMIT + 1, 2));
    expect(withLength.status).toBe(413);
    expect(withLength.json).toMatchObject({ error: 'PAYLOAD_TOO_LARGE', limit: LIMIT });
    // Refused from the Content-Length alone, and the client still reads the answer.
    const farOver = await server.upload('far-over.bin', pseudoRandomBytes(8 * 1024 * 1024, 2));
    expect(farOver.status).toBe(413);

    const chunked = await call(server, 'PUT', '/distfiles/over-chunked.bin', chunksOf(pseudoRandomBytes(LIMIT * 4, 3), 8192));
    expect(chunked.status).toBe(413);
    expect(chunked.json.error).toBe('PAYLOAD_TOO_LARGE');

    const byHash = await call(server, 'PUT', `/blobs/${sha512('x')}`, chunksOf(pseudoRandomBytes(LIMIT * 2, 4)));
    expect(byHash.status).toBe(413);

    expect((await indexCounts(server))).toEqual(before);
    expect(await storedBlobs(server)).toEqual(blobsBefore);
    expect(await unfinishedWrites(server)).toEqual([]);
  });

  for (const framing of ['content-length', 'chunked'] as const) {
    it(`leaves nothing when the client hangs up mid-upload (${framing})`, async () => {
      const { port } = new URL(server.baseUrl);
      const socket = net.connect(Number(port), '127.0.0.1');
      await new Promise((r) => socket.once('connect', r));
      socket.on('error', () => undefined);
      const part = pseudoRandomBytes(16 * 1024, 8);
      socket.write(
        `PUT /api/v1/distfiles/half.tar.gz HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${ADMIN_TOKEN}\r\n` +
          (framing === 'chunked' ? 'Transfer-Encoding: chunked\r\n\r\n' : `Content-Length: ${LIMIT}\r\n\r\n`),
      );
      socket.write(framing === 'chunked' ? Buffer.concat([Buffer.from(`${part.length.toString(16)}\r\n`), part, Buffer.from('\r\n')]) : part);
      // Only hang up once the server is demonstrably writing the upload.
      await eventually(async () => (await unfinishedWrites(server)).length > 0, 'temp file appears');
      socket.destroy();
      await eventually(async () => (await unfinishedWrites(server)).length === 0, 'temp file removed');
      await expectNothingStored(server);
      // And the server is still healthy.
      expect((await server.upload('after.tar.gz', 'fine')).status).toBe(201);
    });
  }
});

describe('internal failures', () => {
  it('answers 500 INTERNAL without paths or errno details when the store cannot write', async () => {
    const server = await startTestServer();
    try {
      // A file where the temp (or spool) directory should be: every write fails with ENOTDIR.
      await rm(scratchDir(server), { recursive: true });
      await writeFile(scratchDir(server), 'not a directory');
      const res = await server.upload('doomed-1.0.tar.gz', 'bytes');
      expect(res.status).toBe(500);
      expect(res.json).toEqual({ error: 'INTERNAL', message: expect.any(String) });
      expect(JSON.stringify(res.json)).not.toMatch(/ENOTDIR|errno|\/tmp|fastpull-test|stack/i);
      expect(await storedBlobs(server)).toEqual([]);
      expect((await indexCounts(server))).toEqual({ blobs: 0, names: 0 });
    } finally {
      await server.stop();
    }
  });
});

describe('healing and disabled writes', () => {
  it('replaces a stored blob whose size on disk is damaged when the same bytes are uploaded again', async () => {
    const server = await startTestServer();
    try {
      const data = pseudoRandomBytes(50_000, 31);
      const up = await server.upload('heal-1.0.tar.gz', data);
      await damageBlob(server, up.json.sha512, data.subarray(0, 1000));
      expect((await get(server.baseUrl + up.json.urls.flat)).status).toBe(404);
      const again = await server.upload('heal-1.0.tar.gz', data);
      expect(again.status).toBe(201);
      const res = await get(server.baseUrl + up.json.urls.flat);
      expect(res.status).toBe(200);
      expect(res.body.equals(data)).toBe(true);
      expect(await unfinishedWrites(server)).toEqual([]);
    } finally {
      await server.stop();
    }
  });

  it('without FASTPULL_ADMIN_TOKEN refuses every write (403) and still serves downloads', async () => {
    const dataDir = await makeDataDir();
    const writer = await startTestServer({ dataDir });
    await writer.upload('served-1.0.tar.gz', 'still here');
    await writer.stop();
    const server = await startTestServer({ dataDir, adminToken: undefined });
    try {
      for (const headers of [{}, AUTH]) {
        const res = await call(server, 'PUT', '/distfiles/new.tar.gz', 'x', headers);
        expect(res.status).toBe(403);
        expect(res.json.error).toBe('FORBIDDEN');
        expect(res.json.message).toMatch(/disabled/);
      }
      expect((await get(`${server.baseUrl}/distfiles/served-1.0.tar.gz`)).body.toString()).toBe('still here');
      expect((await indexCounts(server))).toEqual({ blobs: 1, names: 1 });
    } finally {
      await server.stop();
      await rm(dataDir, { recursive: true, force: true });
    }
  });
});

// The local store's temp dir; the s3 driver's sweep of abandoned uploads is tested in replicas.test.ts.
describe.skipIf(TEST_BACKEND !== 'local')('start-up cleanup of crash leftovers', () => {
  it('removes temp files of dead processes and keeps those of live ones', async () => {
    const dataDir = await makeDataDir();
    const tmp = path.join(dataDir, 'tmp');
    await mkdir(tmp, { recursive: true });
    const dead = spawnSync(process.execPath, ['-e', '0']).pid!;
    const live = spawn('sleep', ['60'], { stdio: 'ignore' });
    try {
      await writeFile(path.join(tmp, `${dead}-x.tmp`), 'half an upload');
      await writeFile(path.join(tmp, `${live.pid}-y.tmp`), 'someone else is writing this');
      await writeFile(path.join(tmp, `${live.pid}-old.tmp`), 'abandoned long ago');
      const twoDaysAgo = new Date(Date.now() - 2 * 86400_000);
      await utimes(path.join(tmp, `${live.pid}-old.tmp`), twoDaysAgo, twoDaysAgo);
      const server = await startTestServer({ dataDir });
      try {
        expect(await filesUnder(tmp)).toEqual([`${live.pid}-y.tmp`]);
      } finally {
        await server.stop();
      }
    } finally {
      live.kill();
      await rm(dataDir, { recursive: true, force: true });
    }
  });
});

// A tmpfs data dir that fills up: the local store's disk (an object store has no such limit here).
describe.skipIf(TEST_BACKEND !== 'local')('disk full', () => {
  it('answers 507 INSUFFICIENT_STORAGE and leaves nothing when the data dir fills up', async (ctx) => {
    const mountPoint = await mkdtemp(path.join(tmpdir(), 'fastpull-tmpfs-'));
    const mounted = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=2m', 'tmpfs', mountPoint], { encoding: 'utf8' });
    if (mounted.status !== 0) {
      await rm(mountPoint, { recursive: true, force: true });
      skipOrFail(ctx, `cannot mount a small tmpfs here (needs root/CAP_SYS_ADMIN): ${mounted.stderr.trim()}`);
      return;
    }
    try {
      const server = await startTestServer({ dataDir: mountPoint });
      try {
        const res = await call(server, 'PUT', '/distfiles/huge.tar.gz', chunksOf(pseudoRandomBytes(3 * 1024 * 1024, 12), 64 * 1024));
        expect(res.status).toBe(507);
        expect(res.json.error).toBe('INSUFFICIENT_STORAGE');
        expect(JSON.stringify(res.json)).not.toMatch(/ENOSPC|\/tmp\//);
        await expectNothingStored(server);
        // The space was given back: a small upload still works.
        expect((await server.upload('small.tar.gz', 'fits')).status).toBe(201);
      } finally {
        await server.stop();
      }
    } finally {
      spawnSync('umount', [mountPoint]);
      await rm(mountPoint, { recursive: true, force: true });
    }
  });
});

describe('constant memory', () => {
  let server: TestServer;
  beforeAll(async () => {
    server = await startTestServer();
  });
  afterAll(async () => server.stop());

  it('streams a 256 MiB upload and download without growing RSS by more than tens of MB', async () => {
    const total = 256 * 1024 * 1024;
    const block = pseudoRandomBytes(1024 * 1024, 13);
    async function* body() {
      // A counter in each block keeps the stream from being one repeated MiB (and so from deduping trivially).
      for (let i = 0; i < total / block.length; i++) {
        block.writeUInt32BE(i, 0);
        yield block;
      }
    }
    const baseline = process.memoryUsage.rss();
    let peak = baseline;
    const sampler = setInterval(() => {
      peak = Math.max(peak, process.memoryUsage.rss());
    }, 10);
    try {
      const res = await call(server, 'PUT', '/distfiles/big-256m.bin', body());
      expect(res.status).toBe(201);
      expect(res.json.size).toBe(total);
    } finally {
      clearInterval(sampler);
    }
    const [stored] = await storedBlobs(server);
    expect(await blobSize(server, path.basename(stored!))).toBe(total);
    // A bound independent of the upload's size. S3 holds its multipart parts in memory while they are sent
    // (two 5 MiB parts at a time, plus the SDK's copies of them), so its bound is higher than the local store's.
    expect(peak - baseline).toBeLessThan((TEST_BACKEND === 'local' ? 64 : 112) * 1024 * 1024);

    // And back out again: the download streams from disk too.
    const downBase = process.memoryUsage.rss();
    let downPeak = downBase;
    const downSampler = setInterval(() => {
      downPeak = Math.max(downPeak, process.memoryUsage.rss());
    }, 10);
    let received = 0;
    try {
      const res = await request(`${server.baseUrl}/distfiles/big-256m.bin`);
      expect(res.statusCode).toBe(200);
      for await (const chunk of res.body) received += (chunk as Buffer).length;
    } finally {
      clearInterval(downSampler);
    }
    expect(received).toBe(total);
    expect(downPeak - downBase).toBeLessThan(64 * 1024 * 1024);
  });
});
