import { rm } from 'node:fs/promises';
import { request } from 'undici';
import { afterEach, describe, expect, it } from 'vitest';
import type { Config } from '../src/config.js';
import { DistfileIndex } from '../src/db/index.js';
import { databaseFile, openDatabase } from '../src/db/open.js';
import { Ingest } from '../src/ingest/ingest.js';
import { PullThrough } from '../src/ingest/pull-through.js';
import { BlobStore } from '../src/store/blob-store.js';
import { Fetcher } from '../src/upstream/fetcher.js';
import { Mirror } from '../src/upstream/mirrors.js';
import { UpstreamStats } from '../src/upstream/stats.js';
import { shardedPath } from '../src/domain/layout.js';
import { storedBlobs } from './helpers/backend.js';
import { ADMIN_TOKEN, get, makeDataDir, startTestServer, type TestServer } from './helpers/server.js';
import { bytes, hang, LOOPBACK_CIDRS, serve, sha512, startUpstream, status, type Upstream } from './helpers/upstream.js';

const cleanup: (() => Promise<void>)[] = [];
afterEach(async () => {
  while (cleanup.length) await cleanup.pop()!();
});

async function upstream(routes: Parameters<typeof startUpstream>[0] = {}): Promise<Upstream> {
  const up = await startUpstream(routes);
  cleanup.push(() => up.close());
  return up;
}

async function origin(upstreams: Config['upstreams'], overrides: Partial<Config> = {}): Promise<TestServer> {
  const s = await startTestServer({
    pullThrough: true,
    upstreams,
    fetchRetries: 1,
    fetchIdleTimeoutMs: 2_000,
    negativeCacheSeconds: 60,
    fetchAllowCidrs: LOOPBACK_CIDRS,
    ...overrides,
  });
  cleanup.push(() => s.stop());
  return s;
}

const LAYOUT = '[structure]\n0=content-hash SHA512 8:8:8\n1=filename-hash BLAKE2B 8\n2=flat\n';

const blobFiles = async (server: TestServer): Promise<number> => (await storedBlobs(server)).length;

