import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SmallBlobCache } from '../src/store/small-blob-cache.js';
import { runCli } from './helpers/cli.js';
import { content, flipBit, quarantined, sha512 } from './helpers/integrity.js';
import { get, startTestServer, type TestServer } from './helpers/server.js';

const blob = (n: number, fill: number) => Buffer.alloc(n, fill);

describe('SmallBlobCache', () => {
  it('keeps entries within its byte budget, evicting the least recently used first', () => {
    const cache = new SmallBlobCache(10);
    cache.set('a', 'v', blob(4, 1));
    cache.set('b', 'v', blob(4, 2));
    expect(cache.get('a', 'v')?.[0]).toBe(1); // a is now the most recently used
    cache.set('c', 'v', blob(4, 3)); // 12 bytes > 10: b, the least recently used, goes
    expect(cache.get('b', 'v')).toBeUndefined();
    expect(cache.get('a', 'v')?.[0]).toBe(1);
    expect(cache.get('c', 'v')?.[0]).toBe(3);
    expect(cache.size).toEqual({ entries: 2, bytes: 8 });
  });

  it('never holds an entry larger than the whole budget, and delete frees its bytes', () => {
    const cache = new SmallBlobCache(10);
    cache.set('big', 'v', blob(11, 0));
    expect(cache.get('big', 'v')).toBeUndefined();
    cache.set('a', 'v', blob(6, 1));
    cache.delete('a');
    expect(cache.size).toEqual({ entries: 0, bytes: 0 });
    cache.set('b', 'v', blob(10, 2));
    expect(cache.get('b', 'v')?.length).toBe(10);
  });

  it('drops an entry asked for under another version of its index row, and refills under the new one', () => {
    const cache = new SmallBlobCache(100);
    cache.set('a', '1.0', blob(4, 1));
    expect(cache.get('a', '1.1')).toBeUndefined();
    expect(cache.size).toEqual({ entries: 0, bytes: 0 });
    expect(cache.get('a', '1.0')).toBeUndefined();
    cache.set('a', '1.1', blob(4, 2));
    cache.set('a', '1.2', blob(5, 3));
    expect(cache.size).toEqual({ entries: 1, bytes: 5 });
    expect(cache.get('a', '1.2')?.[0]).toBe(3);
  });
});

describe('the small-blob cache never serves damaged bytes (issue 7, item 1)', () => {
  let server: TestServer;
  beforeAll(async () => {
    server = await startTestServer();
  });
  afterAll(async () => server.stop());

  it('after a flipped byte, `fastpull verify` in another process and a re-upload, serves the good bytes', async () => {
    const good = content('cache-heal', 10 * 1024);
    const h = sha512(good);
    const byName = `${server.baseUrl}/distfiles/cache-heal-1.0.tar.gz`;
    const byHash = `${server.baseUrl}/distfiles/${h}`;
    expect((await server.upload('cache-heal-1.0.tar.gz', good)).status).toBe(201);
    await flipBit(server.dataDir, h, 5000);
    // The first read after the damage is what the cache would keep: it must not serve (or keep) those bytes.
    for (const url of [byName, byHash]) {
      const res = await get(url);
      if (res.status === 200) expect(sha512(res.body), url).toBe(h);
    }
    // Evict nothing, restart nothing: only the index row changes, from another process.
    const verify = await runCli(['verify'], { FASTPULL_DATA_DIR: server.dataDir });
    expect(verify.code, verify.stderr).not.toBe(0);
    expect(await quarantined(server.dataDir, h)).toHaveLength(1);
    for (const url of [byName, byHash]) expect((await get(url)).status, url).toBe(404);

    expect((await server.upload('cache-heal-1.0.tar.gz', good)).status).toBe(201);
    for (const url of [byName, byHash]) {
      const res = await get(url);
      expect(res.status, url).toBe(200);
      expect(sha512(res.body), url).toBe(h);
      expect(res.headers.etag).toBe(`"${h}"`);
    }
  });

  it('refuses (404) a small blob whose bytes no longer match its hash, and never caches them', async () => {
    const good = content('cache-rot', 4096);
    const h = sha512(good);
    expect((await server.upload('cache-rot-1.0.tar.gz', good)).status).toBe(201);
    const before = server.store!.reader.smallCache.size.entries;
    await flipBit(server.dataDir, h, 100);
    for (let i = 0; i < 2; i++) expect((await get(`${server.baseUrl}/distfiles/${h}`)).status).toBe(404);
    expect(server.store!.reader.smallCache.size.entries).toBe(before);
  });
});
