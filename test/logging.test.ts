import { randomBytes } from 'node:crypto';
import { readdir, rm } from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { Writable } from 'node:stream';
import { pino } from 'pino';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../src/config.js';
import { startServer, type Server } from '../src/server.js';
import { rawRequest, sha512 } from './helpers/core.js';
import { makeDataDir } from './helpers/server.js';

const TOKEN = 'sekrit-bearer-token-7f3a9c';
const WRONG = 'wrong-bearer-token-d41d8c';

describe('request logging', () => {
  let server: Server;
  let base: string;
  let dataDir: string;
  const lines: string[] = [];

  beforeAll(async () => {
    const sink = new Writable({
      write(chunk: Buffer, _enc, done) {
        lines.push(...chunk.toString('utf8').split('\n').filter((l) => l !== ''));
        done();
      },
    });
    dataDir = await makeDataDir();
    const config = loadConfig({ host: '127.0.0.1', port: 0, adminToken: TOKEN, dataDir }, {});
    server = await startServer(config, { logger: pino({ level: 'info' }, sink) });
    base = server.url;
  });
  afterAll(async () => {
    await server.close();
    await rm(dataDir, { recursive: true, force: true });
  });

  const requestLines = () => lines.map((l) => JSON.parse(l)).filter((l) => l.msg === 'request');

  it('writes exactly one JSON line per request, carrying the request id', async () => {
    const before = requestLines().length;
    const ids: string[] = [];
    const send = async (path: string, opts: Parameters<typeof request>[1] = {}) => {
      const res = await request(base + path, opts);
      await res.body.dump();
      ids.push(String(res.headers['x-request-id']));
      return res.statusCode;
    };
    const auth = { authorization: `Bearer ${TOKEN}` };
    expect(await send('/distfiles/layout.conf')).toBe(200);
    expect(await send('/api/v1/distfiles/log-1.0.tar.gz', { method: 'PUT', headers: auth, body: 'logged' })).toBe(201);
    expect(await send('/distfiles/log-1.0.tar.gz')).toBe(200);
    expect(await send('/distfiles/log-1.0.tar.gz', { method: 'HEAD' })).toBe(200);
    expect(await send('/distfiles/missing.tar.gz')).toBe(404);
    expect(await send('/no/route')).toBe(404);
    expect(await send('/api/v1/links', { method: 'POST' })).toBe(401);
    expect(await send(`/distfiles/${sha512('logged')}`, { headers: { range: 'bytes=99-' } })).toBe(416);
    expect(await send('/distfiles/log-1.0.tar.gz', { headers: { 'x-request-id': 'cdn-req-42' } })).toBe(200);
    const bad = await rawRequest(base, '/distfiles/%c0%ae');
    expect(bad.status).toBe(400);
    ids.push(String(bad.headers['x-request-id']));

    const logged = requestLines().slice(before);
    expect(logged).toHaveLength(ids.length);
    expect(ids).toContain('cdn-req-42');
    for (const [i, line] of logged.entries()) {
      expect(line.reqId, JSON.stringify(line)).toBe(ids[i]);
      expect(typeof line.status).toBe('number');
      expect(typeof line.method).toBe('string');
      expect(typeof line.url).toBe('string');
    }
    expect(new Set(ids).size).toBe(ids.length);
    // Every line on the stream is JSON, not only the per-request ones.
    for (const l of lines) expect(() => JSON.parse(l), l).not.toThrow();
  });

  it('says "listening" once', () => {
    const listening = lines.map((l) => JSON.parse(l)).filter((l) => /listening/i.test(String(l.msg)));
    expect(listening).toHaveLength(1);
    expect(listening[0].address).toBe(base);
  });

  it('carries bytes sent, the user agent and, on writes, the token name', async () => {
    const before = requestLines().length;
    const body = randomBytes(50_000);
    const put = await request(`${base}/api/v1/distfiles/fields-1.0.tar.gz`, {
      method: 'PUT',
      headers: { authorization: `Bearer ${TOKEN}`, 'user-agent': 'spider/2.0 (metatools)' },
      body,
    });
    expect(put.statusCode).toBe(201);
    const putBody = await put.body.text();
    const got = await request(`${base}/distfiles/fields-1.0.tar.gz`, { headers: { 'user-agent': 'Portage (Gentoo) distfile-fetch' } });
    expect(Buffer.from(await got.body.arrayBuffer()).equals(body)).toBe(true);
    const head = await request(`${base}/distfiles/fields-1.0.tar.gz`, { method: 'HEAD', headers: { 'user-agent': 'curl/8' } });
    await head.body.dump();

    const [putLine, getLine, headLine] = requestLines().slice(before);
    expect(putLine).toMatchObject({ method: 'PUT', status: 201, ua: 'spider/2.0 (metatools)', tokenName: 'bootstrap' });
    // The JSON answer plus its header block.
    expect(putLine.bytes).toBeGreaterThan(Buffer.byteLength(putBody));
    expect(putLine.bytes).toBeLessThan(Buffer.byteLength(putBody) + 2048);
    expect(getLine).toMatchObject({ method: 'GET', status: 200, ua: 'Portage (Gentoo) distfile-fetch' });
    expect(getLine.tokenName).toBeUndefined();
    expect(getLine.bytes).toBeGreaterThan(body.length);
    expect(getLine.bytes).toBeLessThan(body.length + 2048);
    // HEAD: headers only.
    expect(headLine).toMatchObject({ method: 'HEAD', status: 200, ua: 'curl/8' });
    expect(headLine.bytes).toBeGreaterThan(100);
    expect(headLine.bytes).toBeLessThan(2048);
    expect(JSON.stringify([putLine, getLine, headLine])).not.toContain(TOKEN);
  });

  it('never writes the bearer token, right or wrong, to any log line', async () => {
    const tries: [string, Record<string, string>][] = [
      ['PUT', { authorization: `Bearer ${TOKEN}` }],
      ['PUT', { authorization: `Bearer ${WRONG}` }],
      ['PUT', { authorization: `bearer   ${TOKEN}  ` }],
      ['PUT', { authorization: `Basic ${Buffer.from(`u:${TOKEN}`).toString('base64')}` }],
      ['PUT', { authorization: TOKEN }],
      ['DELETE', { authorization: `Bearer ${WRONG}` }],
      ['GET', { authorization: `Bearer ${WRONG}` }],
    ];
    for (const [method, headers] of tries) {
      for (const p of ['/api/v1/distfiles/secret-1.0.tar.gz', `/api/v1/blobs/${sha512('x')}`, '/api/v1/links']) {
        const res = await request(base + p, {
          method: method as 'PUT',
          headers: { ...headers, 'content-type': 'application/octet-stream' },
          ...(method === 'PUT' ? { body: 'x' } : {}),
        });
        await res.body.dump();
      }
    }
    // A digest mismatch and an oversized declared size exercise the error paths too.
    const mismatch = await request(`${base}/api/v1/distfiles/m.tar.gz?sha512=${sha512('other')}`, {
      method: 'PUT',
      headers: { authorization: `Bearer ${TOKEN}` },
      body: 'x',
    });
    expect(mismatch.statusCode).toBe(422);
    await mismatch.body.dump();

    expect(lines.length).toBeGreaterThan(20);
    const all = lines.join('\n');
    expect(all).not.toContain(TOKEN);
    expect(all).not.toContain(WRONG);
    expect(all).not.toContain(Buffer.from(`u:${TOKEN}`).toString('base64'));
    // Who uploaded is recorded by the token's name, not its secret.
    expect(all).toContain('"by":"bootstrap"');
  });

  it('logs one line, marked aborted, when a client hangs up mid-download or mid-upload, and no error', async () => {
    // Far more than loopback socket buffers hold, so the download cannot finish before we hang up.
    const big = randomBytes(64 * 1024 * 1024);
    const up = await request(`${base}/api/v1/distfiles/abort-1.0.tar.gz`, {
      method: 'PUT',
      headers: { authorization: `Bearer ${TOKEN}` },
      body: big,
    });
    expect(up.statusCode).toBe(201);
    await up.body.dump();
    const { port } = new URL(base);
    const hangUp = async (head: string, body?: Buffer) => {
      const socket = net.connect(Number(port), '127.0.0.1');
      socket.on('error', () => undefined);
      await new Promise((r) => socket.once('connect', r));
      socket.write(head);
      if (body) {
        socket.write(body);
        // Hang up only once the server is demonstrably writing the upload to a temp file.
        const tmp = path.join(dataDir, 'tmp');
        for (let i = 0; i < 400 && (await readdir(tmp)).length === 0; i++) await new Promise((r) => setTimeout(r, 10));
      } else {
        await new Promise((r) => socket.once('data', r));
      }
      socket.destroy();
    };
    const id = 'abort-download-1';
    const before = lines.length;
    await hangUp(`GET /distfiles/abort-1.0.tar.gz HTTP/1.1\r\nHost: x\r\nX-Request-Id: ${id}\r\n\r\n`);
    await hangUp(
      `PUT /api/v1/distfiles/abort-2.0.tar.gz HTTP/1.1\r\nHost: x\r\nX-Request-Id: abort-upload-1\r\n` +
        `Authorization: Bearer ${TOKEN}\r\nContent-Length: 10000000\r\n\r\n`,
      randomBytes(200_000),
    );
    const mine = () => lines.slice(before).map((l) => JSON.parse(l));
    for (let i = 0; i < 200 && mine().filter((l) => l.msg === 'request').length < 2; i++) {
      await new Promise((r) => setTimeout(r, 25));
    }
    for (const reqId of ['abort-download-1', 'abort-upload-1']) {
      const reqLines = mine().filter((l) => l.msg === 'request' && l.reqId === reqId);
      expect(reqLines, reqId).toHaveLength(1);
      expect(reqLines[0].aborted, reqId).toBe(true);
    }
    // A client hanging up is not a server failure.
    expect(mine().filter((l) => l.level >= 50)).toEqual([]);
    expect(mine().every((l) => !String(l.msg).includes('blob stored') || !l.filename?.startsWith('abort-2'))).toBe(true);
  });
});