describe('pull-through', () => {
  it('is off unless configured: a miss is a 404 and no upstream is asked', async () => {
    const up = await upstream({ '/a.tgz': serve(bytes(100)) });
    const s = await origin([{ kind: 'flat', url: up.url }], { pullThrough: false });
    const res = await get(`${s.baseUrl}/distfiles/a.tgz`);
    expect(res.status).toBe(404);
    expect(up.requests).toHaveLength(0);
  });

  it('pulls a name from a flat mirror, streams it, stores it and then serves it locally', async () => {
    const data = bytes(200_000, 41);
    const up = await upstream({ '/mirror/libsigc%2B%2B-2.10.8.tar.xz': serve(data, { chunkSize: 20_000, delayMs: 2 }) });
    const s = await origin([{ kind: 'flat', url: `${up.url}/mirror` }]);
    const first = await get(`${s.baseUrl}/distfiles/libsigc%2B%2B-2.10.8.tar.xz`);
    expect(first.status).toBe(200);
    expect(first.headers['x-fastpull-pull']).toBe('stream');
    expect(first.headers['content-length']).toBe(String(data.length));
    expect(first.body.equals(data)).toBe(true);

    const second = await get(`${s.baseUrl}/distfiles/b4/libsigc%2B%2B-2.10.8.tar.xz`);
    expect(second.status).toBe(200);
    expect(second.headers['x-fastpull-pull']).toBeUndefined();
    expect(second.body.equals(data)).toBe(true);
    expect(up.requests).toHaveLength(1);

    const info = await request(`${s.baseUrl}/api/v1/distfiles/${encodeURIComponent('libsigc++-2.10.8.tar.xz')}`, {
      headers: { authorization: `Bearer ${ADMIN_TOKEN}` },
    });
    const json = (await info.body.json()) as any;
    expect(json.current.sha512).toBe(sha512(data));
    expect(json.history[0].attachedBy).toBe('pull-through');
    expect(s.spider.stats.counters.pullHits).toBe(1);
  });

  it('pulls by hash from another fastpull origin, skipping mirrors that cannot address hashes', async () => {
    const data = bytes(50_000, 42);
    const other = await startTestServer();
    cleanup.push(() => other.stop());
    expect((await other.upload('x-1.0.tar.gz', data)).status).toBe(201);
    const flat = await upstream();
    const s = await origin([
      { kind: 'flat', url: flat.url },
      { kind: 'fastpull', url: other.baseUrl },
    ]);
    const hash = sha512(data);
    const res = await get(`${s.baseUrl}/${shardedPath(hash)}`);
    expect(res.status).toBe(200);
    expect(res.headers.etag).toBe(`"${hash}"`);
    expect(res.body.equals(data)).toBe(true);
    expect(flat.requests).toHaveLength(0);
    const local = await get(`${s.baseUrl}/distfiles/${hash}`);
    expect(local.status).toBe(200);
    expect(local.headers['x-fastpull-pull']).toBeUndefined();
  });

  it('reads a gentoo mirror layout.conf once and requests the matching paths', async () => {
    const byHash = bytes(10_000, 43);
    const byName = bytes(10_000, 44);
    const h = sha512(byHash);
    const up = await upstream({
      '/distfiles/layout.conf': (_req, res) => void res.writeHead(200, { 'content-type': 'text/plain' }).end(LAYOUT),
      [`/distfiles/${shardedPath(h)}`]: serve(byHash),
      '/distfiles/4b/foo-1.0.tar.gz': serve(byName),
    });
    const s = await origin([{ kind: 'gentoo', url: up.url }]);
    expect((await get(`${s.baseUrl}/distfiles/${shardedPath(h)}`)).body.equals(byHash)).toBe(true);
    expect((await get(`${s.baseUrl}/distfiles/foo-1.0.tar.gz`)).body.equals(byName)).toBe(true);
    expect(up.count('/distfiles/layout.conf')).toBe(1);
    expect(up.count(`/distfiles/${shardedPath(h)}`)).toBe(1);
    expect(up.count('/distfiles/4b/foo-1.0.tar.gz')).toBe(1);
  });

  it('falls back to flat on a gentoo mirror without layout.conf', async () => {
    const data = bytes(1_000, 45);
    const up = await upstream({ '/distfiles/old.tgz': serve(data) });
    const s = await origin([{ kind: 'gentoo', url: up.url }]);
    expect((await get(`${s.baseUrl}/distfiles/old.tgz`)).body.equals(data)).toBe(true);
  });

  it('makes exactly one upstream request for 100 simultaneous misses of one key', async () => {
    const data = bytes(300_000, 46);
    const hash = sha512(data);
    const p = `/distfiles/${shardedPath(hash)}`;
    const up = await upstream({ [p]: serve(data, { headerDelayMs: 300, chunkSize: 30_000, delayMs: 5 }) });
    const s = await origin([{ kind: 'fastpull', url: up.url }]);
    const results = await Promise.all(Array.from({ length: 100 }, () => get(`${s.baseUrl}/${shardedPath(hash)}`)));
    for (const r of results) {
      expect(r.status).toBe(200);
      expect(r.body.length).toBe(data.length);
      expect(sha512(r.body)).toBe(hash);
    }
    expect(up.count(p)).toBe(1);
    expect(s.spider.stats.counters.pullJoins).toBe(99);
  });

  it('serves a request that joins once bytes flow from the store after the commit', async () => {
    const data = bytes(200_000, 56);
    const up = await upstream({ '/late.tgz': serve(data, { chunkSize: 10_000, delayMs: 25 }) });
    const s = await origin([{ kind: 'flat', url: up.url }]);
    // Bytes reaching the early client prove the origin's download is flowing (not merely that the
    // upstream wrote them, which a busy machine may not have read yet): only now is a request late.
    const early = await request(`${s.baseUrl}/distfiles/late.tgz`);
    const chunks: Buffer[] = [];
    const body = early.body as AsyncIterable<Buffer>;
    const iterator = body[Symbol.asyncIterator]();
    const firstChunk = await iterator.next();
    chunks.push(firstChunk.value as Buffer);
    const late = await get(`${s.baseUrl}/distfiles/late.tgz`);
    for (let next = await iterator.next(); !next.done; next = await iterator.next()) chunks.push(next.value);
    expect(early.headers['x-fastpull-pull']).toBe('stream');
    expect(Buffer.concat(chunks).equals(data)).toBe(true);
    expect(late.status).toBe(200);
    expect(late.headers['x-fastpull-pull']).toBeUndefined();
    expect(late.body.equals(data)).toBe(true);
    expect(up.count('/late.tgz')).toBe(1);
  });

  it('hides an upstream drop from the client: the stream resumes with Range', async () => {
    const data = bytes(250_000, 47);
    const up = await upstream({ '/cut.tgz': serve(data, { dropAfter: 90_000 }) });
    const s = await origin([{ kind: 'flat', url: up.url }]);
    const res = await get(`${s.baseUrl}/distfiles/cut.tgz`);
    expect(res.status).toBe(200);
    expect(res.body.equals(data)).toBe(true);
    expect(up.requests[1]!.headers.range).toMatch(/^bytes=[1-9]\d*-$/);
  });

  it('destroys the client connection when by-hash bytes fail verification, and stores nothing', async () => {
    const good = bytes(100_000, 48);
    const evil = bytes(100_000, 49);
    const hash = sha512(good);
    const p = `/distfiles/${shardedPath(hash)}`;
    const up = await upstream({ [p]: serve(evil, { chunkSize: 10_000 }) });
    const s = await origin([{ kind: 'fastpull', url: up.url }], { negativeCacheSeconds: 0 });
    const outcome = await get(`${s.baseUrl}/${shardedPath(hash)}`).then(
      (r) => ({ ok: true as const, r }),
      (err: unknown) => ({ ok: false as const, err }),
    );
    // Headers went out as bytes arrived; the body must never complete.
    expect(outcome.ok).toBe(false);
    expect(s.index.blob(hash)).toBeUndefined();
    expect(await blobFiles(s)).toBe(0);
    expect(s.spider.stats.counters.pullFailures).toBe(1);

    up.route(p, serve(good));
    const retry = await get(`${s.baseUrl}/${shardedPath(hash)}`);
    expect(retry.status).toBe(200);
    expect(retry.body.equals(good)).toBe(true);
  });

  it('streams a by-hash pull as bytes arrive, then cuts the connection if the bytes turn out wrong', async () => {
    const good = bytes(200_000, 52);
    const evil = bytes(200_000, 53);
    const hash = sha512(good);
    const up = await upstream({ [`/distfiles/${shardedPath(hash)}`]: serve(evil, { chunkSize: 20_000, delayMs: 30 }) });
    const s = await origin([{ kind: 'fastpull', url: up.url }]);
    const res = await request(`${s.baseUrl}/${shardedPath(hash)}`);
    expect(res.statusCode).toBe(200);
    expect(res.headers['content-length']).toBe(String(evil.length));
    let received = 0;
    const reading = (async () => {
      for await (const chunk of res.body) received += (chunk as Buffer).length;
    })();
    await expect(reading).rejects.toThrow();
    // Bytes did flow before the verdict, but never the whole body.
    expect(received).toBeGreaterThan(0);
    expect(received).toBeLessThan(evil.length);
    expect(s.index.blob(hash)).toBeUndefined();
    expect(await blobFiles(s)).toBe(0);
    // The failure is remembered like a miss: the next request is a quick 404, not a second bad download.
    expect((await get(`${s.baseUrl}/${shardedPath(hash)}`)).status).toBe(404);
    expect(up.requests).toHaveLength(1);
  });

  it('verifies a name pulled from a fastpull origin against the sha512 in its ETag', async () => {
    const data = bytes(50_000, 54);
    const up = await upstream({ '/distfiles/n.tgz': serve(data, { etag: `"${sha512(bytes(50_000, 55))}"` }) });
    const s = await origin([{ kind: 'fastpull', url: up.url }]);
    await expect(get(`${s.baseUrl}/distfiles/n.tgz`)).rejects.toThrow();
    expect(await blobFiles(s)).toBe(0);
    up.route('/distfiles/n.tgz', serve(data, { etag: `"${sha512(data)}"` }));
    const s2 = await origin([{ kind: 'fastpull', url: up.url }]);
    expect((await get(`${s2.baseUrl}/distfiles/n.tgz`)).body.equals(data)).toBe(true);
  });

  it('remembers a miss for negativeCacheSeconds', async () => {
    const up = await upstream();
    const s = await origin([{ kind: 'flat', url: up.url }], { negativeCacheSeconds: 60 });
    for (let i = 0; i < 5; i++) {
      const res = await get(`${s.baseUrl}/distfiles/nobody-has-this.tgz`);
      expect(res.status).toBe(404);
      expect(JSON.parse(res.body.toString()).error).toBe('NOT_FOUND');
    }
    expect(up.count('/nobody-has-this.tgz')).toBe(1);
    expect(s.spider.stats.counters.pullNegativeHits).toBe(4);
  });

  it('without a negative cache every miss asks upstream again', async () => {
    const up = await upstream();
    const s = await origin([{ kind: 'flat', url: up.url }], { negativeCacheSeconds: 0 });
    for (let i = 0; i < 3; i++) expect((await get(`${s.baseUrl}/distfiles/nope.tgz`)).status).toBe(404);
    expect(up.count('/nope.tgz')).toBe(3);
  });

  it('skips a failing upstream once its circuit breaker opens, and still uses the next one', async () => {
    const data = bytes(3_000, 50);
    const bad = await upstream({ '/a.tgz': status(500), '/b.tgz': status(500), '/c.tgz': status(500) });
    const good = await upstream({ '/c.tgz': serve(data) });
    const s = await origin(
      [
        { kind: 'flat', url: bad.url },
        { kind: 'flat', url: good.url },
      ],
      { fetchRetries: 0, upstreamFailureThreshold: 2, upstreamCooldownSeconds: 600 },
    );
    expect((await get(`${s.baseUrl}/distfiles/a.tgz`)).status).toBe(404);
    expect((await get(`${s.baseUrl}/distfiles/b.tgz`)).status).toBe(404);
    const c = await get(`${s.baseUrl}/distfiles/c.tgz`);
    expect(c.status).toBe(200);
    expect(c.body.equals(data)).toBe(true);
    expect(bad.requests).toHaveLength(2);
    expect(bad.count('/c.tgz')).toBe(0);
    expect(s.spider.stats.counters.breakerSkips).toBe(1);
    const view = await request(`${s.baseUrl}/api/v1/upstreams`, { headers: { authorization: `Bearer ${ADMIN_TOKEN}` } });
    const json = (await view.body.json()) as any;
    expect(json.mirrors.map((m: any) => m.open)).toEqual([true, false]);
    expect(json.counters.breakerSkips).toBe(1);
  });

  it('keeps serving local files and answers misses with 404 (never 503) when every upstream is down', async () => {
    const gone = await upstream();
    const deadUrl = gone.url;
    await gone.close();
    const hanging = await upstream({ '/distfiles/slow.tgz': hang, [`/distfiles/${shardedPath(sha512('x'))}`]: hang });
    const s = await origin(
      [
        { kind: 'flat', url: deadUrl },
        { kind: 'fastpull', url: hanging.url },
      ],
      { fetchRetries: 0, fetchIdleTimeoutMs: 300, fetchConnectTimeoutMs: 300 },
    );
    expect((await s.upload('local.tgz', 'local bytes')).status).toBe(201);
    const statuses: number[] = [];
    for (const p of ['/distfiles/slow.tgz', `/${shardedPath(sha512('x'))}`, '/distfiles/other.tgz']) {
      const res = await get(`${s.baseUrl}${p}`);
      statuses.push(res.status);
      const local = await get(`${s.baseUrl}/distfiles/local.tgz`);
      expect(local.status).toBe(200);
      expect(local.body.toString()).toBe('local bytes');
    }
    expect(statuses).toEqual([404, 404, 404]);
    expect(hanging.count('/distfiles/slow.tgz')).toBe(1);
    expect(s.spider.stats.counters.pullFailures).toBeGreaterThanOrEqual(2);
  });

  it('answers HEAD and Range misses from the store once the pull is committed', async () => {
    const data = bytes(20_000, 51);
    const up = await upstream({ '/h.tgz': serve(data), '/r.tgz': serve(data) });
    const s = await origin([{ kind: 'flat', url: up.url }]);
    const head = await get(`${s.baseUrl}/distfiles/h.tgz`, {}, 'HEAD');
    expect(head.status).toBe(200);
    expect(head.headers['content-length']).toBe(String(data.length));
    expect(head.headers.etag).toBe(`"${sha512(data)}"`);
    const ranged = await get(`${s.baseUrl}/distfiles/r.tgz`, { range: 'bytes=100-' });
    expect(ranged.status).toBe(206);
    expect(ranged.body.equals(data.subarray(100))).toBe(true);
  });
});

