import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { link, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { extendedJsonNumber, parseBlosRecord } from '../src/ingest/tree.js';
import { filenameHashDir } from '../src/domain/layout.js';
import { runCli } from './helpers/cli.js';
import { get, startTestServer, type TestServer } from './helpers/server.js';
import { blake2b, distLine, openIndex, put, removeTempDirs, sha256, sha512, shard, tempDir } from './helpers/trees.js';

afterAll(removeTempDirs);

const CLI = fileURLToPath(new URL('../src/cli.ts', import.meta.url));

function importCli(dataDir: string, ...args: string[]) {
  return runCli(['import', ...args], { FASTPULL_DATA_DIR: dataDir });
}

async function storedPaths(dataDir: string): Promise<string[]> {
  const out: string[] = [];
  const walk = async (dir: string): Promise<void> => {
    for (const e of await readdir(dir, { withFileTypes: true })) {
      if (e.isDirectory()) await walk(path.join(dir, e.name));
      else out.push(e.name);
    }
  };
  await walk(path.join(dataDir, 'blobs'));
  return out.sort();
}

describe('import: flat DISTDIR', () => {
  it('imports every distfile by name, ignores Portage leftovers, and a re-run finds everything present', async () => {
    const tree = await tempDir('flat');
    const dataDir = await tempDir('data');
    const files: Record<string, Buffer> = {
      'foo-1.0.tar.gz': Buffer.from('hello\n'),
      'libsigc++-2.10.8.tar.xz': randomBytes(300_000),
      'empty.patch': Buffer.alloc(0),
    };
    for (const [name, body] of Object.entries(files)) await put(tree, name, body);
    await put(tree, 'bar-2.tar.gz.__download__', 'partial');
    await put(tree, '.locks/foo', 'x');
    await put(tree, 'baz.tar.gz._checksum_failure_.abc123', 'bad');

    const first = await importCli(dataDir, tree);
    expect(first.code, first.stderr).toBe(0);
    expect(first.stderr).toMatch(/as flat: 3 files/);
    expect(first.stdout).toMatch(/imported:\s+3/);
    expect(first.stdout).toMatch(/ignored: 2/);
    expect(first.stdout).toMatch(/partial download/);

    const db = openIndex(dataDir);
    try {
      for (const [name, body] of Object.entries(files)) {
        const row = db.index.servableByName(name);
        expect(row?.sha512, name).toBe(sha512(body));
        expect(row?.size).toBe(body.length);
        expect(db.index.blob(sha512(body))?.pinned).toBe(0);
      }
      expect(db.index.servableByName('bar-2.tar.gz.__download__')).toBeUndefined();
    } finally {
      db.close();
    }
    expect(await storedPaths(dataDir)).toEqual(Object.values(files).map((b) => sha512(b)).sort());

    // The resume shortcut trusts the index for a (name, size) already imported, so it does not read
    // the file: prove it by swapping in other bytes of the same size, which only --rehash notices.
    const swapped = randomBytes(300_000);
    await writeFile(path.join(tree, 'libsigc++-2.10.8.tar.xz'), swapped);
    const second = await importCli(dataDir, tree);
    expect(second.code, second.stderr).toBe(0);
    expect(second.stdout).toMatch(/imported:\s+0/);
    expect(second.stdout).toMatch(/already present:\s+3/);
    expect(await storedPaths(dataDir)).not.toContain(sha512(swapped));

    const rehash = await importCli(dataDir, tree, '--rehash');
    expect(rehash.code, rehash.stderr).toBe(0);
    expect(rehash.stdout).toMatch(/imported:\s+1/);
    expect(rehash.stdout).toMatch(/already present:\s+2/);
    const db2 = openIndex(dataDir);
    try {
      // The name now serves the newest bytes; the older pair stays in the history.
      expect(db2.index.servableByName('libsigc++-2.10.8.tar.xz')?.sha512).toBe(sha512(swapped));
      expect(db2.index.history('libsigc++-2.10.8.tar.xz')).toHaveLength(2);
    } finally {
      db2.close();
    }
  });

  it('rejects a missing directory and bad options with exit 2', async () => {
    const dataDir = await tempDir('data');
    const missing = await importCli(dataDir, path.join(dataDir, 'nope'));
    expect(missing.code).toBe(2);
    expect(missing.stderr).toMatch(/not a directory/);
    const badKind = await importCli(dataDir, dataDir, '--kind', 'zip');
    expect(badKind.code).toBe(2);
    expect(badKind.stderr).toMatch(/--kind must be one of/);
  });
});

describe('import: GLEP 75 mirror tree', () => {
  it('reads layout.conf, imports every layout at once, and skips a blob whose bytes contradict its path', async () => {
    const tree = await tempDir('glep75');
    const dataDir = await tempDir('data');
    await put(
      tree,
      'layout.conf',
      '[structure]\n0=content-hash SHA512 8:8:8\n1=filename-hash BLAKE2B 8\n2=flat\n3=content-hash MD5 8\n',
    );
    const byHash = randomBytes(50_000);
    const named = Buffer.from('hello\n');
    const legacy = Buffer.from('an old flat file\n');
    const good = randomBytes(10_000);
    const hashFile = await put(tree, `${shard(sha512(byHash))}/${sha512(byHash)}`, byHash);
    // Mirrors hard-link one file into several layouts; both paths must end up as one blob with a name.
    const goodByName = await put(tree, `${filenameHashDir('good-1.tar.gz')}/good-1.tar.gz`, good);
    await put(tree, `${shard(sha512(good))}/placeholder`, '');
    await rm(path.join(tree, `${shard(sha512(good))}/placeholder`));
    await link(goodByName, path.join(tree, `${shard(sha512(good))}/${sha512(good)}`));
    await put(tree, `${filenameHashDir('foo-1.0.tar.gz')}/foo-1.0.tar.gz`, named);
    await put(tree, 'legacy-0.1.tar.bz2', legacy);
    // Bytes that are not what the content-hash path says they are.
    const claimed = sha512('the real bytes');
    await put(tree, `${shard(claimed)}/${claimed}`, 'tampered bytes');
    // A name filed under the wrong filename-hash directory matches no layout.
    const wrongDir = filenameHashDir('misfiled.tar.gz') === '00' ? '01' : '00';
    await put(tree, `${wrongDir}/misfiled.tar.gz`, 'x');
    expect(hashFile).toContain(sha512(byHash));

    const res = await importCli(dataDir, tree);
    expect(res.code, res.stdout + res.stderr).toBe(1);
    expect(res.stderr).toMatch(/as glep75 \(layouts: content-hash SHA512 8:8:8, filename-hash BLAKE2B 8, flat\)/);
    expect(res.stderr).toMatch(/layout "content-hash MD5 8" ignored/);
    expect(res.stderr).toMatch(new RegExp(`corrupt: ${shard(claimed)}/${claimed}: sha512 is [0-9a-f]{16}…, its content-hash SHA512 path says ${claimed.slice(0, 16)}`));
    expect(res.stdout).toMatch(/corrupt: 1/);
    expect(res.stdout).toMatch(/misfiled\.tar\.gz: matches no layout of layout\.conf/);

    const db = openIndex(dataDir);
    try {
      expect(db.index.blob(claimed)).toBeUndefined();
      expect(db.index.blob(sha512('tampered bytes'))).toBeUndefined();
      const hashOnly = db.index.blob(sha512(byHash));
      expect(hashOnly?.size).toBe(byHash.length);
      // Stored by hash alone: pinned, so garbage collection keeps it although no name points at it.
      expect(hashOnly?.pinned).toBe(1);
      expect(db.index.namesOfBlob(sha512(byHash))).toHaveLength(0);
      expect(db.index.servableByName('foo-1.0.tar.gz')?.sha512).toBe(sha512(named));
      expect(db.index.servableByName('legacy-0.1.tar.bz2')?.sha512).toBe(sha512(legacy));
      expect(db.index.servableByName('good-1.tar.gz')?.sha512).toBe(sha512(good));
      expect(db.index.servableByName('misfiled.tar.gz')).toBeUndefined();
    } finally {
      db.close();
    }
    expect(await storedPaths(dataDir)).toEqual([byHash, named, legacy, good].map((b) => sha512(b)).sort());
  });
});

describe('import: Funtoo BLOS store', () => {
  it('verifies each .blob against its record, accepts extended JSON numbers, and reports what it cannot trust', async () => {
    const tree = await tempDir('blos');
    const dataDir = await tempDir('data');
    const record = (body: Buffer, size: unknown, extra: Record<string, unknown> = {}) =>
      JSON.stringify({ sha512: sha512(body), blake2b: blake2b(body), sha256: sha256(body), size, ...extra });
    const addBlos = async (body: Buffer, size: unknown, extra: Record<string, unknown> = {}, blobBytes: Buffer = body) => {
      const h = sha512(body);
      await put(tree, `${shard(h)}/${h}`, record(body, size, extra));
      await put(tree, `${shard(h)}/${h}.blob`, blobBytes);
      return h;
    };
    const plain = randomBytes(1000);
    const asInt = randomBytes(3);
    const asLong = randomBytes(70_000);
    const asDouble = randomBytes(42);
    await addBlos(plain, plain.length);
    await addBlos(asInt, { $numberInt: '3' });
    await addBlos(asLong, { $numberLong: String(asLong.length) });
    await addBlos(asDouble, { $numberDouble: '42.0' });
    // Damaged on disk: the .blob no longer hashes to its name.
    const rotten = randomBytes(500);
    const rottenHash = await addBlos(rotten, { $numberInt: '500' }, {}, Buffer.concat([rotten.subarray(0, 499), Buffer.from([rotten[499]! ^ 1])]));
    // Record and bytes agree on sha512 but the record lies about the size.
    const wrongSize = randomBytes(64);
    const wrongSizeHash = await addBlos(wrongSize, { $numberLong: '65' });
    // A record whose .blob went missing, and a .blob whose record did.
    const orphanRecord = randomBytes(10);
    await put(tree, `${shard(sha512(orphanRecord))}/${sha512(orphanRecord)}`, record(orphanRecord, 10));
    const noRecord = randomBytes(20);
    await put(tree, `${shard(sha512(noRecord))}/${sha512(noRecord)}.blob`, noRecord);

    const res = await importCli(dataDir, tree);
    expect(res.code, res.stdout + res.stderr).toBe(1);
    expect(res.stderr).toMatch(/as blos: 7 files/);
    expect(res.stdout).toMatch(/imported:\s+5/);
    expect(res.stdout).toMatch(/corrupt: 2/);
    expect(res.stdout).toMatch(new RegExp(`${rottenHash}\\.blob: sha512 is [0-9a-f]{16}…, its BLOS record says`));
    expect(res.stdout).toMatch(new RegExp(`${wrongSizeHash}\\.blob: size is 64, its BLOS record says 65`));
    expect(res.stdout).toMatch(/failed: 1/);
    expect(res.stdout).toMatch(/record without its/);

    const db = openIndex(dataDir);
    try {
      for (const body of [plain, asInt, asLong, asDouble, noRecord]) {
        const row = db.index.blob(sha512(body));
        expect(row?.size).toBe(body.length);
        expect(row?.blake2b).toBe(blake2b(body));
        expect(row?.sha256).toBe(sha256(body));
        expect(row?.pinned).toBe(1);
      }
      for (const h of [rottenHash, wrongSizeHash, sha512(orphanRecord)]) expect(db.index.blob(h)).toBeUndefined();
    } finally {
      db.close();
    }
    expect(await storedPaths(dataDir)).toEqual([plain, asInt, asLong, asDouble, noRecord].map((b) => sha512(b)).sort());
  });

  it('parses MongoDB canonical extended JSON numbers and refuses anything else', () => {
    expect(extendedJsonNumber(3)).toBe(3);
    expect(extendedJsonNumber({ $numberInt: '3' })).toBe(3);
    expect(extendedJsonNumber({ $numberLong: '6442450944' })).toBe(6442450944);
    expect(extendedJsonNumber({ $numberDouble: '42.0' })).toBe(42);
    expect(extendedJsonNumber({ $numberDouble: 42 })).toBe(42);
    expect(extendedJsonNumber({ $numberDouble: '4.5' })).toBeUndefined();
    expect(extendedJsonNumber({ $numberDouble: 'NaN' })).toBeUndefined();
    expect(extendedJsonNumber({ $numberInt: '-1' })).toBeUndefined();
    expect(extendedJsonNumber({ $numberLong: '99999999999999999999' })).toBeUndefined();
    expect(extendedJsonNumber('3')).toBeUndefined();
    expect(extendedJsonNumber({ $numberInt: '3', extra: 1 })).toBeUndefined();
    expect(parseBlosRecord('{"size": {"$numberInt": "x"}}')).toMatch(/malformed size/);
    expect(parseBlosRecord('not json')).toMatch(/not JSON/);
  });
});

describe('import --link', () => {
  it('hard-links verified files into the store (same inode) and never links a corrupt one', async () => {
    const tree = await tempDir('link');
    const dataDir = await tempDir('data');
    const body = randomBytes(200_000);
    const source = await put(tree, `${shard(sha512(body))}/${sha512(body)}`, body);
    const claimed = sha512('promised');
    const bad = await put(tree, `${shard(claimed)}/${claimed}`, 'delivered');
    await put(tree, 'layout.conf', '[structure]\n0=content-hash SHA512 8:8:8\n');

    const res = await importCli(dataDir, tree, '--link');
    expect(res.code, res.stdout + res.stderr).toBe(1);
    expect(res.stdout).toMatch(/imported:\s+1 \(1 hard-linked\)/);
    const stored = path.join(dataDir, 'blobs', shard(sha512(body)), sha512(body));
    expect((await stat(stored)).ino).toBe((await stat(source)).ino);
    expect((await stat(source)).nlink).toBe(2);
    expect((await stat(bad)).nlink).toBe(1);
    expect(await readdir(path.join(dataDir, 'tmp'))).toEqual([]);

    const server = await startTestServer({ dataDir });
    try {
      const served = await get(`${server.baseUrl}/${shard(sha512(body))}/${sha512(body)}`);
      expect(served.status).toBe(200);
      expect(sha512(served.body)).toBe(sha512(body));
    } finally {
      await server.stop();
    }
  });
});

// A second filesystem to link across: /dev/shm is a tmpfs on Linux, apart from the temp dir's.
const shm = await stat('/dev/shm').catch(() => undefined);
const crossDevice = shm !== undefined && shm.dev !== (await stat(tmpdir())).dev;

describe.runIf(crossDevice)('import --link across filesystems', () => {
  it('falls back to copying when the store is on another filesystem (EXDEV)', async () => {
    const tree = await mkdtemp(path.join('/dev/shm', 'fastpull-exdev-'));
    const dataDir = await tempDir('data');
    try {
      const body = randomBytes(30_000);
      const source = await put(tree, 'cross-1.tar.gz', body);
      const res = await importCli(dataDir, tree, '--link');
      expect(res.code, res.stdout + res.stderr).toBe(0);
      expect(res.stdout).toMatch(/imported:\s+1 \(0 hard-linked\)/);
      const stored = path.join(dataDir, 'blobs', shard(sha512(body)), sha512(body));
      expect((await stat(stored)).dev).not.toBe((await stat(source)).dev);
      expect(sha512(await readFile(stored))).toBe(sha512(body));
    } finally {
      await rm(tree, { recursive: true, force: true });
    }
  });
});

describe('import --manifest', () => {
  it('attaches names to hash-only blobs, checks sizes and digests, and reports entries it cannot find', async () => {
    const tree = await tempDir('manifest');
    const dataDir = await tempDir('data');
    await put(tree, 'layout.conf', '[structure]\n0=content-hash SHA512 8:8:8\n1=flat\n');
    const a = randomBytes(5000);
    const b = randomBytes(6000);
    const shortFile = Buffer.from('seven b');
    await put(tree, `${shard(sha512(a))}/${sha512(a)}`, a);
    await put(tree, `${shard(sha512(b))}/${sha512(b)}`, b);
    await put(tree, 'short-1.tar.gz', shortFile);
    const manifestDir = await tempDir('manifests');
    const manifest = await put(
      manifestDir,
      'Manifest',
      [
        'EBUILD a-1.ebuild 100 BLAKE2B 00 SHA512 00',
        distLine('a-1.tar.gz', a),
        distLine('short-1.tar.gz', shortFile, { size: 8 }),
        distLine('gone-1.tar.gz', 'nowhere'),
        '',
      ].join('\n'),
    );
    const otherManifest = await put(manifestDir, 'Manifest.other', `${distLine('b-2.zip', b)}\n`);

    const res = await importCli(dataDir, tree, '--manifest', manifest, otherManifest);
    expect(res.code, res.stdout + res.stderr).toBe(1);
    expect(res.stdout).toMatch(/names attached from Manifests: 2/);
    expect(res.stdout).toMatch(/short-1\.tar\.gz: size is 7, the Manifest \(.*Manifest:3\) says 8/);
    expect(res.stdout).toMatch(/Manifest entries neither in the tree nor stored: 2/);
    expect(res.stdout).toMatch(/gone-1\.tar\.gz/);

    const db = openIndex(dataDir);
    try {
      expect(db.index.servableByName('a-1.tar.gz')?.sha512).toBe(sha512(a));
      expect(db.index.servableByName('b-2.zip')?.sha512).toBe(sha512(b));
      expect(db.index.servableByName('a-1.tar.gz')?.filename).toBe('a-1.tar.gz');
      expect(db.index.servableByName('short-1.tar.gz')).toBeUndefined();
      expect(db.index.blob(sha512(shortFile))).toBeUndefined();
    } finally {
      db.close();
    }

    // A second run changes nothing: names are attached once, present blobs are not re-read.
    const again = await importCli(dataDir, tree, '--manifest', manifest, otherManifest);
    expect(again.stdout).toMatch(/names attached from Manifests: 0/);
    expect(again.stdout).toMatch(/already present:\s+2/);
  });
});

describe('import beside a running server', () => {
  let server: TestServer;
  afterAll(async () => {
    await server?.stop();
  });

  it('writes into the data directory the server is serving, which then serves the files by name and hash', async () => {
    const dataDir = await tempDir('data');
    server = await startTestServer({ dataDir });
    const uploaded = await server.upload('before-1.tar.gz', 'uploaded through the API\n');
    expect(uploaded.status).toBe(201);
    const tree = await tempDir('live');
    const files = Array.from({ length: 20 }, (_, i) => [`live-${i}.tar.gz`, randomBytes(20_000 + i)] as const);
    for (const [name, body] of files) await put(tree, name, body);

    const res = await runCli(['import', tree], { FASTPULL_DATA_DIR: dataDir });
    expect(res.code, res.stdout + res.stderr).toBe(0);
    expect(res.stdout).toMatch(/imported:\s+20/);

    for (const [name, body] of files) {
      const byName = await get(`${server.baseUrl}/distfiles/${name}`);
      expect(byName.status, name).toBe(200);
      expect(byName.body.equals(body)).toBe(true);
      const byHash = await get(`${server.baseUrl}/distfiles/${shard(sha512(body))}/${sha512(body)}`);
      expect(byHash.status).toBe(200);
      expect(byHash.body.equals(body)).toBe(true);
    }
    // The server keeps writing too: both writers share the database through WAL.
    const after = await server.upload('after-1.tar.gz', 'uploaded after the import\n');
    expect(after.status).toBe(201);
    expect((await get(`${server.baseUrl}/distfiles/before-1.tar.gz`)).status).toBe(200);
  });
});

function countNames(dataDir: string): number | undefined {
  try {
    const db = openIndex(dataDir);
    try {
      return (db.index.db.prepare('SELECT count(*) AS n FROM names').get() as { n: number }).n;
    } finally {
      db.close();
    }
  } catch {
    return undefined; // the child may still be creating the database
  }
}

async function manyFiles(count: number): Promise<{ tree: string; bodies: Map<string, Buffer> }> {
  const tree = await tempDir('resume');
  const bodies = new Map<string, Buffer>();
  for (let i = 0; i < count; i++) {
    const name = `pkg-${String(i).padStart(4, '0')}.tar.gz`;
    const body = randomBytes(16_384);
    bodies.set(name, body);
    await put(tree, name, body);
  }
  return { tree, bodies };
}

/** Starts an import and sends `signal` once at least 20 names are indexed (some, not all, files done). */
async function importAndSignal(tree: string, dataDir: string, signal: NodeJS.Signals) {
  const child = spawn(process.execPath, ['--import', 'tsx', CLI, 'import', tree, '--jobs', '1'], {
    env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '/tmp', FASTPULL_DATA_DIR: dataDir },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  let childDone = false;
  const exited = new Promise<number | null>((resolve) =>
    child.on('close', (code) => {
      childDone = true;
      resolve(code);
    }),
  );
  let indexedAtSignal = 0;
  while (!childDone) {
    await new Promise((r) => setTimeout(r, 25));
    const n = countNames(dataDir);
    if (n !== undefined && n >= 20) {
      child.kill(signal);
      indexedAtSignal = n;
      break;
    }
  }
  const code = await exited;
  return { code, stdout, stderr, indexedAtSignal };
}

async function expectComplete(dataDir: string, bodies: Map<string, Buffer>): Promise<void> {
  expect(await readdir(path.join(dataDir, 'tmp'))).toEqual([]);
  expect(await storedPaths(dataDir)).toEqual([...bodies.values()].map((b) => sha512(b)).sort());
  const check = openIndex(dataDir);
  try {
    for (const [name, body] of bodies) expect(check.index.servableByName(name)?.sha512).toBe(sha512(body));
  } finally {
    check.close();
  }
}

describe('import: interrupted and re-run', () => {
  it('continues where a killed run stopped, without re-importing what it had finished', async () => {
    const count = 600;
    const { tree, bodies } = await manyFiles(count);
    const dataDir = await tempDir('data');
    const killed = await importAndSignal(tree, dataDir, 'SIGKILL');
    const indexedAfterKill = countNames(dataDir)!;
    expect(indexedAfterKill).toBeGreaterThanOrEqual(killed.indexedAtSignal);
    expect(indexedAfterKill, 'the run was killed before it finished').toBeLessThan(count);

    const rerun = await importCli(dataDir, tree);
    expect(rerun.code, rerun.stdout + rerun.stderr).toBe(0);
    expect(rerun.stdout).toMatch(new RegExp(`already present:\\s+${indexedAfterKill}\\b`));
    expect(rerun.stdout).toMatch(new RegExp(`imported:\\s+${count - indexedAfterKill}\\b`));
    // Nothing is left in tmp/ (a temp file of the killed run is removed), and every file is stored once.
    await expectComplete(dataDir, bodies);
  });

  it('on Ctrl-C finishes the files in progress, prints the summary, and exits 130', async () => {
    const count = 400;
    const { tree, bodies } = await manyFiles(count);
    const dataDir = await tempDir('data');
    const stopped = await importAndSignal(tree, dataDir, 'SIGINT');
    expect(stopped.code, stopped.stdout + stopped.stderr).toBe(130);
    expect(stopped.stderr).toMatch(/SIGINT: finishing the files in progress/);
    expect(stopped.stdout).toMatch(/STOPPED before the end \(interrupted\)/);
    const indexed = countNames(dataDir)!;
    expect(indexed).toBeLessThan(count);
    // The summary accounts for exactly what reached the index, and nothing half-written is left behind.
    expect(stopped.stdout).toMatch(new RegExp(`imported:\\s+${indexed}\\b`));
    expect(stopped.stdout).toMatch(new RegExp(`not processed:\\s+${count - indexed}\\b`));
    expect(await readdir(path.join(dataDir, 'tmp'))).toEqual([]);

    const rerun = await importCli(dataDir, tree);
    expect(rerun.code, rerun.stdout + rerun.stderr).toBe(0);
    expect(rerun.stdout).toMatch(new RegExp(`already present:\\s+${indexed}\\b`));
    await expectComplete(dataDir, bodies);
  });
});

const hasScript = await stat('/usr/bin/script').then(
  () => true,
  () => false,
);

describe('import: progress', () => {
  it('prints plain lines, no carriage returns, when stderr is not a terminal', async () => {
    const tree = await tempDir('progress');
    for (let i = 0; i < 8; i++) await put(tree, `p-${i}.tar.gz`, randomBytes(512 * 1024));
    const res = await importCli(await tempDir('data'), tree, '--progress-interval', '0.05');
    expect(res.code, res.stderr).toBe(0);
    expect(res.stderr).not.toContain('\r');
    expect(res.stderr).toMatch(/^import: 8\/8 files, 4\.0 MiB\/4\.0 MiB, [\d.]+ (B|KiB|MiB|GiB)\/s, ETA 0:00$/m);
  });

  it.runIf(hasScript)('draws a bar with files, bytes, rate and ETA on a terminal', async () => {
    const tree = await tempDir('progress-tty');
    for (let i = 0; i < 8; i++) await put(tree, `p-${i}.tar.gz`, randomBytes(512 * 1024));
    const dataDir = await tempDir('data');
    // script(1) gives the child a real pseudo-terminal, so stderr.isTTY is true there.
    const command = `${process.execPath} --import tsx ${CLI} import ${tree}`;
    const res = await new Promise<string>((resolve, reject) => {
      const child = spawn('/usr/bin/script', ['-qec', command, '/dev/null'], {
        env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '/tmp', FASTPULL_DATA_DIR: dataDir },
        stdio: ['ignore', 'pipe', 'inherit'],
      });
      let out = '';
      child.stdout.on('data', (d: Buffer) => (out += d.toString()));
      child.on('error', reject);
      child.on('close', () => resolve(out));
    });
    // Redrawn in place: carriage return and erase-line before each state of the bar.
    expect(res).toContain('\r\x1b[K[################] 100% 8/8 files 4.0 MiB/4.0 MiB ');
    expect(res).toMatch(/100% 8\/8 files 4\.0 MiB\/4\.0 MiB [\d.]+ (B|KiB|MiB|GiB)\/s, ETA 0:00/);
    expect(res).toMatch(/imported:\s+8/);
  });
});

describe('import: free space guard', () => {
  it('stops copying before the store filesystem drops below FASTPULL_MIN_FREE_BYTES, but can still hard-link', async () => {
    const tree = await tempDir('full');
    const dataDir = await tempDir('data');
    for (let i = 0; i < 3; i++) await put(tree, `big-${i}.tar.gz`, randomBytes(1000));
    // More free space than any test machine has: every copy would cross the line.
    const env = { FASTPULL_DATA_DIR: dataDir, FASTPULL_MIN_FREE_BYTES: String(2 ** 52) };
    const copy = await runCli(['import', tree, '--jobs', '1'], env);
    expect(copy.code, copy.stdout + copy.stderr).toBe(1);
    expect(copy.stdout).toMatch(/STOPPED before the end \(copying 1000 bytes would leave less than the configured minimum free space/);
    expect(copy.stdout).toMatch(/imported:\s+0/);
    expect(copy.stdout).toMatch(/not processed:\s+2/);
    expect(await storedPaths(dataDir)).toEqual([]);

    const linked = await runCli(['import', tree, '--link'], env);
    expect(linked.code, linked.stdout + linked.stderr).toBe(0);
    expect(linked.stdout).toMatch(/imported:\s+3 \(3 hard-linked\)/);
  });
});
