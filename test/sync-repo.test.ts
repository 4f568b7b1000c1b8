import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { readdir, unlink, writeFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { Readable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BlobStore } from '../src/store/blob-store.js';
import { Ingest } from '../src/ingest/ingest.js';
import { runCli } from './helpers/cli.js';
import { manifestLine, writeRepo, type TestDist, type TestEbuild } from './helpers/repo.js';
import { startServeProcess, type ServeProcess } from './helpers/serve-process.js';
import { ADMIN_TOKEN, get, startTestServer } from './helpers/server.js';
import { openIndex, put, removeTempDirs, sha512, shard, tempDir } from './helpers/trees.js';
import { bytes, serve, type Handler, type ServeOptions } from './helpers/upstream.js';

afterAll(removeTempDirs);

/** Every request of every local upstream, in arrival order, as `<upstream> <path>`: shows fallback order. */
const wire: string[] = [];

interface LoggedUpstream {
  url: string;
  files: Map<string, Handler>;
  close(): Promise<void>;
}

/** A stand-in for a mirror on the internet: serves `files` by exact path, 404 for the rest, logs everything. */
async function startLogged(name: string): Promise<LoggedUpstream> {
  const files = new Map<string, Handler>();
  const hits = new Map<string, number>();
  const server: Server = createServer((req, res) => {
    const p = (req.url ?? '/').split('?')[0]!;
    wire.push(`${name} ${p}`);
    const hit = (hits.get(p) ?? 0) + 1;
    hits.set(p, hit);
    const handler = files.get(p);
    if (!handler) return void res.writeHead(404).end('not here');
    Promise.resolve(handler(req, res, hit)).catch(() => res.destroy());
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    files,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

async function closedPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

const CLI = fileURLToPath(new URL('../src/cli.ts', import.meta.url));
const seenFor = (needle: string) => wire.filter((w) => w.includes(needle));

interface Line {
  filename: string;
  size: number;
  sha512?: string;
  blake2b?: string;
  urls: string[];
  status: string;
  reason?: string;
  repository: string;
}

function parseLines(stdout: string): Map<string, Line[]> {
  const out = new Map<string, Line[]>();
  for (const text of stdout.split('\n').filter(Boolean)) {
    const line = JSON.parse(text) as Line;
    out.set(line.filename, [...(out.get(line.filename) ?? []), line]);
  }
  return out;
}

const statusOf = (lines: Map<string, Line[]>, name: string) => lines.get(name)?.map((l) => l.status).join(',');

/** Stores bytes under a name in a data directory, as an earlier upload would have. */
async function seed(dataDir: string, files: [string, Buffer][]): Promise<void> {
  const store = new BlobStore(dataDir);
  await store.init();
  const db = openIndex(dataDir);
  try {
    const ingest = new Ingest(store, db.index);
    for (const [filename, data] of files) await ingest.ingest(Readable.from([data]), { filename });
  } finally {
    db.close();
  }
}

/**
 * A one-upstream world: `files` served at /dl/<name> (with `options`), a repository with one package
 * per file naming that URL, and an empty data directory.
 */
async function withSmallRepo(
  name: string,
  files: TestDist[],
  options: ServeOptions,
  body: (world: { src: LoggedUpstream; repo: string; dataDir: string }) => Promise<void>,
): Promise<void> {
  const src = await startLogged(name);
  try {
    for (const f of files) src.files.set(`/dl/${f.name}`, serve(f.body, options));
    const repo = await tempDir(`repo-${name}`);
    await writeRepo(repo, files.map((f, i) => ({ cpv: `app-misc/${name}${i}-1`, srcUri: `${src.url}/dl/${f.name}`, dist: [f] })));
    await body({ src, repo, dataDir: await tempDir(`sync-${name}`) });
  } finally {
    await src.close();
  }
}

// Names real trees use that must pass untouched.
const GO_NAME = 'github.com%2F!azure%2Fazure-sdk-for-go%2F@v%2Fv40.3.0+incompatible.mod';
const GO_PATH = '/go/github.com/%21azure/azure-sdk-for-go/@v/v40.3.0+incompatible.mod';
const HEX_NAME = `${'0123456789abcdef'.repeat(8)}-src.tar.gz`;

describe('fastpull sync-repo', () => {
  let gentoo: LoggedUpstream;
  let src: LoggedUpstream;
  let tpmA: LoggedUpstream;
  let tpmB: LoggedUpstream;
  let downPort: number;
  let main: string;
  let overlay: string;
  let dataDir: string;
  let env: Record<string, string>;
  let serveProcess: ServeProcess | undefined;
  const body: Record<string, Buffer> = {};

  beforeAll(async () => {
    [gentoo, src, tpmA, tpmB] = (await Promise.all(['gentoo', 'src', 'tpmA', 'tpmB'].map(startLogged))) as [LoggedUpstream, LoggedUpstream, LoggedUpstream, LoggedUpstream];
    downPort = await closedPort();
    let nextSeed = 100;
    for (const name of [
      'present-1.0.tar.gz',
      'other-name-1.0.tar.gz',
      'foo-1.0.tar.gz',
      'foo-extras-1.0.tar.xz',
      GO_NAME,
      'sf-2.1.zip',
      'restricted-1.bin',
      'mr-1.tgz',
      'gone-1.tgz',
      'bad-1.tgz',
      'a%20b~1.tar.gz',
      'Glass.gkrellm.tar.gz',
      'glass.gkrellm.tar.gz',
      HEX_NAME,
      'shared-1.0.tar.gz',
      'kit-1.0.tgz',
      'b2only-1.tgz',
    ]) {
      body[name] = bytes(1000 + nextSeed * 37, nextSeed++);
    }
    const overlayShared = bytes(5000, 999);

    gentoo.files.set('/distfiles/layout.conf', (_q, res) => void res.end('[structure]\n0=content-hash SHA512 8:8:8\n1=flat\n'));
    const onGentoo = (name: string) => gentoo.files.set(`/distfiles/${shard(sha512(body[name]!))}/${sha512(body[name]!)}`, serve(body[name]!));
    onGentoo('foo-1.0.tar.gz');
    onGentoo('mr-1.tgz'); // mirror-restricted: the mirror must never be asked although it has it
    const onSrc = (p: string, data: Buffer) => src.files.set(p, serve(data));
    for (const name of ['present-1.0.tar.gz', 'other-name-1.0.tar.gz', 'foo-1.0.tar.gz', 'mr-1.tgz', 'restricted-1.bin', 'Glass.gkrellm.tar.gz', 'glass.gkrellm.tar.gz', HEX_NAME, 'shared-1.0.tar.gz', 'b2only-1.tgz']) {
      onSrc(`/dl/${name}`, body[name]!);
    }
    onSrc('/dl/a%20b~1.tar.gz', body['a%20b~1.tar.gz']!);
    onSrc('/dl/extras.tar.xz', body['foo-extras-1.0.tar.xz']!);
    onSrc(GO_PATH, body[GO_NAME]!);
    onSrc('/overlay/shared-1.0.tar.gz', overlayShared);
    // Wrong bytes of the right size: only the digests can tell.
    onSrc('/dl/bad-1.tgz', Buffer.from(body['bad-1.tgz']!).fill(7, 0, 10));
    tpmB.files.set('/sf/sf-2.1.zip', serve(body['sf-2.1.zip']!));
    tpmB.files.set('/kits/kit-1.0.tgz', serve(body['kit-1.0.tgz']!));

    const S = src.url;
    main = await tempDir('repo-main');
    const mainEbuilds: TestEbuild[] = [
      { cpv: 'app-misc/present-1.0', srcUri: `${S}/dl/present-1.0.tar.gz`, dist: [{ name: 'present-1.0.tar.gz', body: body['present-1.0.tar.gz']! }] },
      { cpv: 'app-misc/other-name-1.0', srcUri: `${S}/dl/other-name-1.0.tar.gz`, dist: [{ name: 'other-name-1.0.tar.gz', body: body['other-name-1.0.tar.gz']! }] },
      {
        cpv: 'app-misc/foo-1.0',
        srcUri: `${S}/dl/foo-1.0.tar.gz ssl? ( ${S}/dl/extras.tar.xz -> foo-extras-1.0.tar.xz )`,
        dist: [
          { name: 'foo-1.0.tar.gz', body: body['foo-1.0.tar.gz']! },
          { name: 'foo-extras-1.0.tar.xz', body: body['foo-extras-1.0.tar.xz']!, digests: 'reversed' },
        ],
      },
      { cpv: 'dev-go/azure-1.0', srcUri: `|| ( ${S}${GO_PATH} -> ${GO_NAME} )`, dist: [{ name: GO_NAME, body: body[GO_NAME]! }] },
      {
        cpv: 'net-misc/sf-2.1',
        srcUri: `!doc? ( x? ( mirror://tpm/sf/sf-2.1.zip ) ) mirror://nowhere/ghost.zip`,
        dist: [{ name: 'sf-2.1.zip', body: body['sf-2.1.zip']! }],
      },
      { cpv: 'app-misc/restricted-1', restrict: 'fetch strip', srcUri: `${S}/dl/restricted-1.bin`, dist: [{ name: 'restricted-1.bin', body: body['restricted-1.bin']! }] },
      { cpv: 'app-misc/mr-1', restrict: 'bindist? ( mirror )', srcUri: `${S}/dl/mr-1.tgz`, dist: [{ name: 'mr-1.tgz', body: body['mr-1.tgz']! }] },
      { cpv: 'app-misc/gone-1', srcUri: `${S}/dl/gone-1.tgz`, dist: [{ name: 'gone-1.tgz', body: body['gone-1.tgz']! }] },
      { cpv: 'app-misc/bad-1', srcUri: `${S}/dl/bad-1.tgz`, dist: [{ name: 'bad-1.tgz', body: body['bad-1.tgz']! }] },
      {
        cpv: 'x11-themes/traps-1',
        srcUri: `${S}/dl/a%20b~1.tar.gz ${S}/dl/Glass.gkrellm.tar.gz ${S}/dl/glass.gkrellm.tar.gz ${S}/dl/${HEX_NAME}`,
        dist: ['a%20b~1.tar.gz', 'Glass.gkrellm.tar.gz', 'glass.gkrellm.tar.gz', HEX_NAME].map((name) => ({ name, body: body[name]! })),
      },
      { cpv: 'app-misc/shared-1.0', srcUri: `${S}/dl/shared-1.0.tar.gz`, dist: [{ name: 'shared-1.0.tar.gz', body: body['shared-1.0.tar.gz']! }] },
    ];
    await writeRepo(main, mainEbuilds, `# test mirrors\ntpm ${tpmA.url}/ ${tpmB.url}\n`);

    // An overlay: mirror:// comes from the main repository (--mirrors-from), one name clashes with it,
    // one entry has only SHA512 and one only BLAKE2B.
    overlay = await tempDir('repo-overlay');
    await writeRepo(overlay, [
      { cpv: 'app-misc/shared-1.0', srcUri: `${S}/overlay/shared-1.0.tar.gz`, dist: [{ name: 'shared-1.0.tar.gz', body: overlayShared }] },
      { cpv: 'app-misc/kit-1.0', srcUri: `mirror://tpm/kits/kit-1.0.tgz`, dist: [{ name: 'kit-1.0.tgz', body: body['kit-1.0.tgz']!, digests: 'sha512' }] },
      { cpv: 'app-misc/b2only-1', srcUri: `${S}/dl/b2only-1.tgz`, dist: [{ name: 'b2only-1.tgz', body: body['b2only-1.tgz']!, digests: 'blake2b' }] },
    ]);
    body['overlay:shared-1.0.tar.gz'] = overlayShared;

    // The origin already holds one file under its name and one file's bytes under another name.
    dataDir = await tempDir('sync-data');
    await seed(dataDir, [
      ['present-1.0.tar.gz', body['present-1.0.tar.gz']!],
      ['uploaded-as-this.tar.gz', body['other-name-1.0.tar.gz']!],
    ]);

    env = {
      FASTPULL_DATA_DIR: dataDir,
      // The first mirror is down; the second is a GLEP 75 mirror read through its layout.conf.
      FASTPULL_UPSTREAMS: `flat=http://127.0.0.1:${downPort}/distfiles,gentoo=${gentoo.url}`,
      FASTPULL_FETCH_RETRIES: '0',
      // The upstreams here are on loopback, which the fetcher's SSRF guard refuses unless allowed.
      FASTPULL_FETCH_ALLOW_CIDRS: '127.0.0.0/8',
    };
  });

  afterAll(async () => {
    serveProcess?.child.kill('SIGKILL');
    await Promise.all([gentoo, src, tpmA, tpmB].map((u) => u?.close()));
  });

  const sync = (args: string[], extraEnv: Record<string, string> = {}) =>
    runCli(['sync-repo', '--json', main, overlay, '--mirrors-from', main, ...args], { ...env, ...extraEnv });

  it('fetches what is missing, in fallback order, verified against every digest, and reports every status', async () => {
    wire.length = 0;
    const res = await sync([]);
    expect(res.code, res.stderr).toBe(1);
    const lines = parseLines(res.stdout);

    expect(statusOf(lines, 'present-1.0.tar.gz')).toBe('present');
    expect(statusOf(lines, 'other-name-1.0.tar.gz')).toBe('attached');
    for (const name of ['foo-1.0.tar.gz', 'foo-extras-1.0.tar.xz', GO_NAME, 'sf-2.1.zip', 'mr-1.tgz', 'kit-1.0.tgz', 'b2only-1.tgz']) {
      expect(statusOf(lines, name), name).toBe('fetched');
    }
    for (const name of ['a%20b~1.tar.gz', 'Glass.gkrellm.tar.gz', 'glass.gkrellm.tar.gz', HEX_NAME]) expect(statusOf(lines, name), name).toBe('fetched');
    expect(statusOf(lines, 'shared-1.0.tar.gz')).toBe('fetched,fetched');
    expect(lines.get('shared-1.0.tar.gz')!.map((l) => l.repository)).toEqual([main, overlay]);
    expect(statusOf(lines, 'restricted-1.bin')).toBe('fetch-restricted');
    expect(statusOf(lines, 'gone-1.tgz')).toBe('missing');
    expect(lines.get('gone-1.tgz')![0]!.reason).toMatch(/upstream answered 404/);
    expect(statusOf(lines, 'bad-1.tgz')).toBe('failed');
    expect(lines.get('bad-1.tgz')![0]!.reason).toMatch(/digest mismatch: .*sha512 expected .*nothing was stored/);
    expect(res.stderr).toMatch(/mirror:\/\/nowhere\/ghost\.zip: no such mirror/);
    expect(res.stderr).toMatch(/shared-1\.0\.tar\.gz: .* has other digests .* both are kept/);
    expect(res.stderr).toMatch(/present:\s+1\n\s+attached:\s+1\n\s+fetched:\s+13\n\s+fetch-restricted:\s+1\n\s+missing:\s+1\n\s+failed:\s+1/);

    // Candidate order: configured mirrors (the down one, then the GLEP 75 one by content hash), then SRC_URI.
    const extras = lines.get('foo-extras-1.0.tar.xz')![0]!;
    const extrasHash = sha512(body['foo-extras-1.0.tar.xz']!);
    expect(extras.urls).toEqual([
      `http://127.0.0.1:${downPort}/distfiles/foo-extras-1.0.tar.xz`,
      `${gentoo.url}/distfiles/${shard(extrasHash)}/${extrasHash}`,
      `${src.url}/dl/extras.tar.xz`,
    ]);
    expect(seenFor(extrasHash).concat(seenFor('extras.tar.xz'))).toEqual([`gentoo /distfiles/${shard(extrasHash)}/${extrasHash}`, 'src /dl/extras.tar.xz']);
    expect(wire.indexOf(`gentoo /distfiles/${shard(extrasHash)}/${extrasHash}`)).toBeLessThan(wire.indexOf('src /dl/extras.tar.xz'));
    // Found on the mirror: SRC_URI is never asked.
    expect(seenFor('/dl/foo-1.0.tar.gz')).toEqual([]);
    // mirror://tpm expands in thirdpartymirrors order: the first mirror 404s, the second serves.
    expect(seenFor('sf-2.1.zip')).toEqual(['tpmA /sf/sf-2.1.zip', 'tpmB /sf/sf-2.1.zip']);
    expect(lines.get('kit-1.0.tgz')![0]!.urls.slice(-2)).toEqual([`${tpmA.url}/kits/kit-1.0.tgz`, `${tpmB.url}/kits/kit-1.0.tgz`]);
    // RESTRICT=mirror: only SRC_URI, although the mirror has the file; RESTRICT=fetch: nobody is asked.
    expect(lines.get('mr-1.tgz')![0]!.urls).toEqual([`${src.url}/dl/mr-1.tgz`]);
    expect(seenFor(sha512(body['mr-1.tgz']!))).toEqual([]);
    expect(seenFor('restricted-1.bin')).toEqual([]);
    // Literal names reach the upstream as written in SRC_URI.
    expect(seenFor(GO_PATH)).toEqual([`src ${GO_PATH}`]);
    expect(seenFor('a%20b~1')).toEqual(['src /dl/a%20b~1.tar.gz']);

    const db = openIndex(dataDir);
    try {
      // The wrong bytes were never stored; everything fetched is stored under its exact name.
      const wrong = sha512(Buffer.from(body['bad-1.tgz']!).fill(7, 0, 10));
      expect(db.index.blob(wrong)).toBeUndefined();
      expect(db.index.history('bad-1.tgz')).toEqual([]);
      for (const name of [GO_NAME, 'a%20b~1.tar.gz', 'Glass.gkrellm.tar.gz', 'glass.gkrellm.tar.gz', HEX_NAME, 'b2only-1.tgz', 'other-name-1.0.tar.gz']) {
        expect(db.index.servableByName(name)?.sha512, name).toBe(sha512(body[name]!));
      }
      // The same name with other digests: both kept, the later repository's is current.
      const shared = db.index.history('shared-1.0.tar.gz');
      expect(shared.map((r) => r.sha512).sort()).toEqual([sha512(body['shared-1.0.tar.gz']!), sha512(body['overlay:shared-1.0.tar.gz']!)].sort());
      expect(db.index.servableByName('shared-1.0.tar.gz')?.sha512).toBe(sha512(body['overlay:shared-1.0.tar.gz']!));
      expect(db.index.history('other-name-1.0.tar.gz')[0]!.attached_by).toBe('cli:sync-repo');
      // The run is in the audit log, like every command that changes the index.
      const audit = db.index.db.prepare(`SELECT actor, detail FROM audit_log WHERE action = 'sync-repo'`).all() as { actor: string; detail: string }[];
      expect(audit).toHaveLength(1);
      expect(audit[0]!.actor).toMatch(/^cli:/);
      expect(audit[0]!.detail).toMatch(/1 present, 1 attached, 13 fetched, 1 fetch-restricted, 1 missing, 1 failed$/);
    } finally {
      db.close();
    }

    // Served by name, trap names included.
    const server = await startTestServer({ dataDir });
    try {
      for (const name of [GO_NAME, 'a%20b~1.tar.gz', 'Glass.gkrellm.tar.gz', 'glass.gkrellm.tar.gz', HEX_NAME]) {
        const r = await get(`${server.baseUrl}/distfiles/${encodeURIComponent(name)}`);
        expect(r.status, name).toBe(200);
        expect(r.body.equals(body[name]!), name).toBe(true);
      }
    } finally {
      await server.stop();
    }
  });

  it('a re-run is incremental: nothing stored is downloaded again, only what is missing or failed is retried', async () => {
    wire.length = 0;
    const res = await sync([]);
    expect(res.code, res.stderr).toBe(1);
    const lines = parseLines(res.stdout);
    for (const [name, entries] of lines) {
      if (['restricted-1.bin', 'gone-1.tgz', 'bad-1.tgz'].includes(name)) continue;
      expect(entries.every((e) => e.status === 'present'), `${name}: ${statusOf(lines, name)}`).toBe(true);
    }
    expect(statusOf(lines, 'gone-1.tgz')).toBe('missing');
    expect(statusOf(lines, 'bad-1.tgz')).toBe('failed');
    // Only the layout probe and the two retried files touched the network.
    expect(wire.filter((w) => !/layout\.conf|gone-1|bad-1/.test(w) && !w.includes(sha512(body['gone-1.tgz']!)) && !w.includes(sha512(body['bad-1.tgz']!)))).toEqual([]);
    // The conflicting name keeps pointing at the later repository's file.
    const db = openIndex(dataDir);
    expect(db.index.servableByName('shared-1.0.tar.gz')?.sha512).toBe(sha512(body['overlay:shared-1.0.tar.gz']!));
    db.close();
  });

  it('--dry-run changes nothing and lists what would be fetched', async () => {
    wire.length = 0;
    const res = await sync(['--dry-run']);
    expect(res.code, res.stderr).toBe(1);
    const lines = parseLines(res.stdout);
    expect(statusOf(lines, 'gone-1.tgz')).toBe('missing');
    expect(lines.get('gone-1.tgz')![0]!.reason).toMatch(/would fetch \(3 URLs\)/);
    expect(statusOf(lines, 'foo-1.0.tar.gz')).toBe('present');
    expect(wire.filter((w) => !w.includes('layout.conf'))).toEqual([]);

    // Without --json: one line per file that is not simply present, then the summary, on stdout.
    const text = await runCli(['sync-repo', '--dry-run', main, overlay, '--mirrors-from', main], env);
    expect(text.code).toBe(1);
    expect(text.stdout).toContain('MISSING gone-1.tgz (would fetch (3 URLs))');
    expect(text.stdout).toContain('FETCH-RESTRICTED restricted-1.bin (RESTRICT=fetch');
    expect(text.stdout).not.toContain('foo-1.0.tar.gz');
    expect(text.stdout).toMatch(/sync-repo summary \(.*, dry run\): 18 distfiles\n\s+present:\s+15\n/);

    // A tree without metadata/md5-cache (a git checkout before egencache): only the upstreams could help.
    const bare = await tempDir('repo-bare');
    await put(bare, 'app-misc/lonely/Manifest', `${manifestLine({ name: 'lonely-1.tgz', body: Buffer.from('lonely') })}\n`);
    const alone = await runCli(['sync-repo', '--dry-run', '--json', bare], { FASTPULL_DATA_DIR: dataDir });
    expect(alone.code).toBe(1);
    expect(alone.stderr).toMatch(/no metadata\/md5-cache \(generate it with egencache\)/);
    expect(parseLines(alone.stdout).get('lonely-1.tgz')![0]).toMatchObject({
      status: 'missing',
      urls: [],
      reason: 'no ebuild names it in SRC_URI and no upstream is configured',
    });
  });

  it('exits 2 when it cannot run: bad arguments, a missing directory, another sync-repo holding the data directory', async () => {
    const noRepo = await runCli(['sync-repo', '/nonexistent/repo'], env);
    expect(noRepo.code).toBe(2);
    expect(noRepo.stderr).toMatch(/\/nonexistent\/repo is not a directory/);
    expect((await runCli(['sync-repo', main, '--jobs', '0'], env)).code).toBe(2);
    expect((await runCli(['sync-repo'], env)).code).toBe(2);
    const noData = await runCli(['sync-repo', main], { ...env, FASTPULL_DATA_DIR: '/nonexistent/data' });
    expect(noData.code).toBe(2);
    expect(noData.stderr).toMatch(/data directory \/nonexistent\/data does not exist/);
    const noToken = await runCli(['sync-repo', main, '--origin', 'http://127.0.0.1:1'], env);
    expect(noToken.code).toBe(2);
    expect(noToken.stderr).toMatch(/no token/);
    // A live process (this test runner) holds the lock: the second sync-repo refuses to start.
    await writeFile(path.join(dataDir, 'sync-repo.lock'), `${process.pid}\n`);
    try {
      const locked = await runCli(['sync-repo', main], env);
      expect(locked.code).toBe(2);
      expect(locked.stderr).toMatch(new RegExp(`another sync-repo \\(pid ${process.pid}\\) is running`));
    } finally {
      await unlink(path.join(dataDir, 'sync-repo.lock'));
    }
  });

  it('--origin drives a running server through the API', async () => {
    const originData = await tempDir('sync-origin');
    serveProcess = await startServeProcess({
      FASTPULL_DATA_DIR: originData,
      FASTPULL_ADMIN_TOKEN: ADMIN_TOKEN,
      FASTPULL_FETCH_RETRIES: '0',
      FASTPULL_FETCH_ALLOW_CIDRS: '127.0.0.0/8',
    });
    const origin = serveProcess.baseUrl;
    const auth = { authorization: `Bearer ${ADMIN_TOKEN}` };
    // Bytes the origin holds under another name only.
    const put = await request(`${origin}/api/v1/distfiles/elsewhere.tar.gz`, { method: 'PUT', body: body['foo-1.0.tar.gz']!, headers: auth });
    expect(put.statusCode).toBe(201);
    await put.body.dump();

    const remote = { FASTPULL_TOKEN: ADMIN_TOKEN, FASTPULL_DATA_DIR: '/nonexistent' };
    const args = ['--origin', origin, '--poll-ms', '100'];
    wire.length = 0;
    const first = await sync(args, remote);
    expect(first.code, first.stderr).toBe(1);
    const lines = parseLines(first.stdout);
    expect(statusOf(lines, 'foo-1.0.tar.gz')).toBe('attached');
    for (const name of ['present-1.0.tar.gz', 'other-name-1.0.tar.gz', 'foo-extras-1.0.tar.xz', GO_NAME, 'sf-2.1.zip', 'mr-1.tgz', 'a%20b~1.tar.gz', HEX_NAME, 'kit-1.0.tgz', 'b2only-1.tgz']) {
      expect(statusOf(lines, name), name).toBe('fetched');
    }
    expect(statusOf(lines, 'shared-1.0.tar.gz')).toBe('fetched,fetched');
    expect(statusOf(lines, 'restricted-1.bin')).toBe('fetch-restricted');
    expect(statusOf(lines, 'gone-1.tgz')).toBe('missing');
    expect(statusOf(lines, 'bad-1.tgz')).toBe('failed');
    expect(lines.get('bad-1.tgz')![0]!.reason).toMatch(/digest mismatch/);
    // The origin downloaded them itself: the mirror saw requests, in the same order as locally.
    expect(seenFor('sf-2.1.zip')).toEqual(['tpmA /sf/sf-2.1.zip', 'tpmB /sf/sf-2.1.zip']);

    const name = await get(`${origin}/distfiles/${encodeURIComponent(GO_NAME)}`);
    expect(name.body.equals(body[GO_NAME]!)).toBe(true);
    const shared = await get(`${origin}/distfiles/shared-1.0.tar.gz`);
    expect(shared.body.equals(body['overlay:shared-1.0.tar.gz']!)).toBe(true);

    // Again: everything stored is present, found with HEAD requests on hash paths.
    wire.length = 0;
    const second = await sync(args, remote);
    expect(second.code).toBe(1);
    const again = parseLines(second.stdout);
    expect(statusOf(again, 'foo-1.0.tar.gz')).toBe('present');
    expect(statusOf(again, GO_NAME)).toBe('present');
    expect(statusOf(again, 'b2only-1.tgz')).toBe('present');
    expect(statusOf(again, 'shared-1.0.tar.gz')).toBe('present,present');
    expect(wire.filter((w) => w.includes('sf-2.1.zip'))).toEqual([]);
  });

  it('fills the origin until coverage of every Manifest reports nothing missing', async () => {
    // The world is fixed: the good bytes are published, the lost file reappears; restricted files are wanted too.
    src.files.set('/dl/bad-1.tgz', serve(body['bad-1.tgz']!));
    src.files.set('/dl/gone-1.tgz', serve(body['gone-1.tgz']!));
    const local = await sync(['--include-restricted']);
    expect(local.code, local.stderr).toBe(0);
    const lines = parseLines(local.stdout);
    expect(statusOf(lines, 'bad-1.tgz')).toBe('fetched');
    expect(statusOf(lines, 'gone-1.tgz')).toBe('fetched');
    expect(statusOf(lines, 'restricted-1.bin')).toBe('fetched');

    const remote = await sync(['--include-restricted', '--origin', serveProcess!.baseUrl, '--poll-ms', '100'], { FASTPULL_TOKEN: ADMIN_TOKEN });
    expect(remote.code, remote.stderr).toBe(0);

    // coverage checks by SHA512: the BLAKE2B-only entry is left out of its list.
    const manifests = [
      ...['app-misc/present', 'app-misc/other-name', 'app-misc/foo', 'dev-go/azure', 'net-misc/sf', 'app-misc/restricted', 'app-misc/mr', 'app-misc/gone', 'app-misc/bad', 'x11-themes/traps', 'app-misc/shared'].map((p) =>
        path.join(main, p, 'Manifest'),
      ),
      path.join(overlay, 'app-misc/shared/Manifest'),
      path.join(overlay, 'app-misc/kit/Manifest'),
    ];
    const server = await startTestServer({ dataDir });
    try {
      const ofLocal = await runCli(['coverage', '--origin', server.baseUrl, ...manifests]);
      expect(ofLocal.code, ofLocal.stdout + ofLocal.stderr).toBe(0);
      expect(ofLocal.stderr).toMatch(/coverage: 16 of 16 DIST entries present/);
    } finally {
      await server.stop();
    }
    const ofRemote = await runCli(['coverage', '--origin', serveProcess!.baseUrl, ...manifests]);
    expect(ofRemote.code, ofRemote.stdout + ofRemote.stderr).toBe(0);
  });
});

describe('fastpull sync-repo: every Manifest digest counts', () => {
  it('refuses bytes whose SHA512 matches when the BLAKE2B or the size in the Manifest does not', async () => {
    const good = bytes(3000, 700);
    const files = [
      { name: 'wrong-blake2b-1.tgz', body: bytes(3000, 701), claim: { blake2b: 'f'.repeat(128) } },
      { name: 'wrong-size-1.tgz', body: bytes(3000, 702), claim: { size: 2999 } },
      { name: 'honest-1.tgz', body: good },
    ];
    await withSmallRepo('liar', files, {}, async ({ repo, dataDir }) => {
      const res = await runCli(['sync-repo', '--json', repo], { FASTPULL_DATA_DIR: dataDir, FASTPULL_FETCH_ALLOW_CIDRS: '127.0.0.0/8' });
      expect(res.code).toBe(1);
      const lines = parseLines(res.stdout);
      expect(statusOf(lines, 'honest-1.tgz')).toBe('fetched');
      expect(statusOf(lines, 'wrong-blake2b-1.tgz')).toBe('failed');
      expect(lines.get('wrong-blake2b-1.tgz')![0]!.reason).toMatch(/digest mismatch: blake2b expected f{128}, got [0-9a-f]{128}; nothing was stored/);
      expect(statusOf(lines, 'wrong-size-1.tgz')).toBe('failed');
      expect(lines.get('wrong-size-1.tgz')![0]!.reason).toMatch(/upstream announces 3000 bytes, 2999 were declared/);
      const db = openIndex(dataDir);
      try {
        expect(db.index.blob(sha512(files[0]!.body))).toBeUndefined();
        expect(db.index.blob(sha512(files[1]!.body))).toBeUndefined();
        expect(db.index.servableByName('honest-1.tgz')?.sha512).toBe(sha512(good));
      } finally {
        db.close();
      }
    });
  });
});

const hasScript = existsSync('/usr/bin/script');
if (!hasScript) console.warn('sync-repo terminal test skipped: /usr/bin/script (util-linux) is not installed');

describe('fastpull sync-repo: on a terminal', () => {
  // Under CI a missing script(1) must fail the test rather than skip it.
  it.runIf(hasScript || process.env.CI === 'true')('draws the progress bar while downloading', async () => {
    const files = Array.from({ length: 3 }, (_, i) => ({ name: `tty-${i}.tar.gz`, body: bytes(256 * 1024, 900 + i) }));
    await withSmallRepo('tty', files, {}, async ({ repo, dataDir }) => {
      // script(1) gives the child a real pseudo-terminal, so stdout and stderr are TTYs there.
      const command = `${process.execPath} --import tsx ${CLI} sync-repo ${repo}`;
      const out = await new Promise<string>((resolve, reject) => {
        const child = spawn('/usr/bin/script', ['-qec', command, '/dev/null'], {
          env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '/tmp', FASTPULL_DATA_DIR: dataDir, FASTPULL_FETCH_ALLOW_CIDRS: '127.0.0.0/8' },
          stdio: ['ignore', 'pipe', 'inherit'],
        });
        let text = '';
        child.stdout.on('data', (d: Buffer) => (text += d.toString()));
        child.on('error', reject);
        child.on('close', () => resolve(text));
      });
      expect(out).toContain('\r\x1b[K[################] 100% 3/3 files 768.0 KiB/768.0 KiB ');
      for (const f of files) expect(out).toContain(`FETCHED ${f.name}`);
      expect(out).toMatch(/fetched:\s+3/);
    });
  });
});

describe('fastpull sync-repo: the fetcher\'s address rules', () => {
  it('downloads nothing from an address the guard refuses (loopback without FASTPULL_FETCH_ALLOW_CIDRS)', async () => {
    const file = { name: 'inside-1.tgz', body: bytes(2000, 850) };
    await withSmallRepo('guarded', [file], {}, async ({ repo, dataDir }) => {
      wire.length = 0;
      const res = await runCli(['sync-repo', '--json', repo], { FASTPULL_DATA_DIR: dataDir, FASTPULL_FETCH_RETRIES: '0' });
      expect(res.code).toBe(1);
      const line = parseLines(res.stdout).get(file.name)![0]!;
      expect(line.status).toBe('failed');
      expect(line.reason).toMatch(/address not allowed/);
      expect(wire.filter((w) => w.startsWith('guarded '))).toEqual([]);
    });
  });
});

describe('fastpull sync-repo: storage high watermark', () => {
  it('queues nothing above FASTPULL_HIGH_WATERMARK_BYTES, like POST /api/v1/fetches', async () => {
    const file = { name: 'later-1.tgz', body: bytes(2000, 800) };
    await withSmallRepo('full', [file], {}, async ({ repo, dataDir }) => {
      await seed(dataDir, [['already-here.tgz', bytes(5000, 801)]]);
      wire.length = 0;
      const res = await runCli(['sync-repo', '--json', repo], {
        FASTPULL_DATA_DIR: dataDir,
        FASTPULL_FETCH_ALLOW_CIDRS: '127.0.0.0/8',
        FASTPULL_HIGH_WATERMARK_BYTES: '4096',
      });
      expect(res.code).toBe(1);
      const lines = parseLines(res.stdout);
      expect(statusOf(lines, file.name)).toBe('failed');
      expect(lines.get(file.name)![0]!.reason).toMatch(/high watermark.*nothing was queued/);
      expect(wire.filter((w) => w.startsWith('full '))).toEqual([]);
    });
  });
});

describe('fastpull sync-repo: interrupted and resumed', () => {
  it('continues after kill -9 of the CLI mid-download: nothing stored twice, its fetch items adopted', async () => {
    const files = Array.from({ length: 5 }, (_, i) => ({ name: `big-${i}.tar.gz`, body: bytes(1024 * 1024, 500 + i) }));
    // Slow enough that the kill lands while a download is running.
    await withSmallRepo('slow', files, { chunkSize: 64 * 1024, delayMs: 60 }, async ({ repo, dataDir }) => {
      const env = {
        FASTPULL_DATA_DIR: dataDir,
        FASTPULL_FETCH_ALLOW_CIDRS: '127.0.0.0/8',
        PATH: process.env.PATH ?? '',
        HOME: process.env.HOME ?? '/tmp',
      };

      const child = spawn(process.execPath, ['--import', 'tsx', CLI, 'sync-repo', '--json', '--jobs', '1', repo], { env, stdio: ['ignore', 'pipe', 'pipe'] });
      let out = '';
      const exited = new Promise<string | number | null>((resolve) => child.on('exit', (code, signal) => resolve(signal ?? code)));
      await new Promise<void>((resolve, reject) => {
        child.stdout.on('data', (d: Buffer) => {
          out += d.toString();
          // One file done, the next one on the wire: kill it hard.
          if (out.includes('"status":"fetched"') && wire.filter((w) => w.startsWith('slow ')).length >= 2) resolve();
        });
        child.on('exit', () => reject(new Error(`sync-repo exited before it could be killed:\n${out}`)));
      });
      child.kill('SIGKILL');
      expect(await exited).toBe('SIGKILL');
      expect(await readdir(dataDir)).toContain('sync-repo.lock');

      const db = openIndex(dataDir);
      const states = () =>
        db.index.db.prepare('SELECT state, count(*) AS n FROM fetch_items GROUP BY state ORDER BY state').all() as { state: string; n: number }[];
      try {
        const before = Object.fromEntries(states().map((r) => [r.state, r.n]));
        expect(before.done).toBeGreaterThanOrEqual(1);
        expect((before.downloading ?? 0) + (before.queued ?? 0)).toBeGreaterThanOrEqual(1);
        expect(before.failed).toBeUndefined();
      } finally {
        db.close();
      }

      const resumed = await runCli(['sync-repo', '--json', repo], { FASTPULL_DATA_DIR: dataDir, FASTPULL_FETCH_ALLOW_CIDRS: '127.0.0.0/8' });
      expect(resumed.code, resumed.stderr).toBe(0);
      const lines = parseLines(resumed.stdout);
      const done = parseLines(out);
      for (const f of files) {
        // Finished before the kill: present now; the rest fetched by the resumed run.
        expect(statusOf(lines, f.name), f.name).toBe(done.has(f.name) ? 'present' : 'fetched');
      }
      const after = openIndex(dataDir);
      try {
        for (const f of files) expect(after.index.servableByName(f.name)?.sha512).toBe(sha512(f.body));
        // The killed run's job was adopted, not queued again beside a new one.
        const jobs = after.index.db.prepare('SELECT count(*) AS n FROM fetch_jobs').get() as { n: number };
        expect(jobs.n).toBe(1);
        const left = after.index.db.prepare(`SELECT count(*) AS n FROM fetch_items WHERE state != 'done'`).get() as { n: number };
        expect(left.n).toBe(0);
      } finally {
        after.close();
      }
      // No temp file of the killed process is left behind, and the lock was released.
      expect(await readdir(path.join(dataDir, 'tmp'))).toEqual([]);
      expect((await readdir(dataDir)).includes('sync-repo.lock')).toBe(false);
    });
  });

  it('stops cleanly on SIGTERM: summary, exit 1, lock released, running downloads back in the queue', async () => {
    const files = Array.from({ length: 3 }, (_, i) => ({ name: `term-${i}.tar.gz`, body: bytes(1024 * 1024, 600 + i) }));
    await withSmallRepo('term', files, { chunkSize: 64 * 1024, delayMs: 60 }, async ({ repo, dataDir }) => {
      const env = { FASTPULL_DATA_DIR: dataDir, FASTPULL_FETCH_ALLOW_CIDRS: '127.0.0.0/8', PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '/tmp' };
      const child = spawn(process.execPath, ['--import', 'tsx', CLI, 'sync-repo', '--jobs', '1', repo], { env, stdio: ['ignore', 'pipe', 'pipe'] });
      let out = '';
      child.stdout.on('data', (d: Buffer) => (out += d.toString()));
      child.stderr.on('data', (d: Buffer) => (out += d.toString()));
      const exited = new Promise<number | string | null>((resolve) => child.on('exit', (code, signal) => resolve(code ?? signal)));
      // Once the first download is on the wire.
      while (!wire.some((w) => w.startsWith('term '))) await new Promise((r) => setTimeout(r, 20));
      child.kill('SIGTERM');
      expect(await exited, out).toBe(1);
      expect(out).toMatch(/interrupted: run the same command again to continue/);
      expect(await readdir(dataDir)).not.toContain('sync-repo.lock');
      const db = openIndex(dataDir);
      try {
        const states = db.index.db.prepare('SELECT DISTINCT state FROM fetch_items').all() as { state: string }[];
        expect(states.map((r) => r.state)).toEqual(['queued']);
      } finally {
        db.close();
      }
    });
  });
});
