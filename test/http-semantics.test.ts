import { randomBytes } from 'node:crypto';
import { readdir, readlink, truncate } from 'node:fs/promises';
import net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { blobKey, damageBlob, indexExec, TEST_BACKEND } from './helpers/backend.js';
import { errorBody, pseudoRandomBytes, sha512 } from './helpers/core.js';
import { Agent, request } from 'undici';
import { ADMIN_TOKEN, get, startTestServer, type TestServer } from './helpers/server.js';

const NOT_FOUND_MAX_AGE = 17;

const NAME_MAX_AGE = 123;

describe('HTTP semantics of blob responses', () => {
  let server: TestServer;
  const data = pseudoRandomBytes(1000, 7);
  const h = sha512(data);
  let hashUrl: string;
  let nameUrl: string;

  beforeAll(async () => {
    server = await startTestServer({ notFoundMaxAge: NOT_FOUND_MAX_AGE, nameMaxAge: NAME_MAX_AGE });
    const up = await server.upload('data-1.0.bin', data);
    expect(up.status).toBe(201);
    hashUrl = `${server.baseUrl}/distfiles/${h.slice(0, 2)}/${h.slice(2, 4)}/${h.slice(4, 6)}/${h}`;
    nameUrl = `${server.baseUrl}/distfiles/data-1.0.bin`;
  });
  afterAll(async () => server.stop());

  describe('ranges', () => {
    const cases: [string, number, number][] = [
      ['bytes=100-', 100, 999],
      ['bytes=0-0', 0, 0],
      ['bytes=10-19', 10, 19],
      ['bytes=-10', 990, 999],
      ['bytes=-5000', 0, 999],
      ['bytes=990-5000', 990, 999],
      ['bytes=999-', 999, 999],
    ];
    for (const [range, start, end] of cases) {
      it(`${range} → 206 ${start}-${end}`, async () => {
        const res = await get(hashUrl, { range });
        expect(res.status).toBe(206);
        expect(res.headers['content-range']).toBe(`bytes ${start}-${end}/1000`);
        expect(res.headers['content-length']).toBe(String(end - start + 1));
        expect(res.body.equals(data.subarray(start, end + 1))).toBe(true);
      });
    }

    it('answers a multi-range request with the whole file (200)', async () => {
      const res = await get(hashUrl, { range: 'bytes=0-9,20-29' });
      expect(res.status).toBe(200);
      expect(res.headers['content-range']).toBeUndefined();
      expect(res.body.equals(data)).toBe(true);
    });

    it('ignores a range unit it does not speak', async () => {
      const res = await get(hashUrl, { range: 'items=0-9' });
      expect(res.status).toBe(200);
      expect(res.body.equals(data)).toBe(true);
    });

    for (const range of ['bytes=1000-', 'bytes=1000-1000', 'bytes=5000-', 'bytes=-0']) {
      it(`${range} → 416 with Content-Range: bytes */1000`, async () => {
        const res = await get(hashUrl, { range });
        expect(res.status).toBe(416);
        expect(res.headers['content-range']).toBe('bytes */1000');
        expect(errorBody(res.body).error).toBe('RANGE_NOT_SATISFIABLE');
        expect(res.headers['cache-control']).toBe('no-store');
      });
    }

    it('serves a zero-length file whole, and any range on it is 416 bytes */0', async () => {
      const up = await server.upload('empty-1.0.tar.gz', '');
      expect(up.status).toBe(201);
      const url = server.baseUrl + up.json.urls.contentHash;
      const full = await get(url);
      expect(full.status).toBe(200);
      expect(full.headers['content-length']).toBe('0');
      expect(full.body.length).toBe(0);
      for (const range of ['bytes=0-', 'bytes=-1']) {
        const res = await get(url, { range });
        expect(res.status, range).toBe(416);
        expect(res.headers['content-range'], range).toBe('bytes */0');
      }
    });

    it('HEAD with a range answers 206 with the same headers as GET', async () => {
      const g = await get(hashUrl, { range: 'bytes=5-9' });
      const hd = await get(hashUrl, { range: 'bytes=5-9' }, 'HEAD');
      expect(hd.status).toBe(206);
      expect(hd.body.length).toBe(0);
      expect(hd.headers['content-range']).toBe(g.headers['content-range']);
      expect(hd.headers['content-length']).toBe('5');
    });
  });

  describe('If-Range', () => {
    it('honours the range when the ETag matches', async () => {
      const res = await get(hashUrl, { range: 'bytes=0-3', 'if-range': `"${h}"` });
      expect(res.status).toBe(206);
      expect(res.body.equals(data.subarray(0, 4))).toBe(true);
    });

    it('sends the whole file when the ETag differs, or is weak', async () => {
      for (const ifRange of [`"${sha512('other')}"`, `W/"${h}"`]) {
        const res = await get(hashUrl, { range: 'bytes=0-3', 'if-range': ifRange });
        expect(res.status, ifRange).toBe(200);
        expect(res.body.equals(data), ifRange).toBe(true);
      }
    });

    it('honours the range when the date equals Last-Modified, else sends everything', async () => {
      const first = await get(hashUrl);
      const lastModified = String(first.headers['last-modified']);
      const hit = await get(hashUrl, { range: 'bytes=0-3', 'if-range': lastModified });
      expect(hit.status).toBe(206);
      const older = new Date(Date.parse(lastModified) - 3600_000).toUTCString();
      const miss = await get(hashUrl, { range: 'bytes=0-3', 'if-range': older });
      expect(miss.status).toBe(200);
      expect(miss.body.equals(data)).toBe(true);
    });
  });

  describe('conditional requests', () => {
    it('If-None-Match with the ETag → 304 with the validators, no body', async () => {
      for (const inm of [`"${h}"`, `W/"${h}"`, `"x", "${h}"`, '*']) {
        for (const method of ['GET', 'HEAD'] as const) {
          const res = await get(hashUrl, { 'if-none-match': inm }, method);
          expect(res.status, `${method} ${inm}`).toBe(304);
          expect(res.body.length).toBe(0);
          expect(res.headers.etag).toBe(`"${h}"`);
          expect(res.headers['cache-control']).toMatch(/immutable/);
        }
      }
    });

    it('If-None-Match with another ETag → 200, even if If-Modified-Since alone would match', async () => {
      const future = new Date(Date.now() + 86400_000).toUTCString();
      const res = await get(hashUrl, { 'if-none-match': `"${sha512('x')}"`, 'if-modified-since': future });
      expect(res.status).toBe(200);
      expect(res.body.equals(data)).toBe(true);
    });

    it('If-Modified-Since at or after Last-Modified → 304; before → 200', async () => {
      const lm = String((await get(nameUrl)).headers['last-modified']);
      expect((await get(nameUrl, { 'if-modified-since': lm })).status).toBe(304);
      const before = new Date(Date.parse(lm) - 1000).toUTCString();
      const res = await get(nameUrl, { 'if-modified-since': before });
      expect(res.status).toBe(200);
      expect(res.body.equals(data)).toBe(true);
      expect((await get(nameUrl, { 'if-modified-since': 'not a date' })).status).toBe(200);
    });
  });

  describe('preconditions (RFC 9110 §13.1.1, §13.1.4, evaluated in §13.2.2 order)', () => {
    const paths = () => [
      hashUrl,
      nameUrl,
      `${server.baseUrl}/${h}`,
      `${server.baseUrl}/distfiles/${h}`,
      `${server.baseUrl}/${h.slice(0, 2)}/${h.slice(2, 4)}/${h.slice(4, 6)}/${h}`,
    ];
    const lastModified = async () => String((await get(nameUrl)).headers['last-modified']);
    const expect412 = (res: Awaited<ReturnType<typeof get>>, what: string, method: string) => {
      expect(res.status, what).toBe(412);
      if (method === 'GET') expect(errorBody(res.body).error, what).toBe('PRECONDITION_FAILED');
      expect(res.headers['content-disposition'], what).toBeUndefined();
      expect(res.headers['content-range'], what).toBeUndefined();
    };

    it('If-Match without the ETag (or with only a weak one) → 412 on every download path, GET and HEAD', async () => {
      for (const url of paths()) {
        for (const im of [`"${sha512('other')}"`, `W/"${h}"`, `"a", "b"`]) {
          for (const method of ['GET', 'HEAD'] as const) expect412(await get(url, { 'if-match': im }, method), `${method} ${url} ${im}`, method);
        }
      }
    });

    it('If-Match with the ETag, in a list, or * → the normal answer', async () => {
      for (const url of paths()) {
        for (const im of [`"${h}"`, `"x", "${h}"`, '*']) {
          const res = await get(url, { 'if-match': im });
          expect(res.status, `${url} ${im}`).toBe(200);
          expect(res.body.equals(data)).toBe(true);
        }
        expect((await get(url, { 'if-match': `"${h}"`, range: 'bytes=0-9' })).status).toBe(206);
      }
    });

    it('If-Unmodified-Since before Last-Modified → 412; at or after it, or not a date → 200', async () => {
      const lm = await lastModified();
      const earlier = new Date(Date.parse(lm) - 1000).toUTCString();
      for (const url of paths()) {
        for (const method of ['GET', 'HEAD'] as const) {
          expect412(await get(url, { 'if-unmodified-since': earlier }, method), `${method} ${url}`, method);
        }
        for (const ius of [lm, new Date(Date.parse(lm) + 86400_000).toUTCString(), 'not a date']) {
          expect((await get(url, { 'if-unmodified-since': ius })).status, `${url} ${ius}`).toBe(200);
        }
      }
    });

    it('If-Match decides alone: a matching If-Match makes If-Unmodified-Since irrelevant', async () => {
      const earlier = new Date(Date.parse(await lastModified()) - 1000).toUTCString();
      const res = await get(hashUrl, { 'if-match': `"${h}"`, 'if-unmodified-since': earlier });
      expect(res.status).toBe(200);
    });

    it('a failed If-Match or If-Unmodified-Since wins over If-None-Match, If-Modified-Since and Range', async () => {
      const lm = await lastModified();
      const earlier = new Date(Date.parse(lm) - 1000).toUTCString();
      expect412(await get(hashUrl, { 'if-match': '"nope"', 'if-none-match': `"${h}"` }), 'if-match + if-none-match', 'GET');
      expect412(await get(hashUrl, { 'if-unmodified-since': earlier, 'if-modified-since': lm }), 'ius + ims', 'GET');
      expect412(await get(hashUrl, { 'if-match': '"nope"', range: 'bytes=5000-' }), 'if-match before 416', 'GET');
    });

    it('a passed If-Match still lets If-None-Match answer 304', async () => {
      const res = await get(hashUrl, { 'if-match': `"${h}"`, 'if-none-match': `"${h}"` });
      expect(res.status).toBe(304);
    });
  });

  describe('headers', () => {
    it('HEAD sends exactly the headers GET sends, and no body', async () => {
      for (const url of [hashUrl, nameUrl, `${server.baseUrl}/${h}`]) {
        const g = await get(url);
        const hd = await get(url, {}, 'HEAD');
        expect(hd.status).toBe(200);
        expect(hd.body.length).toBe(0);
        const strip = (hs: Record<string, unknown>) => {
          // Hop-by-hop: undici itself asks to close after a HEAD, so these legitimately differ.
          const { date: _d, 'x-request-id': _r, connection: _c, 'keep-alive': _k, ...rest } = hs;
          return rest;
        };
        expect(strip(hd.headers)).toEqual(strip(g.headers));
      }
    });

    it('never sets Content-Encoding, even when the client offers gzip', async () => {
      for (const url of [hashUrl, nameUrl, `${server.baseUrl}/distfiles/layout.conf`]) {
        const res = await get(url, { 'accept-encoding': 'gzip, deflate, br, zstd' });
        expect(res.status).toBe(200);
        expect(res.headers['content-encoding']).toBeUndefined();
        if (url !== `${server.baseUrl}/distfiles/layout.conf`) expect(res.body.equals(data)).toBe(true);
      }
    });

    it('hash paths are immutable for a year; name paths get the shorter name TTL', async () => {
      for (const url of [hashUrl, `${server.baseUrl}/${h}`, `${server.baseUrl}/distfiles/${h}`]) {
        expect((await get(url)).headers['cache-control']).toBe('public, max-age=31536000, immutable');
      }
      const { filenameHashDir } = await import('../src/domain/layout.js');
      for (const url of [nameUrl, `${server.baseUrl}/distfiles/${filenameHashDir('data-1.0.bin')}/data-1.0.bin`]) {
        expect((await get(url)).headers['cache-control']).toBe(`public, max-age=${NAME_MAX_AGE}`);
      }
    });

    it('a read-path 404 carries the negative TTL; other errors are never cacheable', async () => {
      for (const p of [`/distfiles/${sha512('missing')}`, '/distfiles/missing.tar.gz', '/distfiles/00/missing.tar.gz']) {
        const res = await get(server.baseUrl + p);
        expect(res.status, p).toBe(404);
        expect(res.headers['cache-control'], p).toBe(`public, max-age=${NOT_FOUND_MAX_AGE}`);
      }
      const errors = [
        await get(`${server.baseUrl}/distfiles/%00`),
        await get(hashUrl, { range: 'bytes=5000-' }),
        await get(`${server.baseUrl}/api/v1/blobs/${h}`),
        // Admin API answers are per-token: even its 404s must not land in a shared cache.
        await get(`${server.baseUrl}/api/v1/nothing-here`),
      ];
      for (const res of errors) {
        expect(res.status).toBeGreaterThanOrEqual(400);
        expect(res.headers['cache-control']).toBe('no-store');
      }
    });

    it('strong ETag from the hash, Repr-Digest, nosniff, octet-stream, Accept-Ranges', async () => {
      const res = await get(nameUrl);
      expect(res.headers.etag).toBe(`"${h}"`);
      expect(res.headers['repr-digest']).toBe(`sha-512=:${Buffer.from(h, 'hex').toString('base64')}:`);
      expect(res.headers['x-content-type-options']).toBe('nosniff');
      expect(res.headers['content-type']).toBe('application/octet-stream');
      expect(res.headers['accept-ranges']).toBe('bytes');
      expect(res.headers['content-disposition']).toBe('attachment; filename="data-1.0.bin"');
      expect(Date.parse(String(res.headers['last-modified']))).not.toBeNaN();
    });

    it('Content-Disposition uses filename* (RFC 8187) for non-ASCII names', async () => {
      const name = 'résumé-ü 1.0 (☃).tar.gz';
      const up = await server.upload(name, 'unicode name');
      expect(up.status).toBe(201);
      const res = await get(server.baseUrl + up.json.urls.flat);
      expect(res.status).toBe(200);
      const cd = String(res.headers['content-disposition']);
      expect(cd).toMatch(/^attachment; filename="[\x20-\x7e]+"; filename\*=UTF-8''/);
      const encoded = /filename\*=UTF-8''(\S+)$/.exec(cd)![1]!;
      expect(encoded).toMatch(/^[A-Za-z0-9!#$&+\-.^_`|~%]+$/);
      expect(decodeURIComponent(encoded)).toBe(name);
    });
  });
});

describe('damaged blobs', () => {
  let server: TestServer;
  beforeAll(async () => {
    server = await startTestServer();
  });
  afterAll(async () => server.stop());

  it('answers 404 (GET and HEAD) when the file on disk no longer has the indexed size', async () => {
    const data = pseudoRandomBytes(4096, 3);
    const up = await server.upload('shrunk-1.0.tar.gz', data);
    await damageBlob(server, up.json.sha512, data.subarray(0, 100));
    for (const method of ['GET', 'HEAD'] as const) {
      const res = await get(server.baseUrl + up.json.urls.flat, {}, method);
      expect(res.status, method).toBe(404);
      expect(res.headers['content-length'], method).not.toBe('4096');
      // Blob headers describing bytes we refuse to send would mislead a cache.
      expect(res.headers.etag, method).toBeUndefined();
      expect(res.headers['repr-digest'], method).toBeUndefined();
    }
  });

  it('never serves a quarantined blob, by hash or by name, and will not link a name to it', async () => {
    const up = await server.upload('quarantined-1.0.tar.gz', 'suspect bytes');
    // Rotted in place at the same size, and flagged by a scrub that left the file where it was.
    await damageBlob(server, up.json.sha512, 'SUSPECT BYTES');
    await indexExec(server, 'UPDATE blobs SET quarantined_at = ? WHERE sha512 = ?', [Date.now(), up.json.sha512]);
    for (const p of Object.values(up.json.urls as Record<string, string>)) {
      for (const method of ['GET', 'HEAD'] as const) {
        expect((await get(server.baseUrl + p, {}, method)).status, `${method} ${p}`).toBe(404);
      }
    }
    const link = await request(`${server.baseUrl}/api/v1/links`, {
      method: 'POST',
      headers: { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/json' },
      body: JSON.stringify({ filename: 'other-name.tar.gz', sha512: up.json.sha512 }),
    });
    expect(link.statusCode).toBe(404);
    await link.body.dump();
    // Uploading the good bytes again replaces the rotten copy (not a dedup against it) and serves again.
    expect((await server.upload('quarantined-1.0.tar.gz', 'suspect bytes')).status).toBe(201);
    expect((await get(server.baseUrl + up.json.urls.flat)).body.toString()).toBe('suspect bytes');
    expect((await get(server.baseUrl + up.json.urls.hash)).body.toString()).toBe('suspect bytes');
  });

  // A file truncated while being read: an object store serves the object as it was when the GET began.
  it.skipIf(TEST_BACKEND !== 'local')('destroys the connection, never ends it cleanly, when the file shrinks mid-download', async () => {
    // Bigger than loopback socket buffers can hold (tcp_rmem max here is 32 MiB), so the server is still
    // reading the file when we truncate it.
    const size = 64 * 1024 * 1024;
    const data = randomBytes(size);
    const h = sha512(data);
    const up = await server.upload('big-1.0.tar.gz', data);
    expect(up.status).toBe(201);
    const file = blobKey(server, h);

    // Two pipelined requests on one connection: if the first ended "cleanly" short, the second
    // response would follow on the same socket and a cache would take the short body as whole.
    const { port } = new URL(server.baseUrl);
    const socket = net.connect(Number(port), '127.0.0.1');
    const chunks: Buffer[] = [];
    let received = 0;
    let truncated = false;
    // Done when the server drops the connection (right) or the pipelined second answer shows up (wrong).
    let settle: () => void = () => undefined;
    const closed = new Promise<void>((resolve) => {
      settle = resolve;
      socket.on('close', () => resolve());
      socket.on('error', () => undefined);
    });
    socket.write(
      `GET /distfiles/${h} HTTP/1.1\r\nHost: x\r\n\r\n` + `GET /distfiles/layout.conf HTTP/1.1\r\nHost: x\r\n\r\n`,
    );
    socket.on('data', (chunk: Buffer) => {
      chunks.push(chunk);
      received += chunk.length;
      if (chunk.includes('[structure]')) settle();
      if (!truncated && received > 64 * 1024) {
        truncated = true;
        socket.pause();
        truncate(file, 1024 * 1024 * 24).then(() => socket.resume());
      }
    });
    await closed;
    socket.destroy();

    const all = Buffer.concat(chunks);
    const headerEnd = all.indexOf('\r\n\r\n');
    const head = all.subarray(0, headerEnd).toString('latin1');
    expect(head).toMatch(/^HTTP\/1\.1 200/);
    expect(head).toMatch(new RegExp(`content-length: ${size}`, 'i'));
    const body = all.subarray(headerEnd + 4);
    expect(body.length).toBeLessThan(size);
    expect(all.includes('[structure]')).toBe(false);
    expect(all.includes('HTTP/1.1 200', headerEnd)).toBe(false);
  });

  // The local store's descriptor cache; the s3 driver holds no files open.
  it.skipIf(TEST_BACKEND !== 'local')('closes the blob file when a client hangs up mid-download (no descriptor leak)', async () => {
    const data = randomBytes(16 * 1024 * 1024);
    const up = await server.upload('leak-check-1.0.tar.gz', data);
    const h = up.json.sha512 as string;
    const openOnBlob = async () => {
      let n = 0;
      for (const fd of await readdir('/proc/self/fd')) {
        const target = await readlink(`/proc/self/fd/${fd}`).catch(() => '');
        if (target.endsWith(h)) n++;
      }
      return n;
    };
    // Our own pool, destroyed at the end: undici may open spare connections that never send a request,
    // and those would hold up the server's close.
    const agent = new Agent();
    try {
      for (let i = 0; i < 10; i++) {
        const controller = new AbortController();
        const res = await request(server.baseUrl + up.json.urls.hash, { signal: controller.signal, dispatcher: agent });
        expect(res.statusCode).toBe(200);
        // Take one chunk, then drop the connection while the server still has most of the file to send.
        for await (const _chunk of res.body) break;
        controller.abort();
      }
      // Every loan is returned; at most the one descriptor kept open while the blob is hot remains,
      // and it closes when the blob leaves this process (quarantine, gc).
      for (let i = 0; i < 200 && server.store!.reader.files.borrowed > 0; i++) await new Promise((r) => setTimeout(r, 25));
      expect(server.store!.reader.files.borrowed).toBe(0);
      // Chunk buffers of the aborted responses went back to the pool too.
      for (let i = 0; i < 200 && server.store!.reader.bufferedBytes > 0; i++) await new Promise((r) => setTimeout(r, 25));
      expect(server.store!.reader.bufferedBytes).toBe(0);
      expect(await openOnBlob()).toBeLessThanOrEqual(1);
      server.store!.reader.forget(h);
      for (let i = 0; i < 200 && (await openOnBlob()) > 0; i++) await new Promise((r) => setTimeout(r, 25));
      expect(await openOnBlob()).toBe(0);
    } finally {
      await agent.destroy();
    }
  });
});
