import { spawn } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { pseudoRandomBytes, sha512 } from './helpers/core.js';
import { ADMIN_TOKEN, startTestServer, type TestServer } from './helpers/server.js';
import { haveTool } from './helpers/tools.js';

const WGET = '/usr/bin/wget';
const CURL = '/usr/bin/curl';
const PORTAGE_UA = 'Portage (Gentoo, https://www.gentoo.org) distfile-fetch';

let emptyRc = '/nonexistent';

function run(cmd: string, args: string[]): Promise<{ code: number | null; out: string }> {
  return new Promise((resolve, reject) => {
    // No proxy variables or wgetrc from the host may redirect these requests off loopback.
    const child = spawn(cmd, args, {
      env: { PATH: '/usr/bin:/bin', HOME: '/nonexistent', WGETRC: emptyRc, CURL_HOME: '/nonexistent' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (out += d.toString()));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, out }));
  });
}

/** Portage's FETCHCOMMAND / RESUMECOMMAND from make.globals, with the headers the domain notes name. */
function portageWget(file: string, url: string, resume = false): string[] {
  return [
    ...(resume ? ['-c'] : []),
    '-t', '3', '-T', '60', '--passive-ftp',
    '-U', PORTAGE_UA,
    '--header', 'Accept-Encoding: identity',
    '--no-proxy',
    '-O', file, url,
  ];
}

const haveWget = haveTool(WGET, 'wget');
const haveCurl = haveTool(CURL, 'curl');

describe('real download clients', () => {
  let server: TestServer;
  let work: string;
  const name = 'libsigc++-2.10.8.tar.xz';
  const data = pseudoRandomBytes(3 * 1024 * 1024 + 17, 21);
  const h = sha512(data);
  const urls: Record<string, string> = {};

  beforeAll(async () => {
    server = await startTestServer();
    work = await mkdtemp(path.join(tmpdir(), 'fastpull-clients-'));
    emptyRc = path.join(work, 'wgetrc');
    await writeFile(emptyRc, '');
    const up = await server.upload(name, data);
    expect(up.status).toBe(201);
    for (const [k, v] of Object.entries(up.json.urls as Record<string, string>)) urls[k] = server.baseUrl + v;
  });
  afterAll(async () => {
    await server.stop();
    await rm(work, { recursive: true, force: true });
  });

  describe.skipIf(!haveWget)('wget (Debian package "wget")', () => {
    it('downloads every path form with Portage\'s command line; bytes verified', async () => {
      for (const [form, url] of Object.entries(urls)) {
        const file = path.join(work, `wget-${form}`);
        const res = await run(WGET, portageWget(file, url));
        expect(res.code, res.out).toBe(0);
        expect(sha512(await readFile(file)), form).toBe(h);
      }
    });

    it('resumes a partial file with -c (Range: bytes=N-)', async () => {
      const file = path.join(work, 'wget-partial');
      await writeFile(file, data.subarray(0, 1_000_001));
      const res = await run(WGET, portageWget(file, urls.filenameHash!, true));
      expect(res.code, res.out).toBe(0);
      expect(res.out).toMatch(/206 Partial Content/);
      expect(sha512(await readFile(file))).toBe(h);
    });

    it('leaves a complete file intact with -c (416 handled)', async () => {
      const file = path.join(work, 'wget-complete');
      await writeFile(file, data);
      const res = await run(WGET, portageWget(file, urls.contentHash!, true));
      expect(res.code, res.out).toBe(0);
      expect(res.out).toMatch(/416|already fully retrieved/i);
      expect(sha512(await readFile(file))).toBe(h);
    });

    it('exits non-zero on a 404 and does not retry forever', async () => {
      const file = path.join(work, 'wget-missing');
      const res = await run(WGET, portageWget(file, `${server.baseUrl}/distfiles/missing-1.0.tar.gz`));
      expect(res.code).toBe(8);
      expect(res.out).toMatch(/404/);
    });
  });

  describe.skipIf(!haveCurl)('curl (Debian package "curl")', () => {
    it('downloads by name and by hash; bytes verified', async () => {
      for (const form of ['flat', 'direct']) {
        const file = path.join(work, `curl-${form}`);
        const res = await run(CURL, ['-fsS', '--noproxy', '*', '-o', file, urls[form]!]);
        expect(res.code, res.out).toBe(0);
        expect(sha512(await readFile(file))).toBe(h);
      }
    });

    it('resumes with -C -', async () => {
      const file = path.join(work, 'curl-partial');
      await writeFile(file, data.subarray(0, 2_000_003));
      const res = await run(CURL, ['-fsS', '--noproxy', '*', '-C', '-', '-o', file, urls.hash!]);
      expect(res.code, res.out).toBe(0);
      expect(sha512(await readFile(file))).toBe(h);
    });

    it('uploads with -T (Expect: 100-continue) and the bytes come back identical', async () => {
      const file = path.join(work, 'curl-upload-src');
      const body = pseudoRandomBytes(2 * 1024 * 1024 + 5, 22);
      await writeFile(file, body);
      const res = await run(CURL, [
        '-fsS', '--noproxy', '*', '-T', file,
        '-H', `Authorization: Bearer ${ADMIN_TOKEN}`,
        `${server.baseUrl}/api/v1/distfiles/curl-up%2B1.0.tar.gz?size=${body.length}`,
      ]);
      expect(res.code, res.out).toBe(0);
      const json = JSON.parse(res.out);
      expect(json).toMatchObject({ filename: 'curl-up+1.0.tar.gz', size: body.length, sha512: sha512(body) });
      const back = path.join(work, 'curl-upload-back');
      const dl = await run(CURL, ['-fsS', '--noproxy', '*', '-o', back, server.baseUrl + json.urls.filenameHash]);
      expect(dl.code, dl.out).toBe(0);
      expect(sha512(await readFile(back))).toBe(sha512(body));
    });

    it('gets the raw bytes even with --compressed', async () => {
      const file = path.join(work, 'curl-compressed');
      const res = await run(CURL, ['-fsS', '--noproxy', '*', '--compressed', '-o', file, urls.flat!]);
      expect(res.code, res.out).toBe(0);
      expect(sha512(await readFile(file))).toBe(h);
    });
  });
});
