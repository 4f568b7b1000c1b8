import { createHash } from 'node:crypto';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NAMES_WITH_PREFIX_SQL } from '../src/db/status-queries.js';
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

  it('searches by a range on the names_current index, never a table scan', () => {
    const plan = server.db
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
