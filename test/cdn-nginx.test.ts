import { createHash, randomBytes } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { Agent, request } from 'undici';
import type { IncomingMessage } from 'node:http';
import { loadConfig } from '../src/config.js';
import { clientAddress, trustFunction } from '../src/http/client-address.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { captureLogs } from './helpers/log-capture.js';
import { ADMIN_TOKEN, get, startTestServer, type TestServer } from './helpers/server.js';
import { nginxMissing, startTemplate, type RunningNginx } from './helpers/nginx.js';

const CONFIG = new URL('../config/nginx-cdn.conf', import.meta.url);
const sha512 = (b: Buffer | string) => createHash('sha512').update(b).digest('hex');

/**
 * The edge as the nginx image runs it (master + worker): the shipped template, filled as envsubst would,
 * with its cache under the helper's temp dir.
 */
function startEdge(originHostPort: string, api: 'on' | 'off' = 'off'): Promise<RunningNginx> {
  return startTemplate(
    CONFIG,
    (port, dir) => ({
      FASTPULL_CDN_LISTEN: `127.0.0.1:${port}`,
      FASTPULL_CDN_UPSTREAM: originHostPort,
      FASTPULL_CDN_CACHE_DIR: path.join(dir, 'cache'),
      FASTPULL_CDN_API: api,
    }),
    { worker: true },
  );
}

/** A client connecting from another loopback address, so the edge sees (and must report) that one. */
function clientFrom(localAddress: string): Agent {
  return new Agent({ localAddress });
}

