import { CreateMultipartUploadCommand, PutObjectCommand } from '@aws-sdk/client-s3';
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AppError } from '../src/errors.js';
import { BlobStore } from '../src/store/blob-store.js';
import { LocalBlobStorage } from '../src/store/local-storage.js';
import { S3BlobStorage } from '../src/store/s3-store.js';
import type { BlobStorage } from '../src/store/storage.js';
import { blake2b, sha256, sha512 } from './helpers/core.js';
import { skipWithoutService } from './helpers/services.js';
import { startSwift, swiftMissing, type Swift } from './helpers/swift.js';

/**
 * One body of tests for every blob-storage driver: the guarantees of the local store (verified before
 * visible, nothing partial, nothing left behind, dedup, ranges, paging, trash) must hold on S3 as well.
 */
interface Driver {
  /** A fresh, empty, initialised store (own directory or own key prefix). */
  make(options?: { pageSize?: number; staleAfterMs?: number; like?: BlobStorage }): Promise<BlobStorage>;
  /** What a failed or abandoned write could have left out of sight: temp/spool files, multipart uploads. */
  leftovers(storage: BlobStorage): Promise<string[]>;
  /** Simulates a writer that died mid-write, the way this driver would see it. */
  abandonWrite(storage: BlobStorage): Promise<void>;
  /** Puts things beside the blobs that are not blobs: a stray file, a hash filed under the wrong shards. */
  putStrays(storage: BlobStorage): Promise<void>;
  /** How a child process opens this same store (test/helpers/killed-writer.ts). */
  childSpec(storage: BlobStorage): Record<string, unknown>;
}

const MiB = 1024 * 1024;
const WRITER = fileURLToPath(new URL('./helpers/killed-writer.ts', import.meta.url));
const dirs: string[] = [];
const tempDir = async (name: string) => {
  const dir = await mkdtemp(path.join(tmpdir(), `fp-${name}-`));
  dirs.push(dir);
  return dir;
};
afterAll(async () => {
  for (const dir of dirs) await rm(dir, { recursive: true, force: true });
});

const local: Driver = {
  async make(options = {}) {
    const root = options.like ? (options.like as LocalBlobStorage).store.root : await tempDir('local');
    const storage = new LocalBlobStorage(new BlobStore(root));
    await storage.init();
    return storage;
  },
  async leftovers(storage) {
    return readdir((storage as LocalBlobStorage).store.tmpDir);
  },
  async abandonWrite(storage) {
    // pid 2^22+1 is above Linux's pid_max ceiling: no process owns it.
    await writeFile(path.join((storage as LocalBlobStorage).store.tmpDir, `${2 ** 22 + 1}-abandoned.tmp`), 'half a blob');
  },
  async putStrays(storage) {
    const blobs = (storage as LocalBlobStorage).store.blobsDir;
    const misfiled = sha512('misfiled');
    await mkdir(path.join(blobs, 'ab', 'cd', 'ef'), { recursive: true });
    await writeFile(path.join(blobs, 'README'), 'not a blob');
    await writeFile(path.join(blobs, 'ab', 'cd', 'ef', misfiled), 'wrong shards');
  },
  childSpec: (storage) => ({ kind: 'local', root: (storage as LocalBlobStorage).store.root }),
};

