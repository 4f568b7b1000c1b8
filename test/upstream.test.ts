import { afterEach, describe, expect, it } from 'vitest';
import { createHash } from 'node:crypto';
import { Fetcher, UpstreamError, type FetcherOptions } from '../src/upstream/fetcher.js';
import { parseLayoutConf } from '../src/domain/layout.js';
import { gentooPath } from '../src/upstream/mirrors.js';
import { UpstreamStats } from '../src/upstream/stats.js';
import { bytes, hang, LOOPBACK_CIDRS, serve, sha512, sleep, startUpstream, status, type Upstream } from './helpers/upstream.js';

const cleanup: (() => Promise<void>)[] = [];
afterEach(async () => {
  while (cleanup.length) await cleanup.pop()!();
});

async function upstream(routes: Parameters<typeof startUpstream>[0]): Promise<Upstream> {
  const up = await startUpstream(routes);
  cleanup.push(() => up.close());
  return up;
}

function fetcher(overrides: Partial<FetcherOptions> = {}): Fetcher {
  const f = new Fetcher({
    connectTimeoutMs: 2_000,
    idleTimeoutMs: 2_000,
    maxRedirects: 5,
    retries: 3,
    concurrency: 8,
    perHostConcurrency: 8,
    backoffBaseMs: 10,
    stats: new UpstreamStats(),
    allowCidrs: LOOPBACK_CIDRS,
    ...overrides,
  });
  cleanup.push(() => f.close());
  return f;
}

async function readAll(body: AsyncIterable<Buffer>): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of body) chunks.push(c);
  return Buffer.concat(chunks);
}

async function failure(p: Promise<unknown>): Promise<UpstreamError> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(UpstreamError);
  return err as UpstreamError;
}