describe('pull-through deadline', () => {
  /** The pull machinery over a real store and index, with a header deadline short enough to test. */
  async function parts(upUrl: string, concurrency = 4) {
    const dir = await makeDataDir();
    const store = new BlobStore(dir);
    await store.init();
    const db = openDatabase(databaseFile(dir));
    const stats = new UpstreamStats();
    const fetcher = new Fetcher({
      connectTimeoutMs: 5_000,
      idleTimeoutMs: 30_000,
      maxRedirects: 5,
      retries: 0,
      concurrency,
      perHostConcurrency: concurrency,
      stats,
      allowCidrs: LOOPBACK_CIDRS,
    });
    const mirror = new Mirror({ kind: 'flat', url: upUrl }, { threshold: 1, cooldownMs: 600_000 });
    const pull = new PullThrough({
      ingest: new Ingest(store, new DistfileIndex(db)),
      fetcher,
      mirrors: [mirror],
      stats,
      negativeCacheSeconds: 60,
      maxBytes: 1e9,
      headerDeadlineMs: 300,
    });
    cleanup.push(async () => {
      await pull.close();
      await fetcher.close();
      db.close();
      await rm(dir, { recursive: true, force: true });
    });
    return { pull, mirror, stats };
  }
  const name = (filename: string) => ({ kind: 'name' as const, filename, form: 'flat' as const });

  it('gives up on a mirror that sends no headers in time, long before its idle timeout', async () => {
    const up = await upstream({ '/slow.tgz': hang });
    const { pull, mirror, stats } = await parts(up.url);
    const flight = (await pull.flight(name('slow.tgz')))!;
    expect(await flight.head).toBeUndefined();
    expect(await flight.result).toBeUndefined();
    expect(mirror.available()).toBe(false);
    expect(stats.counters.pullFailures).toBe(1);
    expect(pull.flight(name('slow.tgz'))).toBeUndefined();
  });

  it('does not blame a mirror for our own full connection slots', async () => {
    const up = await upstream({
      '/busy.tgz': (_req, res) => {
        res.writeHead(200, { 'content-length': 1000 });
        res.write(Buffer.alloc(10));
        return new Promise<void>(() => undefined);
      },
    });
    const { pull, mirror } = await parts(up.url, 1);
    const first = (await pull.flight(name('busy.tgz')))!;
    expect((await first.head)?.size).toBe(1000);
    const second = (await pull.flight(name('other.tgz')))!;
    expect(await second.head).toBeUndefined();
    expect(up.count('/other.tgz')).toBe(0);
    expect(mirror.available()).toBe(true);
  });
});