let swift: Swift | undefined;
const skipS3 = skipWithoutService('OpenStack Swift (s3)', swiftMissing());
let bucket = '';
let prefixes = 0;
const s3: Driver = {
  async make({ like, ...options } = {}) {
    const same = like as S3BlobStorage | undefined;
    const storage = new S3BlobStorage({
      client: swift!.client,
      bucket,
      prefix: same ? same.root : `origin/t${++prefixes}`,
      spoolDir: same ? same.spoolDir : await tempDir('spool'),
      partSize: 5 * MiB,
      // Small enough that trash and restore of the larger test blobs take the part-by-part copy.
      maxSingleCopy: 5 * MiB,
      copyPartSize: 5 * MiB,
      ...options,
    });
    await storage.init();
    return storage;
  },
  async leftovers(storage) {
    const s = storage as S3BlobStorage;
    const out: string[] = [];
    for await (const u of s.multipartUploads()) out.push(`multipart upload ${u.key}`);
    for (const f of await readdir(s.spoolDir)) out.push(`spool ${f}`);
    return out;
  },
  async abandonWrite(storage) {
    const s = storage as S3BlobStorage;
    await swift!.client.send(new CreateMultipartUploadCommand({ Bucket: s.bucket, Key: s.key(sha512('never finished')) }));
  },
  async putStrays(storage) {
    const s = storage as S3BlobStorage;
    for (const key of [`${s.root}README`, `${s.root}ab/cd/ef/${sha512('misfiled')}`, `${s.root}00/00/00/x`]) {
      await swift!.client.send(new PutObjectCommand({ Bucket: s.bucket, Key: key, Body: 'not a blob' }));
    }
  },
  childSpec(storage) {
    const s = storage as S3BlobStorage;
    const { endpoint, region, credentials } = swift!;
    return { kind: 's3', endpoint, region, credentials, bucket: s.bucket, prefix: s.root, spoolDir: s.spoolDir };
  },
};

/** Runs a never-ending write in a child process and SIGKILLs it once `bytes` were handed to the store. */
async function killWriterAfter(spec: Record<string, unknown>, bytes: number): Promise<void> {
  const child = spawn(process.execPath, ['--import', 'tsx', WRITER, JSON.stringify(spec)], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  await new Promise<void>((resolve, reject) => {
    let out = '';
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      const sent = Number(/bytes (\d+)\n(?!.*bytes)/s.exec(out)?.[1] ?? 0);
      if (sent >= bytes) resolve();
    });
    child.once('exit', (code) => reject(new Error(`writer exited (${code}) before sending ${bytes} bytes: ${stderr}`)));
  });
  child.kill('SIGKILL');
  await exited;
}