describe('fetcher', () => {
  it('reads a slow body delivered in small pieces', async () => {
    const data = bytes(64 * 1024, 1);
    const up = await upstream({ '/slow': serve(data, { chunkSize: 4096, delayMs: 5 }) });
    const res = await fetcher().open(`${up.url}/slow`);
    expect(res.size).toBe(data.length);
    expect(sha512(await readAll(res.body))).toBe(sha512(data));
  });

  it('retries a 500 and then succeeds', async () => {
    const data = bytes(1000, 2);
    const good = serve(data);
    const up = await upstream({ '/flaky': (req, res, hit) => (hit < 3 ? status(500)(req, res, hit) : good(req, res, hit)) });
    const f = fetcher();
    const res = await f.open(`${up.url}/flaky`);
    expect((await readAll(res.body)).equals(data)).toBe(true);
    expect(up.count('/flaky')).toBe(3);
    expect(f.options.stats!.counters.upstreamRetries).toBe(2);
  });

  it('retries when the connection is reset before any response', async () => {
    const data = bytes(3000, 13);
    const good = serve(data);
    const up = await upstream({ '/reset': (req, res, hit) => (hit === 1 ? void req.socket.destroy() : good(req, res, hit)) });
    const res = await fetcher().open(`${up.url}/reset`);
    expect((await readAll(res.body)).equals(data)).toBe(true);
    expect(up.count('/reset')).toBe(2);
  });

  it('gives up on 5xx after the configured retries', async () => {
    const up = await upstream({ '/down': status(503) });
    const err = await failure(fetcher({ retries: 2 }).open(`${up.url}/down`));
    expect(err.failure).toBe('server-error');
    expect(err.status).toBe(503);
    expect(up.count('/down')).toBe(3);
  });

  it('does not retry a 404 or another 4xx', async () => {
    const up = await upstream({ '/forbidden': status(403) });
    const f = fetcher();
    expect((await failure(f.open(`${up.url}/missing`))).failure).toBe('not-found');
    expect(up.count('/missing')).toBe(1);
    const err = await failure(f.open(`${up.url}/forbidden`));
    expect(err.failure).toBe('client-error');
    expect(up.count('/forbidden')).toBe(1);
  });

  it('resumes a truncated body with Range and If-Range, emitting each byte once', async () => {
    const data = bytes(200_000, 3);
    const up = await upstream({ '/cut': serve(data, { dropAfter: 70_000, etag: '"v1"' }) });
    const f = fetcher();
    const res = await f.open(`${up.url}/cut`);
    const got = await readAll(res.body);
    expect(got.length).toBe(data.length);
    expect(sha512(got)).toBe(sha512(data));
    expect(up.requests).toHaveLength(2);
    const resumed = up.requests[1]!.headers;
    expect(resumed.range).toMatch(/^bytes=\d+-$/);
    expect(Number(/\d+/.exec(resumed.range!)![0])).toBeGreaterThan(0);
    expect(resumed['if-range']).toBe('"v1"');
    expect(f.options.stats!.counters.upstreamResumes).toBe(1);
  });

  it('restarts cleanly from zero when the server ignores Range', async () => {
    const data = bytes(150_000, 4);
    const up = await upstream({ '/norange': serve(data, { ranges: false, dropAfter: 50_000 }) });
    const res = await fetcher().open(`${up.url}/norange`);
    const got = await readAll(res.body);
    // The first 50 000 bytes came twice over the wire but reach the consumer once.
    expect(got.length).toBe(data.length);
    expect(sha512(got)).toBe(sha512(data));
    expect(up.requests).toHaveLength(2);
    expect(up.requests[1]!.headers.range).toBeDefined();
  });

  it('refuses to splice when the file changed between the drop and the restart', async () => {
    const v1 = bytes(100_000, 5);
    const v2 = bytes(100_000, 6);
    const first = serve(v1, { ranges: false, dropAfter: 40_000 });
    const second = serve(v2, { ranges: false });
    const up = await upstream({ '/changed': (req, res, hit) => (hit === 1 ? first(req, res, hit) : second(req, res, hit)) });
    const res = await fetcher().open(`${up.url}/changed`);
    const err = await failure(readAll(res.body));
    expect(err.failure).toBe('changed');
  });

  it('rejects a 206 that does not continue where the body was cut', async () => {
    const data = bytes(100_000, 7);
    const first = serve(data, { dropAfter: 30_000 });
    const up = await upstream({
      '/badrange': (req, res, hit) => {
        if (hit === 1) return first(req, res, hit);
        res.writeHead(206, { 'content-range': `bytes 0-${data.length - 1}/${data.length}`, 'content-length': data.length });
        res.end(data);
      },
    });
    const res = await fetcher().open(`${up.url}/badrange`);
    expect((await failure(readAll(res.body))).failure).toBe('protocol');
  });

  it('resumes when the body stalls past the idle timeout', async () => {
    const data = bytes(60_000, 8);
    const up = await upstream({
      '/stall': async (req, res, hit) => {
        if (hit === 1) {
          res.writeHead(200, { 'content-length': data.length, 'accept-ranges': 'bytes' });
          res.write(data.subarray(0, 20_000));
          return new Promise<void>(() => undefined);
        }
        return serve(data)(req, res, hit);
      },
    });
    const res = await fetcher({ idleTimeoutMs: 300 }).open(`${up.url}/stall`);
    expect(sha512(await readAll(res.body))).toBe(sha512(data));
    expect(up.requests[1]!.headers.range).toMatch(/^bytes=\d+-$/);
  });

  it('fails a hanging server with a timeout instead of waiting forever', async () => {
    const up = await upstream({ '/hang': hang });
    const err = await failure(fetcher({ idleTimeoutMs: 200, retries: 1 }).open(`${up.url}/hang`));
    expect(err.failure).toBe('network');
    expect(err.message).toMatch(/headers/);
    expect(up.count('/hang')).toBe(2);
  });

  it('follows a redirect chain, relative locations included', async () => {
    const data = bytes(500, 9);
    const up = await upstream({
      '/a': status(301, { location: '/b' }),
      '/b': status(302, { location: 'c' }),
      '/c': status(307, { location: '/final' }),
      '/final': serve(data),
    });
    const res = await fetcher().open(`${up.url}/a`);
    expect(res.url).toBe(`${up.url}/final`);
    expect((await readAll(res.body)).equals(data)).toBe(true);
  });

  it('stops at a redirect loop and at too many redirects, without retrying', async () => {
    const up = await upstream({
      '/loop1': status(302, { location: '/loop2' }),
      '/loop2': status(302, { location: '/loop1' }),
      '/r1': status(302, { location: '/r2' }),
      '/r2': status(302, { location: '/r3' }),
      '/r3': status(302, { location: '/r4' }),
      '/r4': serve(bytes(10)),
    });
    const f = fetcher({ maxRedirects: 2 });
    const loop = await failure(f.open(`${up.url}/loop1`));
    expect(loop.failure).toBe('redirect');
    expect(loop.message).toMatch(/loop/);
    expect(up.count('/loop1')).toBe(1);
    const long = await failure(f.open(`${up.url}/r1`));
    expect(long.failure).toBe('redirect');
    expect(up.count('/r4')).toBe(0);
  });

  it('refuses a redirect to a non-http scheme', async () => {
    const up = await upstream({ '/ftp': status(302, { location: 'ftp://example.invalid/x' }) });
    expect((await failure(fetcher().open(`${up.url}/ftp`))).failure).toBe('redirect');
  });

  it('keeps at most the per-host limit of requests open against one host', async () => {
    const data = bytes(20_000, 10);
    const up = await upstream({ '/f': serve(data, { chunkSize: 2000, delayMs: 10 }) });
    const f = fetcher({ perHostConcurrency: 2, concurrency: 8 });
    const results = await Promise.all(
      Array.from({ length: 6 }, async () => readAll((await f.open(`${up.url}/f`)).body)),
    );
    for (const r of results) expect(r.equals(data)).toBe(true);
    expect(up.count('/f')).toBe(6);
    expect(up.maxActive).toBeLessThanOrEqual(2);
  });

  it('releases the connection slot when the caller destroys the body', async () => {
    const data = bytes(1_000_000, 11);
    const up = await upstream({ '/big': serve(data, { chunkSize: 16_384, delayMs: 2 }) });
    const f = fetcher({ perHostConcurrency: 1, concurrency: 1 });
    const first = await f.open(`${up.url}/big`);
    first.body.destroy();
    // With one slot, a second transfer only starts if the first gave its slot back.
    const second = await f.open(`${up.url}/big`);
    expect(sha512(await readAll(second.body))).toBe(sha512(data));
    expect(f.limiter.inFlight).toBe(0);
  });

  it('aborts an in-flight transfer through the caller signal', async () => {
    const up = await upstream({ '/slow': serve(bytes(100_000, 12), { chunkSize: 1000, delayMs: 20 }) });
    const controller = new AbortController();
    const res = await fetcher().open(`${up.url}/slow`, { signal: controller.signal });
    const reading = readAll(res.body);
    await sleep(50);
    controller.abort();
    expect((await failure(reading)).failure).toBe('aborted');
  });
});

