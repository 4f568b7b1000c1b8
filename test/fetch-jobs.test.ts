import { rm } from 'node:fs/promises';
import { request } from 'undici';
import { afterEach, describe, expect, it } from 'vitest';
import { countRows, indexExec, storedBlobs } from './helpers/backend.js';
import { ADMIN_TOKEN, get, makeDataDir, startTestServer, type TestServer } from './helpers/server.js';
import { blake2b, bytes, LOOPBACK_CIDRS, serve, sha512, sleep, startUpstream, type Upstream } from './helpers/upstream.js';

const cleanup: (() => Promise<void>)[] = [];
afterEach(async () => {
  while (cleanup.length) await cleanup.pop()!();
});

async function upstream(routes: Parameters<typeof startUpstream>[0] = {}): Promise<Upstream> {
  const up = await startUpstream(routes);
  cleanup.push(() => up.close());
  return up;
}

async function server(overrides: Parameters<typeof startTestServer>[0] = {}): Promise<TestServer> {
  const s = await startTestServer({ fetchRetries: 2, fetchIdleTimeoutMs: 2_000, fetchAllowCidrs: LOOPBACK_CIDRS, ...overrides });
  cleanup.push(() => s.stop());
  return s;
}

async function api(s: TestServer, method: 'GET' | 'POST', p: string, body?: unknown, token: string | null = ADMIN_TOKEN) {
  const res = await request(`${s.baseUrl}/api/v1${p}`, {
    method,
    headers: {
      ...(token ? { authorization: `Bearer ${token}` } : {}),
      ...(body !== undefined ? { 'content-type': 'application/json' } : {}),
    },
    ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
  });
  return { status: res.statusCode, json: (await res.body.json()) as any };
}

/** Polls the job until every item has settled (the runner works in the background). */
async function settled(s: TestServer, id: string, until = (job: any) => job.counts.done + job.counts.failed === job.counts.total) {
  for (let i = 0; i < 400; i++) {
    const { status, json } = await api(s, 'GET', `/fetches/${id}`);
    expect(status).toBe(200);
    if (until(json)) return json;
    await sleep(25);
  }
  throw new Error(`job ${id} did not settle`);
}

const blobCount = async (server: TestServer): Promise<number> => (await storedBlobs(server)).length;

describe('POST /api/v1/fetches validation', () => {
  it.each([
    [{ url: 'ftp://example.invalid/a.tgz', filename: 'a.tgz' }, 'BAD_URL'],
    [{ url: 'not a url', filename: 'a.tgz' }, 'BAD_URL'],
    [{ url: 'http://127.0.0.1:9/a.tgz', filename: '../a.tgz' }, 'BAD_FILENAME'],
    [{ url: 'http://127.0.0.1:9/a.tgz', filename: 'a/b.tgz' }, 'BAD_FILENAME'],
    [{ url: 'http://127.0.0.1:9/a.tgz', filename: 'a.tgz', sha512: 'abc' }, 'BAD_HASH'],
    [{ url: 'http://127.0.0.1:9/a.tgz', filename: 'a.tgz', blake2b: 'z'.repeat(128) }, 'BAD_HASH'],
    [{ url: 'http://127.0.0.1:9/a.tgz', filename: 'a.tgz', mirrors: ['file:///etc/passwd'] }, 'BAD_URL'],
    [{ url: 'http://127.0.0.1:9/a.tgz', filename: 'a.tgz', size: -1 }, 'BAD_REQUEST'],
    [{ url: 'http://127.0.0.1:9/a.tgz', filename: 'a.tgz', colour: 'red' }, 'BAD_REQUEST'],
    [{ items: [] }, 'BAD_REQUEST'],
  ])('refuses %j with %s and queues nothing', async (body, code) => {
    const s = await server();
    // The bad item comes second: one bad item refuses the whole job.
    const payload = 'items' in body ? body : { items: [{ url: 'http://127.0.0.1:9/ok.tgz', filename: 'ok.tgz' }, body] };
    const res = await api(s, 'POST', '/fetches', payload);
    expect(res.status).toBe(400);
    expect(res.json.error).toBe(code);
    expect(typeof res.json.message).toBe('string');
    expect(await countRows(s, 'fetch_items')).toBe(0);
  });

  it('requires the upload scope to submit and a token to read', async () => {
    const s = await server();
    expect((await api(s, 'POST', '/fetches', { url: 'http://127.0.0.1:9/a', filename: 'a' }, null)).status).toBe(401);
    expect((await api(s, 'POST', '/fetches', { url: 'http://127.0.0.1:9/a', filename: 'a' }, 'wrong')).status).toBe(403);
    expect((await api(s, 'GET', '/fetches/whatever', undefined, null)).status).toBe(401);
  });

  it('answers JOB_NOT_FOUND for an unknown id', async () => {
    const s = await server();
    const res = await api(s, 'GET', '/fetches/00000000-0000-0000-0000-000000000000');
    expect(res.status).toBe(404);
    expect(res.json.error).toBe('JOB_NOT_FOUND');
  });
});