async function readAll(stream: Readable | undefined): Promise<Buffer | undefined> {
  if (!stream) return undefined;
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

/** A body delivered in small chunks, as a network upload would. */
function body(bytes: Buffer, chunk = 256 * 1024): Readable {
  return Readable.from(
    (function* () {
      for (let at = 0; at < bytes.length; at += chunk) yield bytes.subarray(at, at + chunk);
    })(),
  );
}

/** A body whose sender fails after `after` bytes. */
function failingBody(bytes: Buffer, after: number): Readable {
  return Readable.from(
    (async function* () {
      yield bytes.subarray(0, after);
      await new Promise((resolve) => setTimeout(resolve, 20));
      throw new Error('connection reset by peer');
    })(),
  );
}

const digestsOf = (bytes: Buffer) => ({ size: bytes.length, sha512: sha512(bytes), blake2b: blake2b(bytes), sha256: sha256(bytes) });

async function code(promise: Promise<unknown>): Promise<string> {
  const err = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  return err instanceof AppError ? err.code : `not an AppError: ${String(err)}`;
}

describe.each([
  { name: 'local', driver: local, skip: false },
  { name: 's3 on OpenStack Swift', driver: s3, skip: skipS3 },
])('blob storage driver: $name', ({ name, driver, skip }) => {
  beforeAll(async () => {
    if (skip || name === 'local') return;
    swift = await startSwift();
    bucket = await swift.createBucket('conformance');
  }, 120_000);
  afterAll(async () => {
    if (name !== 'local') await swift?.stop();
  });

  it.skipIf(skip)('stores bytes whose declared digests match, and serves them back exactly', async () => {
    const storage = await driver.make();
    for (const bytes of [Buffer.from('hello\n'), randomBytes(12 * MiB + 123)]) {
      const result = await storage.write(body(bytes), { expected: digestsOf(bytes) });
      expect(result).toMatchObject({ digests: digestsOf(bytes), created: true });
      // Nothing stood at the key: a driver without a conditional PUT says another writer may have raced it.
      expect(result.contended ?? false).toBe(name !== 'local');
      expect((await storage.stat(sha512(bytes)))?.size).toBe(bytes.length);
      expect((await readAll(await storage.read(sha512(bytes))))!.equals(bytes)).toBe(true);
    }
    // Without a declared hash the driver learns the key from the bytes.
    const undeclared = randomBytes(7 * MiB);
    expect(await storage.write(body(undeclared), { expected: { size: undeclared.length } })).toMatchObject({ digests: digestsOf(undeclared), created: true });
    expect((await readAll(await storage.read(sha512(undeclared))))!.equals(undeclared)).toBe(true);
    expect(await driver.leftovers(storage)).toEqual([]);
  });

  it.skipIf(skip)('a digest mismatch stores nothing and leaves nothing behind, small or multipart, declared hash or not', async () => {
    const storage = await driver.make();
    const cases: { bytes: Buffer; expected: Record<string, string | number>; field: string }[] = [];
    for (const bytes of [Buffer.from('tampered\n'), randomBytes(11 * MiB)]) {
      cases.push({ bytes, expected: { sha512: sha512(Buffer.concat([bytes, Buffer.from('x')])) }, field: 'sha512' });
      cases.push({ bytes, expected: { sha512: sha512(bytes), blake2b: blake2b(Buffer.from('other')) }, field: 'blake2b' });
      cases.push({ bytes, expected: { sha256: sha256(Buffer.from('other')) }, field: 'sha256' });
      cases.push({ bytes, expected: { sha512: sha512(bytes), size: bytes.length - 1 }, field: 'size' });
    }
    for (const { bytes, expected, field } of cases) {
      const err = await storage.write(body(bytes), { expected }).catch((e: unknown) => e);
      expect(err, `${field} mismatch on ${bytes.length} bytes`).toBeInstanceOf(AppError);
      expect((err as AppError).code).toBe('DIGEST_MISMATCH');
      expect(JSON.stringify((err as AppError).details)).toContain(field);
      expect(await storage.stat(sha512(bytes))).toBeUndefined();
      if (typeof expected.sha512 === 'string') expect(await storage.stat(expected.sha512)).toBeUndefined();
    }
    expect((await storage.listPage()).hashes).toEqual([]);
    expect(await driver.leftovers(storage)).toEqual([]);
  });

  it.skipIf(skip)('a sender failing mid-stream, or a body over the limit, leaves nothing visible and nothing behind', async () => {
    const storage = await driver.make();
    const bytes = randomBytes(13 * MiB);
    for (const expected of [{ sha512: sha512(bytes) }, {}]) {
      await expect(storage.write(failingBody(bytes, 11 * MiB), { expected })).rejects.toThrow(/connection reset/);
      expect(await code(storage.write(body(bytes), { expected, maxBytes: 6 * MiB }))).toBe('PAYLOAD_TOO_LARGE');
    }
    expect(await storage.stat(sha512(bytes))).toBeUndefined();
    expect((await storage.listPage()).hashes).toEqual([]);
    expect(await driver.leftovers(storage)).toEqual([]);
  });

  it.skipIf(skip)('deduplicates a blob already stored, and still checks the new body', async () => {
    const storage = await driver.make();
    const bytes = randomBytes(6 * MiB);
    expect((await storage.write(body(bytes), { expected: { sha512: sha512(bytes) } })).created).toBe(true);
    expect((await storage.write(body(bytes), { expected: { sha512: sha512(bytes) } })).created).toBe(false);
    expect((await storage.write(body(bytes))).created).toBe(false);
    // Declared hash of a stored blob, but different bytes: refused, the stored blob untouched.
    const other = randomBytes(6 * MiB);
    expect(await code(storage.write(body(other), { expected: { sha512: sha512(bytes) } }))).toBe('DIGEST_MISMATCH');
    expect((await readAll(await storage.read(sha512(bytes))))!.equals(bytes)).toBe(true);
    // A stored copy the caller distrusts (quarantined in the index) gives way to the verified bytes.
    expect((await storage.write(body(bytes), { expected: { sha512: sha512(bytes) }, replaceExisting: () => true })).created).toBe(true);
    expect((await storage.listPage()).hashes).toEqual([sha512(bytes)]);
    expect(await driver.leftovers(storage)).toEqual([]);
  });

  it.skipIf(skip)('concurrent identical writes all succeed and leave one blob', async () => {
    const storage = await driver.make();
    const bytes = randomBytes(9 * MiB);
    const writes = await Promise.all([
      ...Array.from({ length: 3 }, () => storage.write(body(bytes), { expected: { sha512: sha512(bytes) } })),
      ...Array.from({ length: 2 }, () => storage.write(body(bytes))),
    ]);
    for (const w of writes) expect(w.digests).toEqual(digestsOf(bytes));
    expect(writes.some((w) => w.created)).toBe(true);
    expect((await storage.listPage()).hashes).toEqual([sha512(bytes)]);
    expect((await readAll(await storage.read(sha512(bytes))))!.equals(bytes)).toBe(true);
    expect(await driver.leftovers(storage)).toEqual([]);
  });

  it.skipIf(skip)('reads one byte range, clips an end past the blob, refuses a start at or past it', async () => {
    const storage = await driver.make();
    const bytes = randomBytes(100_000);
    const hash = (await storage.write(body(bytes))).digests.sha512;
    const range = async (start: number, end: number) => readAll(await storage.read(hash, { start, end }));
    expect((await range(0, 0))!.equals(bytes.subarray(0, 1))).toBe(true);
    expect((await range(500, 1499))!.equals(bytes.subarray(500, 1500))).toBe(true);
    expect((await range(99_999, 99_999))!.equals(bytes.subarray(99_999))).toBe(true);
    expect((await range(90_000, 10 ** 9))!.equals(bytes.subarray(90_000))).toBe(true);
    expect(await code(range(100_000, 100_000))).toBe('RANGE_NOT_SATISFIABLE');
    expect(await code(range(200_000, 300_000))).toBe('RANGE_NOT_SATISFIABLE');
    expect(await code(range(10, 9))).toBe('RANGE_NOT_SATISFIABLE');
    expect(await code(range(-1, 9))).toBe('RANGE_NOT_SATISFIABLE');
    expect(await storage.read(sha512('absent'), { start: 0, end: 0 })).toBeUndefined();
    expect(await storage.read(sha512('absent'))).toBeUndefined();
    expect(await storage.stat(sha512('absent'))).toBeUndefined();
    // An empty blob has no byte to start a range at.
    const empty = (await storage.write(body(Buffer.alloc(0)))).digests.sha512;
    expect((await readAll(await storage.read(empty)))!.length).toBe(0);
    expect(await code(storage.read(empty, { start: 0, end: 0 }))).toBe('RANGE_NOT_SATISFIABLE');
  });

  it.skipIf(skip)('lists every blob in ascending order across pages, and nothing that is not a blob', async () => {
    const storage = await driver.make({ pageSize: 3 });
    const hashes: string[] = [];
    for (let i = 0; i < 8; i++) hashes.push((await storage.write(body(Buffer.from(`blob ${i}\n`)))).digests.sha512);
    hashes.sort();
    // Trash, quarantine and stray objects are out of the listing.
    const trashed = await storage.trash(hashes.pop()!, 'quarantine');
    expect(trashed).toBeDefined();
    await driver.putStrays(storage);
    const pages: string[][] = [];
    let after: string | undefined;
    do {
      const page = await storage.listPage({ after, limit: 3 });
      pages.push(page.hashes);
      after = page.next;
    } while (after !== undefined);
    expect(pages.flat()).toEqual(hashes);
    expect(pages[0]).toHaveLength(3);
    expect(pages.every((p) => p.length <= 3)).toBe(true);
    const all: string[] = [];
    for await (const h of storage.list()) all.push(h);
    expect(all).toEqual(hashes);
    expect((await storage.listPage({ after: hashes[4] })).hashes).toEqual(hashes.slice(5, 8));
  });

  it.skipIf(skip)('trash takes a blob out of sight; restore puts it back unless a re-upload already did; purge destroys it', async () => {
    const storage = await driver.make();
    const bytes = randomBytes(50_000);
    const hash = (await storage.write(body(bytes))).digests.sha512;

    const gc = (await storage.trash(hash, 'gc'))!;
    expect(gc).toMatchObject({ sha512: hash, reason: 'gc' });
    expect(await storage.stat(hash)).toBeUndefined();
    expect(await storage.read(hash)).toBeUndefined();
    expect(await storage.restore(gc)).toBe(true);
    expect((await readAll(await storage.read(hash)))!.equals(bytes)).toBe(true);

    const again = (await storage.trash(hash, 'gc'))!;
    expect((await storage.write(body(bytes))).created).toBe(true);
    expect(await storage.restore(again)).toBe(false);
    expect((await readAll(await storage.read(hash)))!.equals(bytes)).toBe(true);

    const quarantined = (await storage.trash(hash, 'quarantine'))!;
    expect(quarantined.where).toContain(hash);
    expect(await storage.stat(hash)).toBeUndefined();
    await storage.purge(quarantined);
    expect(await storage.trash(hash, 'gc')).toBeUndefined();

    // A blob larger than one server-side copy (S3: over CopyObject's 5 GiB ceiling) moves part by part.
    const large = randomBytes(12 * MiB + 7);
    const largeHash = (await storage.write(body(large))).digests.sha512;
    const largeTrash = (await storage.trash(largeHash, 'gc'))!;
    expect(await storage.stat(largeHash)).toBeUndefined();
    expect(await storage.restore(largeTrash)).toBe(true);
    expect((await readAll(await storage.read(largeHash)))!.equals(large)).toBe(true);
    expect(await storage.remove(largeHash)).toBe(true);

    expect((await storage.write(body(bytes))).created).toBe(true);
    expect(await storage.remove(hash)).toBe(true);
    expect(await storage.remove(hash)).toBe(false);
    expect((await storage.listPage()).hashes).toEqual([]);
    expect(await driver.leftovers(storage)).toEqual([]);
  });

  it.skipIf(skip)('sweeps what a writer that died mid-write left behind, at start and on demand', async () => {
    const storage = await driver.make();
    // Same place, but anything in flight counts as abandoned at once.
    const sweeper = await driver.make({ staleAfterMs: 0, like: storage });
    await driver.abandonWrite(storage);
    expect(await driver.leftovers(storage)).toHaveLength(1);
    if (name !== 'local') {
      // A young multipart upload may be another replica's live write: left alone.
      expect(await storage.removeStale()).toBe(0);
      expect(await driver.leftovers(storage)).toHaveLength(1);
    }
    // Past the staleness bar it goes, on demand and at start.
    expect(await sweeper.removeStale()).toBe(1);
    expect(await driver.leftovers(sweeper)).toEqual([]);
    await driver.abandonWrite(sweeper);
    expect(await sweeper.init()).toBe(1);
    expect(await driver.leftovers(sweeper)).toEqual([]);
  });

  it.skipIf(skip)('a writer killed mid-write leaves nothing visible, and what it left is swept at the next start', async () => {
    const storage = await driver.make();
    // Declared hash: S3 streams into a multipart upload (parts of 5 MiB, four in flight); undeclared: it spools.
    for (const declared of [true, false]) {
      await killWriterAfter({ ...driver.childSpec(storage), declared }, 26 * MiB);
      expect(await driver.leftovers(storage), `declared ${declared}`).not.toEqual([]);
      expect((await storage.listPage()).hashes).toEqual([]);
    }
    // The next start (make() runs init()) with the stale bar at zero, as a day later.
    const restarted = await driver.make({ staleAfterMs: 0, like: storage });
    expect(await driver.leftovers(restarted)).toEqual([]);
    expect((await restarted.listPage()).hashes).toEqual([]);
  }, 120_000);
});