describe.skipIf(nginxMissing)('CDN edge (config/nginx-cdn.conf under Debian nginx)', () => {
  let origin: TestServer;
  let edge: RunningNginx;
  /** The same file with FASTPULL_CDN_API=on. */
  let apiEdge: RunningNginx;
  /** Every request that reached the origin, as "METHOD url range". */
  const originRequests: string[] = [];
  /** The X-Forwarded-For each origin request carried, by URL. */
  const forwardedFor = new Map<string, string | undefined>();
  const logs = captureLogs();
  const seen = (url: string) => originRequests.filter((r) => r.split(' ')[1] === url);
  const RATE_LIMIT = 8;

  const file = randomBytes(256 * 1024);
  const hash = sha512(file);

  beforeAll(async () => {
    // A two-second 404 TTL lets the test watch a cached miss expire, with room for a loaded machine before that.
    // The origin trusts exactly the edge's address (nginx connects to it from 127.0.0.1).
    origin = await startTestServer(
      { notFoundMaxAge: 2, trustProxy: ['127.0.0.1/32'], adminRateLimitPerMinute: RATE_LIMIT },
      { logger: logs.logger },
    );
    origin.app.server.on('request', (req) => {
      originRequests.push(`${req.method} ${req.url} ${req.headers.range ?? '-'}`);
      forwardedFor.set(req.url ?? '', req.headers['x-forwarded-for'] as string | undefined);
    });
    const up = await origin.upload('edge-1.0.tar.gz', file);
    expect(up.status).toBe(201);
    edge = await startEdge(new URL(origin.baseUrl).host);
    apiEdge = await startEdge(new URL(origin.baseUrl).host, 'on');
  });
  afterAll(async () => {
    await edge?.stop();
    await apiEdge?.stop();
    await origin?.stop();
  });

  it('fetches a cold object once (MISS), then serves it from cache (HIT)', async () => {
    const url = `/distfiles/${hash}`;
    const first = await get(edge.url + url);
    expect(first.status).toBe(200);
    expect(first.headers['x-cache-status']).toBe('MISS');
    expect(sha512(first.body)).toBe(hash);
    expect(first.headers['cache-control']).toMatch(/immutable/);

    const second = await get(edge.url + url);
    expect(second.status).toBe(200);
    expect(second.headers['x-cache-status']).toBe('HIT');
    expect(sha512(second.body)).toBe(hash);
    expect(second.headers['etag']).toBe(first.headers['etag']);
    expect(second.headers['content-encoding']).toBeUndefined();
    expect(seen(url)).toHaveLength(1);
  });

  it('answers a Range from the cached whole object without asking the origin', async () => {
    const url = `/distfiles/${hash}`;
    const before = originRequests.length;
    const ranged = await get(edge.url + url, { range: 'bytes=1000-' });
    expect(ranged.status).toBe(206);
    expect(ranged.headers['x-cache-status']).toBe('HIT');
    expect(ranged.headers['content-range']).toBe(`bytes 1000-${file.length - 1}/${file.length}`);
    expect(ranged.body.equals(file.subarray(1000))).toBe(true);

    const middle = await get(edge.url + url, { range: 'bytes=10-19' });
    expect(middle.status).toBe(206);
    expect(middle.body.equals(file.subarray(10, 20))).toBe(true);
    expect(originRequests.length).toBe(before);
  });

  it('answers HEAD and conditional GETs for a cached object itself', async () => {
    const url = `/distfiles/${hash}`;
    const before = originRequests.length;
    const head = await get(edge.url + url, {}, 'HEAD');
    expect(head.status).toBe(200);
    expect(head.headers['x-cache-status']).toBe('HIT');
    expect(head.headers['content-length']).toBe(String(file.length));
    const etag = head.headers['etag'] as string;
    expect(etag).toBe(`"${hash}"`);
    const notModified = await get(edge.url + url, { 'if-none-match': etag });
    expect(notModified.status).toBe(304);
    expect(notModified.body.length).toBe(0);
    expect(originRequests.length).toBe(before);
  });

  it('turns a cold Range request into one whole-object fetch from the origin', async () => {
    const url = `/${hash.slice(0, 2)}/${hash.slice(2, 4)}/${hash.slice(4, 6)}/${hash}`;
    const ranged = await get(edge.url + url, { range: 'bytes=100-' });
    expect(ranged.headers['x-cache-status']).toBe('MISS');
    expect(ranged.status).toBe(206);
    expect(ranged.body.equals(file.subarray(100))).toBe(true);
    // The origin saw no Range: the edge stored the whole file, so later ranges and full reads are hits.
    expect(seen(url)).toEqual([`GET ${url} -`]);
    const full = await get(edge.url + url);
    expect(full.headers['x-cache-status']).toBe('HIT');
    expect(sha512(full.body)).toBe(hash);
    expect(seen(url)).toHaveLength(1);
  });

  it('lets concurrent requests for a cold object wait for one origin fetch', async () => {
    const url = `/${hash}`;
    const results = await Promise.all(Array.from({ length: 6 }, () => get(edge.url + url)));
    for (const res of results) expect(sha512(res.body)).toBe(hash);
    expect(seen(url)).toHaveLength(1);
  });

  it('caches a 404 for as long as the origin says, then asks again', async () => {
    const url = '/distfiles/later-2.0.tar.gz';
    const miss = await get(edge.url + url);
    expect(miss.status).toBe(404);
    expect(miss.headers['x-cache-status']).toBe('MISS');
    expect(miss.headers['cache-control']).toBe('public, max-age=2');

    const cached = await get(edge.url + url);
    expect(cached.status).toBe(404);
    expect(cached.headers['x-cache-status']).toBe('HIT');
    expect(seen(url)).toHaveLength(1);

    // Uploaded after the miss: the edge keeps answering 404 only until the origin's TTL runs out.
    const up = await origin.upload('later-2.0.tar.gz', 'arrived later\n');
    expect(up.status).toBe(201);
    // nginx counts expiry in whole seconds: max-age=2 lapses between 2 and 3 s after the miss.
    await sleep(3200);
    const fresh = await get(edge.url + url);
    expect(fresh.status).toBe(200);
    expect(fresh.body.toString()).toBe('arrived later\n');
    expect(fresh.headers['x-cache-status']).toMatch(/^(MISS|EXPIRED)$/);
    expect(seen(url)).toHaveLength(2);
  });

  it('passes the admin API through uncached, uploads included, when FASTPULL_CDN_API=on', async () => {
    const put = await request(`${apiEdge.url}/api/v1/distfiles/via-edge.tar.gz`, {
      method: 'PUT',
      body: 'through the edge\n',
      headers: { authorization: `Bearer ${ADMIN_TOKEN}` },
    });
    expect(put.statusCode).toBe(201);
    expect((await put.body.json() as any).sha512).toBe(sha512('through the edge\n'));
    for (let i = 0; i < 2; i++) {
      const res = await get(`${apiEdge.url}/api/v1/distfiles/via-edge.tar.gz`, { authorization: `Bearer ${ADMIN_TOKEN}` });
      expect(res.status).toBe(200);
      expect(res.headers['x-cache-status']).toBeUndefined();
    }
    expect(seen('/api/v1/distfiles/via-edge.tar.gz')).toHaveLength(3);
  });

  it('serves neither /metrics nor the admin API by default, and keeps the status page API', async () => {
    const before = originRequests.length;
    for (const p of ['/metrics', '/%6detrics', '/metrics?x=1']) expect((await get(edge.url + p)).status, p).toBe(404);
    const auth = { authorization: `Bearer ${ADMIN_TOKEN}` };
    expect((await get(`${edge.url}/api/v1/blobs/${hash}`, auth)).status).toBe(404);
    expect((await get(`${edge.url}/api/v1/distfiles/edge-1.0.tar.gz`, auth)).status).toBe(404);
    expect((await get(`${edge.url}/api/v1/openapi.json/../fetches/1`, auth)).status).toBe(404);
    const put = await request(`${edge.url}/api/v1/distfiles/sneaky.tar.gz`, { method: 'PUT', body: 'no', headers: auth });
    expect(put.statusCode).toBe(404);
    await put.body.dump();
    expect(originRequests.length).toBe(before);
    // Even with the admin API published, /metrics stays off the edge.
    expect((await get(`${apiEdge.url}/metrics`)).status).toBe(404);
    expect(seen('/metrics')).toEqual([]);
    // The status page (served through the edge) reads these public, read-only endpoints.
    expect((await get(`${edge.url}/api/v1/status`)).status).toBe(200);
    expect((await get(`${edge.url}/api/v1/search?prefix=edge`)).status).toBe(200);
    const post = await request(`${edge.url}/api/v1/status`, { method: 'POST', body: '{}', headers: { 'content-type': 'application/json' } });
    expect(post.statusCode).toBe(403);
    await post.body.dump();
  });

  it('replaces a forged X-Forwarded-For: the origin logs the address the edge saw', async () => {
    const dispatcher = clientFrom('127.0.0.5');
    try {
      for (const [forged, url, status] of [
        ['203.0.113.7', `/distfiles/forged-${randomBytes(6).toString('hex')}.tar.gz`, 404],
        ['203.0.113.7, 198.51.100.1', `/distfiles/forged-${randomBytes(6).toString('hex')}.tar.gz`, 404],
        ['unknown', `/distfiles/forged-${randomBytes(6).toString('hex')}.tar.gz`, 404],
        // A download the origin serves (its lean download path writes this log line, by the same trust rule).
        ['203.0.113.8', `/distfiles/edge-1.0.tar.gz?bust=${randomBytes(6).toString('hex')}`, 200],
      ] as const) {
        const res = await request(edge.url + url, { dispatcher, headers: { 'x-forwarded-for': forged } });
        expect(res.statusCode).toBe(status);
        await res.body.dump();
        expect(forwardedFor.get(url), forged).toBe('127.0.0.5');
        const line = await logs.waitFor((l) => l.msg === 'request' && l.url === url);
        expect(line.remote, forged).toBe('127.0.0.5');
      }
    } finally {
      await dispatcher.close();
    }
  });

  it('does not give a forged X-Forwarded-For a fresh admin rate-limit allowance', async () => {
    const dispatcher = clientFrom('127.0.0.6');
    const statuses: number[] = [];
    try {
      for (let i = 0; i <= RATE_LIMIT; i++) {
        const res = await request(`${apiEdge.url}/api/v1/blobs/${hash}`, {
          dispatcher,
          headers: { authorization: `Bearer ${ADMIN_TOKEN}`, 'x-forwarded-for': `198.51.100.${i + 1}` },
        });
        statuses.push(res.statusCode);
        await res.body.dump();
      }
    } finally {
      await dispatcher.close();
    }
    expect(statuses.slice(0, RATE_LIMIT)).toEqual(new Array(RATE_LIMIT).fill(200));
    expect(statuses[RATE_LIMIT]).toBe(429);
    const lines = logs.lines.filter((l) => l.msg === 'request' && l.url === `/api/v1/blobs/${hash}`);
    expect(lines.map((l) => l.remote)).toEqual(new Array(RATE_LIMIT + 1).fill('127.0.0.6'));
  });
});