describe('GLEP 75 layout.conf', () => {
  const hash = sha512('hello\n');
  it('picks content-hash for hashes and the first name layout for names', () => {
    const layout = parseLayoutConf('[structure]\n0=content-hash SHA512 8:8:8\n1=filename-hash BLAKE2B 8\n2=flat\n').entries;
    expect(gentooPath(layout, { kind: 'hash', sha512: hash })).toBe(`e7/c2/2b/${hash}`);
    expect(gentooPath(layout, { kind: 'name', filename: 'foo-1.0.tar.gz', form: 'flat' })).toBe('4b/foo-1.0.tar.gz');
    expect(gentooPath(layout, { kind: 'name', filename: 'libsigc++-2.10.8.tar.xz', form: 'flat' })).toBe('b4/libsigc%2B%2B-2.10.8.tar.xz');
  });

  it('cannot address a hash on a mirror without content-hash; names follow the first entry Portage would use', () => {
    // MD5 is one of Portage's checksum names, so Portage files names under it: so must we ask for them there.
    const layout = parseLayoutConf('# comment\n[structure]\n0=filename-hash MD5 8\n1=flat\n[other]\n5=content-hash SHA512 8\n').entries;
    expect(layout).toEqual([{ kind: 'filename-hash', algorithm: 'MD5', cutoffs: [8] }, { kind: 'flat' }]);
    expect(gentooPath(layout, { kind: 'hash', sha512: hash })).toBeUndefined();
    const md5Dir = createHash('md5').update('a b.tgz').digest('hex').slice(0, 2);
    expect(gentooPath(layout, { kind: 'name', filename: 'a b.tgz', form: 'flat' })).toBe(`${md5Dir}/a%20b.tgz`);
  });

  it('skips an entry Portage accepts but Node cannot compute, falling to the next one', () => {
    const layout = parseLayoutConf('[structure]\n0=filename-hash WHIRLPOOL 8\n1=flat\n').entries;
    expect(layout).toHaveLength(2);
    expect(gentooPath(layout, { kind: 'name', filename: 'a.tgz', form: 'flat' })).toBe('a.tgz');
  });
});
