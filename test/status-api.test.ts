import { createHash } from 'node:crypto';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readFile, statfs } from 'node:fs/promises';
import { NAMES_WITH_PREFIX_NOCASE_SQL, NAMES_WITH_PREFIX_SQL } from '../src/db/status-queries.js';
import { TEST_BACKEND } from './helpers/backend.js';
import { ADMIN_TOKEN, get, startTestServer, type TestServer } from './helpers/server.js';

const sha512 = (b: Buffer | string) => createHash('sha512').update(b).digest('hex');

async function getJson(url: string) {
  const res = await get(url);
  return { status: res.status, headers: res.headers, json: JSON.parse(res.body.toString()) as any };
}

describe('status and search API', () => {
  let server: TestServer;
  const hostile = `a<b>"q'&amp;.tar.gz`;
  beforeAll(async () => {
    server = await startTestServer();
    for (const [name, body] of [
      ['foo-1.0.tar.gz', 'hello\n'],
      ['foo-1.1.tar.gz', 'hello again\n'],
      ['foo_bar-2.tar.gz', 'underscore\n'],
      ['foo%x-3.tar.gz', 'percent\n'],
      ['Foo-upper.tar.gz', 'upper\n'],
      ['libsigc++-2.10.8.tar.xz', 'sigc\n'],
      [hostile, 'hostile\n'],
      ['dup-a.tar.gz', 'same bytes\n'],
      ['dup-b.tar.gz', 'same bytes\n'],
      ['gone-1.tar.gz', 'detached later\n'],
      ['reroll-1.0.tar.gz', 'first roll\n'],
      ['reroll-1.0.tar.gz', 'second roll\n'],
      ['ünï-😀-1.tar.gz', 'unicode\n'],
    ] as const) {
      const up = await server.upload(name, body);
      expect(up.status, name).toBeLessThan(300);
    }
    const del = await request(`${server.baseUrl}/api/v1/distfiles/gone-1.tar.gz`, {
      method: 'DELETE',
      headers: { authorization: `Bearer ${ADMIN_TOKEN}` },
    });
    expect(del.statusCode).toBe(200);
    await del.body.dump();
  });
  afterAll(async () => {
    await server?.stop();
  });

  it('reports totals: deduplicated blobs, their bytes, and attached names only', async () => {
    const { status, headers, json } = await getJson(`${server.baseUrl}/api/v1/status`);
    expect(status).toBe(200);
    expect(headers['content-type']).toMatch(/^application\/json/);
    const bodies = ['hello\n', 'hello again\n', 'underscore\n', 'percent\n', 'upper\n', 'sigc\n', 'hostile\n',
      'same bytes\n', 'detached later\n', 'first roll\n', 'second roll\n', 'unicode\n'];
    expect(json.totals).toEqual({
      blobs: bodies.length,
      bytes: bodies.reduce((n, b) => n + Buffer.byteLength(b), 0),
      // 13 uploads, one name uploaded twice, one name detached.
      names: 11,
      quarantinedBlobs: 0,
      quarantinedBytes: 0,
      pinnedBlobs: 0,
      // dup-a and dup-b share one blob.
      dedupSavedBytes: Buffer.byteLength('same bytes\n'),
    });
  });

  it('lists recent ingests newest first, with download paths that serve the bytes', async () => {
    const { json } = await getJson(`${server.baseUrl}/api/v1/status?recent=3`);
    expect(json.recent.map((r: any) => r.filename)).toEqual(['ünï-😀-1.tar.gz', 'reroll-1.0.tar.gz', 'reroll-1.0.tar.gz']);
    const [, newest, older] = json.recent;
    expect(newest.current).toBe(true);
    expect(newest.sha512).toBe(sha512('second roll\n'));
    expect(older.current).toBe(false);
    expect(older.sha512).toBe(sha512('first roll\n'));
    // A name path would serve the newer roll, so the older one is offered by hash only.
    expect(Object.keys(older.urls).sort()).toEqual(['contentHash', 'direct', 'hash']);
    for (const url of Object.values(older.urls) as string[]) {
      expect((await get(server.baseUrl + url)).body.toString()).toBe('first roll\n');
    }
    for (const url of Object.values(newest.urls) as string[]) {
      expect((await get(server.baseUrl + url)).body.toString()).toBe('second roll\n');
    }
    expect(new Date(newest.attachedAt).getTime()).toBeGreaterThan(0);
  });

  it('finds names by case-sensitive prefix, treating % and _ literally', async () => {
    const names = async (prefix: string) =>
      (await getJson(`${server.baseUrl}/api/v1/search?${new URLSearchParams({ prefix })}`)).json.results.map(
        (r: any) => r.filename,
      );
    expect(await names('foo')).toEqual(['foo%x-3.tar.gz', 'foo-1.0.tar.gz', 'foo-1.1.tar.gz', 'foo_bar-2.tar.gz']);
    expect(await names('foo-1.')).toEqual(['foo-1.0.tar.gz', 'foo-1.1.tar.gz']);
    expect(await names('foo_')).toEqual(['foo_bar-2.tar.gz']);
    expect(await names('foo%')).toEqual(['foo%x-3.tar.gz']);
    expect(await names('Foo')).toEqual(['Foo-upper.tar.gz']);
    expect(await names('libsigc++')).toEqual(['libsigc++-2.10.8.tar.xz']);
    expect(await names('a<b>"')).toEqual([hostile]);
    expect(await names('nothing-like-this')).toEqual([]);
    // Beyond ASCII the range still holds: UTF-8 byte order is code point order, and U+10FFFF is the top.
    expect(await names('ünï-')).toEqual(['ünï-😀-1.tar.gz']);
    expect(await names('ünï-😀')).toEqual(['ünï-😀-1.tar.gz']);
    expect(await names('ünï-😁')).toEqual([]);
  });

  it('leaves out detached names', async () => {
    const { json } = await getJson(`${server.baseUrl}/api/v1/search?prefix=gone`);
    expect(json.results).toEqual([]);
  });

  it('shows every attached hash of a name, the served one first, with working links', async () => {
    const { json } = await getJson(`${server.baseUrl}/api/v1/search?prefix=reroll-1.0.tar.gz`);
    expect(json.results).toHaveLength(1);
    const [result] = json.results;
    expect(result.filename).toBe('reroll-1.0.tar.gz');
    expect(result.hashes.map((h: any) => [h.sha512, h.current, h.size])).toEqual([
      [sha512('second roll\n'), true, 12],
      [sha512('first roll\n'), false, 11],
    ]);
    expect(result.hashes[0].urls.flat).toBe('/distfiles/reroll-1.0.tar.gz');
    expect(result.hashes[0].urls.filenameHash).toMatch(/^\/distfiles\/[0-9a-f]{2}\/reroll-1\.0\.tar\.gz$/);
    expect(result.hashes[1].urls.flat).toBeUndefined();
  });

  it('percent-encodes names in links so they resolve to the same file', async () => {
    const { json } = await getJson(`${server.baseUrl}/api/v1/search?prefix=libsigc`);
    const urls = json.results[0].hashes[0].urls;
    expect(urls.flat).toBe('/distfiles/libsigc%2B%2B-2.10.8.tar.xz');
    expect(urls.filenameHash).toBe('/distfiles/b4/libsigc%2B%2B-2.10.8.tar.xz');
    for (const url of Object.values(urls) as string[]) {
      expect((await get(server.baseUrl + url)).body.toString(), url).toBe('sigc\n');
    }
  });

  // SQLite's query planner (EXPLAIN QUERY PLAN); the PostgreSQL twin's indexes are the names area's.
  it.skipIf(TEST_BACKEND !== 'local')('searches by a range on the names_current index, never a table scan', () => {
    const plan = server.db!
      .prepare(`EXPLAIN QUERY PLAN ${NAMES_WITH_PREFIX_SQL}`)
      .all('foo', 'foo\u{10ffff}', 20)
      .map((row: any) => row.detail as string);
    expect(plan).toEqual([expect.stringMatching(/^SEARCH names USING (COVERING )?INDEX names_current \(filename>\? AND filename<\?\)$/)]);
  });

  it('caps results at limit and says more match', async () => {
    const { json } = await getJson(`${server.baseUrl}/api/v1/search?prefix=foo&limit=2`);
    expect(json.results.map((r: any) => r.filename)).toEqual(['foo%x-3.tar.gz', 'foo-1.0.tar.gz']);
    expect(json.truncated).toBe(true);
    const all = await getJson(`${server.baseUrl}/api/v1/search?prefix=foo&limit=4`);
    expect(all.json.truncated).toBe(false);
  });

  it.each([
    ['no prefix', ''],
    ['empty prefix', 'prefix='],
    ['prefix over 255 characters', `prefix=${'a'.repeat(256)}`],
    ['limit 0', 'prefix=foo&limit=0'],
    ['limit over 100', 'prefix=foo&limit=101'],
    ['limit not a number', 'prefix=foo&limit=ten'],
  ])('answers 400 JSON to a search with %s', async (_label, query) => {
    const { status, headers, json } = await getJson(`${server.baseUrl}/api/v1/search?${query}`);
    expect(status).toBe(400);
    expect(headers['content-type']).toMatch(/^application\/json/);
    expect(json.error).toBe('BAD_REQUEST');
    expect(typeof json.message).toBe('string');
  });

  it('answers 400 to a recent count over the cap', async () => {
    expect((await getJson(`${server.baseUrl}/api/v1/status?recent=101`)).status).toBe(400);
  });

  it('needs no token', async () => {
    const res = await request(`${server.baseUrl}/api/v1/search?prefix=foo`, {
      headers: { authorization: 'Bearer wrong-token' },
    });
    expect(res.statusCode).toBe(200);
    await res.body.dump();
  });

  it('serves the page and its assets with a script-locking CSP', async () => {
    const page = await get(`${server.baseUrl}/`);
    expect(page.status).toBe(200);
    expect(page.headers['content-type']).toBe('text/html; charset=utf-8');
    expect(page.headers['content-security-policy']).toMatch(/script-src 'self'/);
    expect(page.body.toString()).toContain('src="/ui/status.js"');
    for (const [path, type] of [
      ['/ui/status.js', 'text/javascript; charset=utf-8'],
      ['/ui/status.css', 'text/css; charset=utf-8'],
    ]) {
      const res = await get(server.baseUrl + path);
      expect(res.status, path).toBe(200);
      expect(res.headers['content-type']).toBe(type);
      expect(res.body.length).toBeGreaterThan(100);
    }
  });

  it('reports version, uptime, readiness, disk against its limits, and the last hour of traffic', async () => {
    expect((await get(`${server.baseUrl}/distfiles/no-such-file.tar.gz`)).status).toBe(404);
    const { json } = await getJson(`${server.baseUrl}/api/v1/status`);
    const pkg = JSON.parse(await readFile(new URL('../package.json', import.meta.url), 'utf8'));
    expect(json.server.version).toBe(pkg.version);
    expect(json.server.uptimeSeconds).toBeGreaterThanOrEqual(0);
    expect(Date.parse(json.server.startedAt)).toBeLessThanOrEqual(Date.now());
    expect(json.readiness).toMatchObject({ ready: true, failing: [] });
    expect(json.readiness.checks.disk.ok).toBe(true);
    const fs = await statfs(server.dataDir);
    expect(json.disk.freeBytes).toBeGreaterThan(0);
    expect(json.disk.totalBytes).toBe(fs.blocks * fs.bsize);
    expect(json.disk.minFreeBytes).toBe(server.config.minFreeBytes);
    expect(json.disk.highWatermarkBytes).toBeNull();
    expect(json.upstreams).toEqual({ pullThrough: false, mirrors: [] });

    const minutes = json.traffic.minutes as { at: string; requests: number; bytes: number; s2xx: number; s3xx: number; s4xx: number; s5xx: number }[];
    expect(minutes).toHaveLength(60);
    const times = minutes.map((m) => Date.parse(m.at));
    for (let i = 1; i < times.length; i++) expect(times[i]! - times[i - 1]!).toBe(60_000);
    expect(times[59]!).toBeLessThanOrEqual(Date.now());
    expect(Date.now() - times[59]!).toBeLessThan(120_000);
    const sum = (k: 'requests' | 'bytes' | 's2xx' | 's4xx' | 's5xx') => minutes.reduce((n, m) => n + m[k], 0);
    // 13 uploads and a deletion in beforeAll, then downloads and searches by the tests above.
    expect(sum('s2xx')).toBeGreaterThanOrEqual(14);
    expect(sum('s4xx')).toBeGreaterThanOrEqual(1);
    expect(sum('s5xx')).toBe(0);
    for (const m of minutes) expect(m.s2xx + m.s3xx + m.s4xx + m.s5xx).toBe(m.requests);
    expect(sum('bytes')).toBeGreaterThan(0);
  });

  it('matches case-insensitively when asked, and pages with next/after', async () => {
    const page = async (query: Record<string, string>) =>
      (await getJson(`${server.baseUrl}/api/v1/search?${new URLSearchParams(query)}`)).json;
    const all = await page({ prefix: 'FOO', ignoreCase: 'true' });
    expect(all.results.map((r: any) => r.filename)).toEqual([
      'foo%x-3.tar.gz',
      'foo-1.0.tar.gz',
      'foo-1.1.tar.gz',
      'Foo-upper.tar.gz',
      'foo_bar-2.tar.gz',
    ]);
    expect(all.ignoreCase).toBe(true);
    expect((await page({ prefix: 'FOO' })).results).toEqual([]);

    const seen: string[] = [];
    let query: Record<string, string> = { prefix: 'foo', ignoreCase: 'true', limit: '2' };
    for (let i = 0; i < 5; i++) {
      const p = await page(query);
      seen.push(...p.results.map((r: any) => r.filename));
      if (!p.truncated) {
        expect(p.next).toBeUndefined();
        break;
      }
      expect(p.next).toBe(seen[seen.length - 1]);
      query = { ...query, after: p.next };
    }
    expect(seen).toEqual(all.results.map((r: any) => r.filename));

    const first = await page({ prefix: 'foo', limit: '2' });
    expect(first.results.map((r: any) => r.filename)).toEqual(['foo%x-3.tar.gz', 'foo-1.0.tar.gz']);
    const second = await page({ prefix: 'foo', limit: '2', after: first.next });
    expect(second.results.map((r: any) => r.filename)).toEqual(['foo-1.1.tar.gz', 'foo_bar-2.tar.gz']);
    expect(second.truncated).toBe(false);
  });

  it('pages through names that differ only in case without losing one', async () => {
    for (const name of ['CaseTie.tar.gz', 'casetie.tar.gz', 'CASETIE.tar.gz']) {
      expect((await server.upload(name, `tie ${name}\n`)).status).toBe(201);
    }
    const seen: string[] = [];
    let after: string | undefined;
    for (let i = 0; i < 5; i++) {
      const query: Record<string, string> = { prefix: 'caseTIE', ignoreCase: 'true', limit: '1', ...(after ? { after } : {}) };
      const { json } = await getJson(`${server.baseUrl}/api/v1/search?${new URLSearchParams(query)}`);
      seen.push(...json.results.map((r: any) => r.filename));
      if (!json.truncated) break;
      after = json.next;
    }
    expect(seen).toEqual(['CASETIE.tar.gz', 'CaseTie.tar.gz', 'casetie.tar.gz']);
  });

  it('answers 400 to a cursor that does not match the prefix', async () => {
    const { status, json } = await getJson(`${server.baseUrl}/api/v1/search?prefix=foo&after=zzz`);
    expect(status).toBe(400);
    expect(json.error).toBe('BAD_REQUEST');
  });

  // SQLite's query planner, as above.
  it.skipIf(TEST_BACKEND !== 'local')('searches case-insensitively by a range on names_current_nocase, never a table scan', () => {
    const plan = server.db!
      .prepare(`EXPLAIN QUERY PLAN ${NAMES_WITH_PREFIX_NOCASE_SQL}`)
      .all({ lo: 'foo', hi: 'foo\u{10ffff}', after: '', limit: 20 })
      .map((row: any) => row.detail as string);
    expect(plan[0]).toMatch(/^SEARCH names USING (COVERING )?INDEX names_current_nocase \(filename>\? AND filename<\?\)$/);
    // Rows come in index order, so LIMIT stops the range early: no sort, no scan. (DISTINCT only
    // remembers the names already returned.)
    expect(plan.slice(1)).toEqual(plan.length > 1 ? ['USE TEMP B-TREE FOR DISTINCT'] : []);
  });

  it('keeps bare hash paths working beside the page routes', async () => {
    const res = await get(`${server.baseUrl}/${sha512('hello\n')}`);
    expect(res.status).toBe(200);
    expect(res.body.toString()).toBe('hello\n');
  });
});

describe('status on an empty store', () => {
  let server: TestServer;
  beforeAll(async () => {
    server = await startTestServer();
  });
  afterAll(async () => {
    await server?.stop();
  });

  it('reports zeros and no recent ingests', async () => {
    const { status, json } = await getJson(`${server.baseUrl}/api/v1/status`);
    expect(status).toBe(200);
    expect(json.totals).toEqual({ blobs: 0, bytes: 0, names: 0, quarantinedBlobs: 0, quarantinedBytes: 0, pinnedBlobs: 0, dedupSavedBytes: 0 });
    expect(json.recent).toEqual([]);
  });
});
