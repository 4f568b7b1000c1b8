import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { storedBlobs, storedBytes } from './helpers/backend.js';
import { errorBody, rawRequest, sha512 } from './helpers/core.js';
import { get, startTestServer, type TestServer } from './helpers/server.js';

/** Reads an INI file the way Python's configparser (which Portage uses for layout.conf) does. */
function parseIni(text: string): Map<string, Map<string, string>> {
  const sections = new Map<string, Map<string, string>>();
  let current: Map<string, string> | undefined;
  for (const line of text.split(/\r?\n/)) {
    if (/^\s*([#;].*)?$/.test(line)) continue;
    const section = /^\[([^\]]+)\]\s*$/.exec(line);
    if (section) {
      if (sections.has(section[1]!)) throw new Error(`duplicate section ${section[1]}`);
      current = new Map();
      sections.set(section[1]!, current);
      continue;
    }
    const kv = /^([^=:\s][^=:]*?)\s*[=:]\s*(.*?)\s*$/.exec(line);
    if (!kv || !current) throw new Error(`configparser would reject line: ${JSON.stringify(line)}`);
    if (current.has(kv[1]!)) throw new Error(`duplicate key ${kv[1]}`);
    current.set(kv[1]!, kv[2]!);
  }
  return sections;
}

/**
 * Portage's own reading of [structure] (portage.package.ebuild.fetch.MirrorLayoutConfig):
 * keys 0,1,2… in order until one is missing; each value split on whitespace.
 */
function portageLayouts(text: string): string[][] {
  const structure = parseIni(text).get('structure');
  if (!structure) throw new Error('no [structure] section');
  const out: string[][] = [];
  for (let i = 0; structure.has(String(i)); i++) out.push(structure.get(String(i))!.split(/\s+/));
  return out;
}

describe('layout.conf', () => {
  let server: TestServer;
  beforeAll(async () => {
    server = await startTestServer();
  });
  afterAll(async () => server.stop());

  for (const p of ['/distfiles/layout.conf', '/layout.conf']) {
    it(`${p} parses as Portage reads it, with a short, non-immutable TTL`, async () => {
      const res = await get(server.baseUrl + p);
      expect(res.status).toBe(200);
      expect(res.headers['content-type']).toMatch(/^text\/plain/);
      const cc = String(res.headers['cache-control']);
      expect(cc).toMatch(/max-age=\d+/);
      expect(cc).not.toMatch(/immutable/);
      expect(Number(/max-age=(\d+)/.exec(cc)![1])).toBeLessThan(31536000);
      expect(res.headers['content-encoding']).toBeUndefined();

      const layouts = portageLayouts(res.body.toString('utf8'));
      expect(layouts).toEqual([['content-hash', 'SHA512', '8:8:8'], ['filename-hash', 'BLAKE2B', '8'], ['flat']]);
      for (const [, algo, cutoffs] of layouts.slice(0, 2)) {
        expect(algo).toBe(algo!.toUpperCase());
        for (const c of cutoffs!.split(':')) expect(Number(c) % 4).toBe(0);
      }
    });
  }

  it('HEAD /distfiles/layout.conf carries the same length as GET, without a body', async () => {
    const full = await get(server.baseUrl + '/distfiles/layout.conf');
    const head = await get(server.baseUrl + '/distfiles/layout.conf', {}, 'HEAD');
    expect(head.status).toBe(200);
    expect(head.body.length).toBe(0);
    expect(head.headers['content-length']).toBe(String(full.body.length));
  });
});

describe('every path form serves the same bytes', () => {
  let server: TestServer;
  beforeAll(async () => {
    server = await startTestServer();
  });
  afterAll(async () => server.stop());

  it('serves the domain worked example foo-1.0.tar.gz under all six forms', async () => {
    const h = sha512('hello\n');
    expect(h.startsWith('e7c22b99')).toBe(true);
    const up = await server.upload('foo-1.0.tar.gz', 'hello\n');
    expect(up.status).toBe(201);
    const paths = [
      `/distfiles/e7/c2/2b/${h}`,
      `/e7/c2/2b/${h}`,
      `/distfiles/${h}`,
      `/${h}`,
      '/distfiles/4b/foo-1.0.tar.gz',
      '/distfiles/foo-1.0.tar.gz',
    ];
    for (const p of paths) {
      const res = await get(server.baseUrl + p);
      expect(res.status, p).toBe(200);
      expect(res.body.toString('utf8'), p).toBe('hello\n');
      expect(res.headers['content-length'], p).toBe('6');
      expect(res.headers['content-type'], p).toBe('application/octet-stream');
    }
    // Only the hash forms exist outside /distfiles/: a bare name is not a path Funtoo or Portage uses.
    for (const p of ['/foo-1.0.tar.gz', '/4b/foo-1.0.tar.gz']) expect((await get(server.baseUrl + p)).status, p).toBe(404);
    // The upload's own list of URLs names the same forms.
    expect(Object.values(up.json.urls).sort()).toEqual(
      [paths[0], paths[1], paths[2], paths[4], paths[5]].sort(),
    );
  });

  it('puts sha512("abc") under dd/af/35', async () => {
    const h = sha512('abc');
    expect(h.startsWith('ddaf35a1')).toBe(true);
    const up = await server.upload('abc.txt', 'abc');
    expect(up.json.urls.contentHash).toBe(`/distfiles/dd/af/35/${h}`);
    expect((await get(`${server.baseUrl}/dd/af/35/${h}`)).body.toString()).toBe('abc');
    // The store keeps the same shape on disk (or in the bucket).
    expect(await storedBlobs(server)).toContain(`dd/af/35/${h}`);
    expect((await storedBytes(server, h))?.toString()).toBe('abc');
  });

  it('finds libsigc++ under b4 and linux-6.6 under d5, + sent encoded or raw', async () => {
    await server.upload('libsigc++-2.10.8.tar.xz', 'sigc bytes');
    await server.upload('linux-6.6.tar.xz', 'kernel bytes');
    for (const p of [
      '/distfiles/b4/libsigc%2B%2B-2.10.8.tar.xz',
      '/distfiles/b4/libsigc++-2.10.8.tar.xz',
      '/distfiles/libsigc%2B%2B-2.10.8.tar.xz',
      '/distfiles/libsigc++-2.10.8.tar.xz',
      '/distfiles/b4/libsigc%2b%2b-2.10.8.tar.xz',
    ]) {
      const res = await rawRequest(server.baseUrl, p);
      expect(res.status, p).toBe(200);
      expect(res.body.toString(), p).toBe('sigc bytes');
    }
    expect((await rawRequest(server.baseUrl, '/distfiles/d5/linux-6.6.tar.xz')).body.toString()).toBe('kernel bytes');
  });

  it('never reads + as a space, in either direction', async () => {
    await server.upload('a b.tar.gz', 'with a space');
    await server.upload('a+b.tar.gz', 'with a plus');
    expect((await rawRequest(server.baseUrl, '/distfiles/a+b.tar.gz')).body.toString()).toBe('with a plus');
    expect((await rawRequest(server.baseUrl, '/distfiles/a%2Bb.tar.gz')).body.toString()).toBe('with a plus');
    expect((await rawRequest(server.baseUrl, '/distfiles/a%20b.tar.gz')).body.toString()).toBe('with a space');
  });

  it('decodes %40, %3A and %2C exactly once, hashing the decoded name', async () => {
    const name = 'pkg@2.0:beta,1.tar.gz';
    await server.upload(name, 'odd name');
    const { filenameHashDir } = await import('../src/domain/layout.js');
    const dir = filenameHashDir(name);
    for (const p of [
      `/distfiles/${dir}/pkg%402.0%3Abeta%2C1.tar.gz`,
      `/distfiles/pkg%402.0%3Abeta%2C1.tar.gz`,
      `/distfiles/${dir}/pkg@2.0:beta,1.tar.gz`,
    ]) {
      const res = await rawRequest(server.baseUrl, p);
      expect(res.status, p).toBe(200);
      expect(res.body.toString(), p).toBe('odd name');
    }
    // Decoding twice would turn %2540 into @; once leaves the literal "%40", a different name.
    expect((await rawRequest(server.baseUrl, '/distfiles/pkg%25402.0%3Abeta%2C1.tar.gz')).status).toBe(404);
  });

  it('serves a 255-byte name of 4-byte UTF-8 characters under both name forms', async () => {
    const name = '\u{1F600}'.repeat(63) + 'abc';
    expect(Buffer.byteLength(name)).toBe(255);
    const up = await server.upload(name, 'emoji name');
    expect(up.status).toBe(201);
    for (const p of [up.json.urls.flat, up.json.urls.filenameHash]) {
      const res = await rawRequest(server.baseUrl, p);
      expect(res.status, p).toBe(200);
      expect(res.body.toString()).toBe('emoji name');
    }
  });

  it('answers 404 for a filename under the wrong filename-hash directory', async () => {
    await server.upload('foo-1.0.tar.gz', 'hello\n');
    for (const dir of ['00', '4c', 'b4']) {
      const res = await rawRequest(server.baseUrl, `/distfiles/${dir}/foo-1.0.tar.gz`);
      expect(res.status, dir).toBe(404);
      expect(errorBody(res.body).error).toBe('NOT_FOUND');
    }
    // Upper-case hex is not the layout's spelling.
    expect((await rawRequest(server.baseUrl, '/distfiles/4B/foo-1.0.tar.gz')).status).toBe(404);
  });

  it('answers 404, never a file, when the shards do not match the hash', async () => {
    const h = sha512('hello\n'); // e7c22b…
    await server.upload('foo-1.0.tar.gz', 'hello\n');
    for (const p of [
      `/distfiles/e7/c2/2c/${h}`,
      `/distfiles/c2/e7/2b/${h}`,
      `/e7/c2/2c/${h}`,
      `/E7/C2/2B/${h}`,
      `/distfiles/e7c/22/b/${h}`,
      `/distfiles/e7/c2/${h}`,
      `/e7/c2/2b/${h.toUpperCase()}`,
      `/distfiles/${h.toUpperCase()}`,
      `/${h.slice(0, 127)}`,
    ]) {
      const res = await rawRequest(server.baseUrl, p);
      expect(res.status, p).toBe(404);
      expect(res.body.toString(), p).not.toContain('hello');
    }
  });

  it('answers 404 for an unknown hash or name under every form', async () => {
    const h = sha512('never uploaded');
    for (const p of [
      `/distfiles/${h.slice(0, 2)}/${h.slice(2, 4)}/${h.slice(4, 6)}/${h}`,
      `/${h.slice(0, 2)}/${h.slice(2, 4)}/${h.slice(4, 6)}/${h}`,
      `/distfiles/${h}`,
      `/${h}`,
      '/distfiles/nothing-1.0.tar.gz',
      '/nothing-1.0.tar.gz',
    ]) {
      const res = await rawRequest(server.baseUrl, p);
      expect(res.status, p).toBe(404);
    }
  });

  it('refuses traversal and NUL tricks with 400/404 and never serves a file outside the store', async () => {
    await server.upload('foo-1.0.tar.gz', 'hello\n');
    // Every SQLite file starts with these 16 bytes; with PostgreSQL there is no index file to leak, the check stays.
    const secret = await readFile(path.join(server.dataDir, 'index.sqlite')).catch(() => Buffer.from('SQLite format 3\0'));
    const attempts = [
      '/distfiles/..%2Findex.sqlite',
      '/distfiles/%2e%2e/index.sqlite',
      '/distfiles/%2E%2E/%2E%2E/%2E%2E/etc/passwd',
      '/distfiles/..%2f..%2f..%2f..%2fetc%2fpasswd',
      '/distfiles/../index.sqlite',
      '/distfiles/%2e%2e',
      '/distfiles/..',
      '/../../../../etc/passwd',
      '/%2e%2e/%2e%2e/%2e%2e/etc/passwd',
      '/distfiles/foo-1.0.tar.gz%00',
      '/distfiles/foo-1.0.tar.gz%00.txt',
      '/distfiles/4b/foo-1.0.tar.gz%00',
      '/distfiles/%00',
      '/distfiles/foo%5C..%5Cindex.sqlite',
      '/distfiles/%2Fetc%2Fpasswd',
      '/distfiles/%c0%ae%c0%ae%2findex.sqlite',
      '/distfiles/foo%zz',
      '/blobs/e7/c2/2b/' + sha512('hello\n'),
      '/index.sqlite',
      '/tmp/x',
      // Longer than a filename may be (255 bytes), and longer than the router's segment limit.
      `/distfiles/${'a'.repeat(300)}`,
      `/distfiles/${'a'.repeat(3000)}`,
      `/${'%e2%82%ac'.repeat(400)}`,
    ];
    const passwd = await readFile('/etc/passwd', 'utf8').catch(() => 'root:x:0:0');
    for (const p of attempts) {
      const res = await rawRequest(server.baseUrl, p);
      expect([400, 404], p).toContain(res.status);
      expect(res.headers['content-type'], p).toMatch(/^application\/json/);
      const body = errorBody(res.body);
      expect(['BAD_FILENAME', 'BAD_REQUEST', 'NOT_FOUND'], p).toContain(body.error);
      expect(res.body.includes(secret.subarray(0, 16)), p).toBe(false);
      expect(res.body.toString(), p).not.toContain(passwd.split('\n')[0]);
    }
  });
});