describe('docker-compose.yml and config/nginx-cdn.conf', () => {
  it('mount the config as an nginx template and set exactly the variables it uses', async () => {
    const template = await readFile(CONFIG, 'utf8');
    const placeholders = [...new Set([...template.matchAll(/\$\{(\w+)\}/g)].map((m) => m[1]))].sort();
    expect(placeholders).toEqual(['FASTPULL_CDN_API', 'FASTPULL_CDN_CACHE_DIR', 'FASTPULL_CDN_LISTEN', 'FASTPULL_CDN_UPSTREAM']);
    const compose = await readFile(new URL('../docker-compose.yml', import.meta.url), 'utf8');
    expect(compose).toContain('./config/nginx-cdn.conf:/etc/nginx/templates/default.conf.template:ro');
    for (const name of placeholders) expect(compose, name).toMatch(new RegExp(`^\\s+${name}: \\S`, 'm'));
    expect(compose).toMatch(/^\s+FASTPULL_CDN_API: "off"$/m);
  });

  it('trust exactly the edge: the origin believes X-Forwarded-For only from the edge\'s fixed address', async () => {
    const compose = await readFile(new URL('../docker-compose.yml', import.meta.url), 'utf8');
    const edgeAddress = /ipv4_address: (\S+)/.exec(compose)?.[1];
    const trusted = /FASTPULL_TRUST_PROXY: "([^"]+)"/.exec(compose)?.[1];
    expect(edgeAddress).toMatch(/^\d+\.\d+\.\d+\.\d+$/);
    expect(loadConfig({}, { FASTPULL_TRUST_PROXY: trusted! }).trustProxy).toEqual([`${edgeAddress}/32`]);
  });

  it('FASTPULL_TRUST_PROXY takes addresses, CIDRs or a hop count, and refuses true', () => {
    const trust = (value: string) => loadConfig({}, { FASTPULL_TRUST_PROXY: value }).trustProxy;
    expect(trust('false')).toBe(false);
    expect(trust('')).toBe(false);
    expect(trust('10.0.0.0/8, 127.0.0.1,::1')).toEqual(['10.0.0.0/8', '127.0.0.1/32', '::1/128']);
    expect(trust('2')).toBe(2);
    expect(() => trust('true')).toThrow(/FASTPULL_TRUST_PROXY.*any client/);
    expect(() => trust('edge.internal')).toThrow(/FASTPULL_TRUST_PROXY/);
  });

  it('names the client by walking back from the socket through trusted hops only', () => {
    const req = (peer: string, xff?: string) =>
      ({ socket: { remoteAddress: peer }, headers: xff === undefined ? {} : { 'x-forwarded-for': xff } }) as unknown as IncomingMessage;
    const byList = trustFunction(['10.0.0.0/8', '127.0.0.1/32']);
    expect(clientAddress(req('127.0.0.1', '203.0.113.7, 198.51.100.1'), byList)).toBe('198.51.100.1');
    expect(clientAddress(req('::ffff:127.0.0.1', '203.0.113.7, 10.1.1.1'), byList)).toBe('203.0.113.7');
    expect(clientAddress(req('198.51.100.9', '203.0.113.7'), byList)).toBe('198.51.100.9');
    expect(clientAddress(req('127.0.0.1'), byList)).toBe('127.0.0.1');
    const oneHop = trustFunction(1);
    expect(clientAddress(req('192.0.2.1', '203.0.113.7, 198.51.100.1'), oneHop)).toBe('198.51.100.1');
    expect(clientAddress(req('192.0.2.1', '203.0.113.7'), trustFunction(false))).toBe('192.0.2.1');
  });
});