describe('fetch jobs', () => {
  it('downloads several items, verifies declared digests and serves the result', async () => {
    const a = bytes(30_000, 21);
    const b = bytes(5_000, 22);
    const up = await upstream({ '/a.tgz': serve(a), '/b.tgz': serve(b, { chunkSize: 500, delayMs: 2 }) });
    const s = await server();
    const res = await api(s, 'POST', '/fetches', {
      items: [
        { url: `${up.url}/a.tgz`, filename: 'a-1.0.tgz', size: a.length, sha512: sha512(a), blake2b: blake2b(a).toUpperCase() },
        { url: `${up.url}/b.tgz`, filename: 'b-2.0.tgz' },
      ],
    });
    expect(res.status).toBe(202);
    expect(res.json.id).toMatch(/^[0-9a-f-]{36}$/);
    expect(res.json.items).toHaveLength(2);
    expect(['queued', 'downloading', 'done']).toContain(res.json.items[0].state);
    const job = await settled(s, res.json.id);
    expect(job.state).toBe('done');
    expect(job.items[0]).toMatchObject({ state: 'done', sha512: sha512(a), size: a.length, blake2b: blake2b(a) });
    expect(job.items[1]).toMatchObject({ state: 'done', sha512: sha512(b), source: `${up.url}/b.tgz` });
    const served = await get(`${s.baseUrl}/distfiles/a-1.0.tgz`);
    expect(served.status).toBe(200);
    expect(served.body.equals(a)).toBe(true);
    expect(s.spider.stats.counters.fetchItemsDone).toBe(2);
  });

  it('reports a digest mismatch as a failed item and stores nothing', async () => {
    const good = bytes(10_000, 23);
    const evil = bytes(10_000, 24);
    const up = await upstream({ '/x.tgz': serve(evil) });
    const s = await server();
    const res = await api(s, 'POST', '/fetches', { url: `${up.url}/x.tgz`, filename: 'x.tgz', sha512: sha512(good) });
    const job = await settled(s, res.json.id);
    expect(job.state).toBe('failed');
    expect(job.items[0].state).toBe('failed');
    expect(job.items[0].reason).toMatch(/digest mismatch: sha512 expected/);
    expect(job.items[0].reason).toContain(`${up.url}/x.tgz`);
    expect(await blobCount(s)).toBe(0);
    expect((await get(`${s.baseUrl}/distfiles/x.tgz`)).status).toBe(404);
    expect(s.spider.stats.counters.fetchItemsFailed).toBe(1);
  });

  it('tries mirrors in order after the primary URL fails', async () => {
    const data = bytes(2_000, 25);
    const up = await upstream({ '/m2/y.tgz': serve(data) });
    const s = await server();
    const res = await api(s, 'POST', '/fetches', {
      url: `${up.url}/gone/y.tgz`,
      filename: 'y.tgz',
      mirrors: [`${up.url}/m1/y.tgz`, `${up.url}/m2/y.tgz`],
    });
    const job = await settled(s, res.json.id);
    expect(job.items[0]).toMatchObject({ state: 'done', source: `${up.url}/m2/y.tgz`, sha512: sha512(data) });
    expect(up.count('/gone/y.tgz')).toBe(1);
  });

  it('fails with every reason when no URL works, and never retries a 404', async () => {
    const up = await upstream();
    const s = await server();
    const res = await api(s, 'POST', '/fetches', { url: `${up.url}/nope.tgz`, filename: 'nope.tgz' });
    const job = await settled(s, res.json.id);
    expect(job.items[0].state).toBe('failed');
    expect(job.items[0].reason).toMatch(/404/);
    expect(up.count('/nope.tgz')).toBe(1);
  });

  it('resumes a truncated download and stores the exact bytes', async () => {
    const data = bytes(300_000, 26);
    const up = await upstream({ '/t.tgz': serve(data, { dropAfter: 100_000 }) });
    const s = await server();
    const res = await api(s, 'POST', '/fetches', { url: `${up.url}/t.tgz`, filename: 't.tgz', sha512: sha512(data) });
    const job = await settled(s, res.json.id);
    expect(job.items[0].state).toBe('done');
    expect(up.requests[1]!.headers.range).toMatch(/^bytes=[1-9]\d*-$/);
    expect((await get(`${s.baseUrl}/distfiles/t.tgz`)).body.equals(data)).toBe(true);
  });

  it('answers a repeated URL from the store without downloading again (trust on first use)', async () => {
    const data = bytes(8_000, 27);
    const up = await upstream({ '/tofu.tgz': serve(data) });
    const s = await server();
    const first = await settled(s, (await api(s, 'POST', '/fetches', { url: `${up.url}/tofu.tgz`, filename: 'tofu-1.tgz' })).json.id);
    expect(first.items[0]).toMatchObject({ state: 'done', sha512: sha512(data) });
    expect(up.count('/tofu.tgz')).toBe(1);

    const second = await settled(s, (await api(s, 'POST', '/fetches', { url: `${up.url}/tofu.tgz`, filename: 'tofu-copy.tgz' })).json.id);
    expect(second.items[0]).toMatchObject({ state: 'done', source: 'store', sha512: sha512(data) });
    expect(up.count('/tofu.tgz')).toBe(1);
    expect((await get(`${s.baseUrl}/distfiles/tofu-copy.tgz`)).body.equals(data)).toBe(true);

    // A declared hash that disagrees with what the URL gave before is not answered from the store.
    const other = bytes(8_000, 28);
    up.route('/tofu.tgz', serve(other));
    const third = await settled(s, (await api(s, 'POST', '/fetches', { url: `${up.url}/tofu.tgz`, filename: 'tofu-2.tgz', sha512: sha512(other) })).json.id);
    expect(third.items[0]).toMatchObject({ state: 'done', sha512: sha512(other), source: `${up.url}/tofu.tgz` });
    expect(up.count('/tofu.tgz')).toBe(2);
  });

  it('shows progress while downloading, and a job survives a restart mid-download', async () => {
    const data = bytes(400_000, 29);
    let release = false;
    const up = await upstream({
      '/big.tgz': async (req, res, hit) => {
        if (hit === 1) {
          // First server instance: half the file, then silence until the origin is stopped.
          res.writeHead(200, { 'content-length': data.length });
          res.write(data.subarray(0, 150_000));
          while (!release && !res.destroyed) await sleep(20);
          res.destroy();
          return;
        }
        return serve(data)(req, res, hit);
      },
    });
    const dataDir = await makeDataDir();
    cleanup.push(() => rm(dataDir, { recursive: true, force: true }));
    const first = await startTestServer({ dataDir, fetchIdleTimeoutMs: 30_000, fetchAllowCidrs: LOOPBACK_CIDRS });
    const id = (await api(first, 'POST', '/fetches', { url: `${up.url}/big.tgz`, filename: 'big.tgz', sha512: sha512(data) })).json.id;
    const midway = await settled(first, id, (job) => job.items[0].state === 'downloading' && job.items[0].bytes > 0);
    expect(midway.items[0].bytes).toBeLessThanOrEqual(150_000);
    expect(midway.items[0].total).toBe(data.length);
    await first.stop();
    release = true;
    expect(await blobCount(first)).toBe(0);

    const second = await startTestServer({ dataDir, fetchAllowCidrs: LOOPBACK_CIDRS });
    cleanup.push(() => second.stop());
    const job = await settled(second, id);
    expect(job.items[0]).toMatchObject({ state: 'done', sha512: sha512(data) });
    expect(job.items[0].attempts).toBe(2);
    // The restart downloaded from zero: no Range on the new server's request.
    expect(up.requests[1]!.headers.range).toBeUndefined();
    expect((await get(`${second.baseUrl}/distfiles/big.tgz`)).body.equals(data)).toBe(true);
  });

  it('requeues items left downloading by a crash', async () => {
    const data = bytes(1_000, 30);
    const up = await upstream({ '/c.tgz': serve(data) });
    const dataDir = await makeDataDir();
    cleanup.push(() => rm(dataDir, { recursive: true, force: true }));
    const first = await startTestServer({ dataDir, fetchAllowCidrs: LOOPBACK_CIDRS });
    // Simulate a crash: the row says downloading, and no process is working on it.
    await first.spider.stopJobs();
    const id = (await api(first, 'POST', '/fetches', { url: `${up.url}/c.tgz`, filename: 'c.tgz' })).json.id;
    await indexExec(first, `UPDATE fetch_items SET state = 'downloading' WHERE job_id = ?`, [id]);
    await first.stop();
    const second = await startTestServer({ dataDir, fetchAllowCidrs: LOOPBACK_CIDRS });
    cleanup.push(() => second.stop());
    const job = await settled(second, id);
    expect(job.items[0]).toMatchObject({ state: 'done', sha512: sha512(data) });
  });
});
