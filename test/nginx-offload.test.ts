import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { content, sha512 } from './helpers/integrity.js';
import { nginxMissing, startTemplate, type RunningNginx } from './helpers/nginx.js';
import { get, startTestServer, type TestServer } from './helpers/server.js';

const OFFLOAD = new URL('../config/nginx-offload.conf', import.meta.url);
const DIRECT = new URL('../config/nginx-offload-direct.conf', import.meta.url);
const ACCEL = '/_fastpull_blobs/';
/** Hop-by-hop or per-server headers; everything else must be identical. */
const TRANSPORT = new Set(['date', 'connection', 'keep-alive', 'server', 'transfer-encoding']);

const shard = (h: string) => `${h.slice(0, 2)}/${h.slice(2, 4)}/${h.slice(4, 6)}/${h}`;
function comparable(headers: Record<string, string | string[] | undefined>): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(headers)) if (!TRANSPORT.has(k) && v !== undefined) out[k] = String(v);
  return out;
}

describe.skipIf(nginxMissing)('nginx offload (config/nginx-offload.conf, FASTPULL_ACCEL_REDIRECT)', () => {
  /** fastpull alone, the reference. */
  let plain: TestServer;
  /** The same data directory served by a fastpull that hands large bodies to nginx. */
  let accel: TestServer;
  let front: RunningNginx;
  let direct: RunningNginx;
  const big = content('offload-big', 3 * 1024 * 1024 + 7);
  const small = content('offload-small', 10 * 1024);
  const H = sha512(big);

  beforeAll(async () => {
    plain = await startTestServer();
    accel = await startTestServer({ dataDir: plain.dataDir, accelRedirect: ACCEL });
    expect((await plain.upload('offload-big-1.0.tar.gz', big)).status).toBe(201);
    expect((await plain.upload('offload-small-1.0.tar.gz', small)).status).toBe(201);
    const vars = (port: number) => ({
      FASTPULL_OFFLOAD_LISTEN: `127.0.0.1:${port}`,
      FASTPULL_ORIGIN: new URL(accel.baseUrl).host,
      FASTPULL_BLOBS_DIR: `${plain.dataDir}/blobs`,
    });
    front = await startTemplate(OFFLOAD, vars);
    direct = await startTemplate(DIRECT, vars);
  });
  afterAll(async () => {
    await front?.stop();
    await direct?.stop();
    await accel?.stop();
    await plain?.stop();
  });

  it('fastpull answers a large GET with its headers and X-Accel-Redirect into the internal location, and no body', async () => {
    const res = await get(`${accel.baseUrl}/distfiles/offload-big-1.0.tar.gz`);
    expect(res.status).toBe(200);
    expect(res.headers['x-accel-redirect']).toBe(`${ACCEL}${shard(H)}`);
    expect(res.headers.etag).toBe(`"${H}"`);
    expect(res.body.length).toBe(0);
    // Small files, HEAD and conditional requests stay with fastpull.
    expect((await get(`${accel.baseUrl}/distfiles/offload-small-1.0.tar.gz`)).headers['x-accel-redirect']).toBeUndefined();
    expect((await get(`${accel.baseUrl}/distfiles/${H}`, {}, 'HEAD')).headers['x-accel-redirect']).toBeUndefined();
  });

  const cases: [string, string, Record<string, string>, 'GET' | 'HEAD'][] = [
    ['by hash', `/distfiles/${shard(H)}`, {}, 'GET'],
    ['by name', '/distfiles/offload-big-1.0.tar.gz', {}, 'GET'],
    ['bare hash', `/${H}`, {}, 'GET'],
    ['resume (Range: bytes=N-)', '/distfiles/offload-big-1.0.tar.gz', { range: 'bytes=1000000-' }, 'GET'],
    ['closed range', `/distfiles/${H}`, { range: 'bytes=10-99' }, 'GET'],
    ['suffix range', `/distfiles/${H}`, { range: 'bytes=-500' }, 'GET'],
    ['several ranges (whole file)', `/distfiles/${H}`, { range: 'bytes=0-1,5-9' }, 'GET'],
    ['If-Range mismatch (whole file)', `/distfiles/${H}`, { range: 'bytes=0-9', 'if-range': '"other"' }, 'GET'],
    ['If-None-Match → 304', `/distfiles/${H}`, { 'if-none-match': `"${H}"` }, 'GET'],
    ['If-Modified-Since → 304', '/distfiles/offload-big-1.0.tar.gz', { 'if-modified-since': new Date(Date.now() + 86400_000).toUTCString() }, 'GET'],
    ['If-Match mismatch → 412', `/distfiles/${H}`, { 'if-match': '"other"' }, 'GET'],
    ['unsatisfiable → 416', `/distfiles/${H}`, { range: `bytes=${big.length}-` }, 'GET'],
    ['HEAD', '/distfiles/offload-big-1.0.tar.gz', {}, 'HEAD'],
    ['small file', '/distfiles/offload-small-1.0.tar.gz', {}, 'GET'],
    ['miss → 404', '/distfiles/nothing-here-1.0.tar.gz', {}, 'GET'],
    ['layout.conf', '/distfiles/layout.conf', {}, 'GET'],
  ];
  for (const [what, path, headers, method] of cases) {
    it(`${what}: the same status, headers and bytes through nginx as from fastpull alone`, async () => {
      const h = { ...headers, 'x-request-id': 'offload-check' };
      const alone = await get(plain.baseUrl + path, h, method);
      const through = await get(front.url + path, h, method);
      expect(through.status).toBe(alone.status);
      expect(comparable(through.headers)).toEqual(comparable(alone.headers));
      expect(through.body.equals(alone.body)).toBe(true);
    });
  }

  it('never serves a quarantined blob, even with its file still in place', async () => {
    const data = content('offload-rot', 2 * 1024 * 1024);
    const h = sha512(data);
    expect((await plain.upload('offload-rot-1.0.tar.gz', data)).status).toBe(201);
    expect((await get(`${front.url}/distfiles/${h}`)).status).toBe(200);
    plain.db!.prepare('UPDATE blobs SET quarantined_at = ? WHERE sha512 = ?').run(Date.now(), h);
    for (const p of [`/distfiles/${h}`, '/distfiles/offload-rot-1.0.tar.gz', `/distfiles/${shard(h)}`]) {
      const res = await get(front.url + p);
      expect(res.status, p).toBe(404);
      expect(res.body.includes(data.subarray(0, 64))).toBe(false);
    }
  });

  it('the direct variant serves content-hash paths from disk, and names and misses through fastpull', async () => {
    const byHash = await get(`${direct.url}/distfiles/${shard(H)}`);
    expect(byHash.status).toBe(200);
    expect(byHash.body.equals(big)).toBe(true);
    expect(byHash.headers.etag).toBe(`"${H}"`);
    expect(byHash.headers['cache-control']).toBe('public, max-age=31536000, immutable');
    expect(byHash.headers['content-type']).toBe('application/octet-stream');
    const ranged = await get(`${direct.url}/distfiles/${shard(H)}`, { range: 'bytes=100-' });
    expect(ranged.status).toBe(206);
    expect(ranged.body.equals(big.subarray(100))).toBe(true);
    const byName = await get(`${direct.url}/distfiles/offload-big-1.0.tar.gz`);
    expect(byName.status).toBe(200);
    expect(byName.body.equals(big)).toBe(true);
    expect(byName.headers['content-disposition']).toBe('attachment; filename="offload-big-1.0.tar.gz"');
    const missing = sha512('never stored');
    const miss = await get(`${direct.url}/distfiles/${shard(missing)}`);
    expect(miss.status).toBe(404);
    expect(miss.headers['content-type']).toMatch(/application\/json/);
  });
});
