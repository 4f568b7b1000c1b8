import { constants as fsConstants, createReadStream } from 'node:fs';
import { link, mkdir, open, readdir, rename, stat, unlink, type FileHandle } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import { Readable } from 'node:stream';
import { AppError, fromFsError } from '../errors.js';
import { compareDigests, hashFile, MultiHasher, type Digests, type ExpectedDigests } from './digests.js';
import { isSha512Hex } from '../domain/hashes.js';
import { blobFile } from './paths.js';
import { Reserve } from './reserve.js';
import { BlobReader } from './blob-reader.js';
import { DigestingWriter } from './parallel-digests.js';

export interface WriteOptions {
  expected?: ExpectedDigests;
  /** Bytes beyond this abort the write with PAYLOAD_TOO_LARGE. */
  maxBytes?: number;
  /**
   * Asked when a blob with the same hash is already on disk: true means the stored copy is not
   * trusted (e.g. quarantined, or unknown to the index) and the freshly verified bytes replace it.
   */
  replaceExisting?: (digests: Digests) => boolean | Promise<boolean>;
  /** Told the bytes received so far before each chunk is written; throwing aborts the write. */
  onProgress?: (received: number) => void;
}

export interface WriteResult {
  digests: Digests;
  /** False when an identical blob was already stored (deduplicated). */
  created: boolean;
}

export interface OpenBlob {
  handle: FileHandle;
  size: number;
  mtimeMs: number;
}

const TEMP_SUFFIX = '.tmp';
/** A temp file untouched this long belongs to nobody, whatever its pid says (pids get reused). */
const STALE_TEMP_MS = 24 * 3600 * 1000;

/**
 * Content-addressed blob store: `<root>/blobs/ab/cd/ef/<sha512>`.
 * Writes land in `<root>/tmp` (same filesystem), are hashed on the way, fsynced, verified,
 * then hard-linked into place — link(2) never overwrites, so concurrent identical uploads dedup safely.
 */
export class BlobStore {
  readonly blobsDir: string;
  readonly tmpDir: string;
  readonly quarantineDir: string;

  /** The download path's reads: verified small-blob cache, hot descriptors, pooled buffers. */
  readonly reader: BlobReader;
  /** Headroom that blob writes may not use, kept so the index can always record detaches and gc. */
  readonly reserve: Reserve;

  constructor(
    readonly root: string,
    options: { smallCacheBytes?: number; reserveBytes?: number } = {},
  ) {
    this.reader = new BlobReader((sha512) => this.pathOf(sha512), options);
    this.blobsDir = path.join(root, 'blobs');
    this.tmpDir = path.join(root, 'tmp');
    this.quarantineDir = path.join(root, 'quarantine');
    this.reserve = new Reserve(root, this.tmpDir, options.reserveBytes);
  }

  /** Creates the layout and removes temp files left by processes that no longer run. Returns how many were removed. */
  async init(): Promise<number> {
    await mkdir(this.blobsDir, { recursive: true });
    await mkdir(this.tmpDir, { recursive: true });
    await mkdir(this.quarantineDir, { recursive: true });
    // Nothing of ours is in flight before init returns, so a temp carrying our pid is from an earlier life (pid 1 in a container).
    return this.removeStaleTemps({ ownAreStale: true });
  }

  /**
   * Temp files and whether a live writer may still own them. A temp is stale when its pid runs no
   * more (or is ours and `ownAreStale`, true only at start-up) or it went untouched for a day.
   */
  async temps(options: { ownAreStale?: boolean } = {}): Promise<{ name: string; stale: boolean }[]> {
    const out: { name: string; stale: boolean }[] = [];
    const entries = await readdir(this.tmpDir).catch((err: unknown) =>
      (err as NodeJS.ErrnoException).code === 'ENOENT' ? [] : Promise.reject(err),
    );
    for (const name of entries) {
      const pid = Number(name.split('-', 1)[0]);
      let stale = !Number.isInteger(pid) || (pid === process.pid ? options.ownAreStale === true : !processAlive(pid));
      if (!stale) {
        const info = await stat(path.join(this.tmpDir, name)).catch(() => undefined);
        stale = info !== undefined && Date.now() - info.mtimeMs > STALE_TEMP_MS;
      }
      out.push({ name, stale });
    }
    return out;
  }

  async removeStaleTemps(options: { ownAreStale?: boolean } = {}): Promise<number> {
    let removed = 0;
    for (const temp of await this.temps(options)) {
      if (!temp.stale) continue;
      await unlink(path.join(this.tmpDir, temp.name)).catch(() => undefined);
      removed++;
    }
    return removed;
  }

  pathOf(sha512: string): string {
    return blobFile(this.blobsDir, sha512);
  }

  /** Streams `source` into the store. Nothing is visible under blobs/ unless every check passed. */
  async write(source: Readable | AsyncIterable<Buffer>, options: WriteOptions = {}): Promise<WriteResult> {
    const { expected = {}, maxBytes = Number.MAX_SAFE_INTEGER, replaceExisting, onProgress } = options;
    // The reserve goes back in place before any blob byte may take space; while it cannot, the disk
    // is full as far as uploads are concerned (only gc frees room for it).
    if (!(await this.reserve.ensure())) {
      throw new AppError('INSUFFICIENT_STORAGE', 'the disk is full: free space with fastpull gc');
    }
    const tmp = path.join(this.tmpDir, `${process.pid}-${randomBytes(8).toString('hex')}${TEMP_SUFFIX}`);
    let handle: FileHandle | undefined;
    let writer: DigestingWriter | undefined;
    try {
      handle = await open(tmp, 'wx', 0o444);
      writer = new DigestingWriter(handle);
      // A rejected body must not destroy its source: for an HTTP upload that would kill the
      // socket before the error response could be written.
      const chunks: AsyncIterable<Buffer> =
        source instanceof Readable ? source.iterator({ destroyOnReturn: false }) : source;
      let total = 0;
      for await (const chunk of chunks) {
        total += chunk.length;
        if (total > maxBytes) {
          throw new AppError('PAYLOAD_TOO_LARGE', `body exceeds the upload limit of ${maxBytes} bytes`, {
            limit: maxBytes,
          });
        }
        if (expected.size !== undefined && total > expected.size) {
          throw new AppError('DIGEST_MISMATCH', 'body is larger than the declared size', {
            mismatches: [{ field: 'size', expected: expected.size, actual: `more than ${expected.size}` }],
          });
        }
        onProgress?.(total);
        await writer.push(chunk);
      }
      const digests = await writer.finish();
      writer = undefined;
      await handle.sync();
      await handle.close();
      handle = undefined;

      const mismatches = compareDigests(expected, digests);
      if (mismatches.length > 0) {
        throw new AppError('DIGEST_MISMATCH', 'the body does not match the declared digests', { mismatches });
      }
      const created = await this.commit(tmp, digests, replaceExisting);
      return { digests, created };
    } catch (err) {
      throw fromFsError(err);
    } finally {
      await writer?.abort();
      if (handle) await handle.close().catch(() => undefined);
      await unlink(tmp).catch(() => undefined);
    }
  }

  /**
   * Stores a file that is already on disk (bulk import). With `link`, the store entry becomes a hard
   * link to the source (no copy) once its bytes are verified; across filesystems (EXDEV), or where the
   * kernel refuses to link a file we do not own (EPERM, protected_hardlinks), it copies instead.
   * A linked source shares its inode with the store, so it must never be modified in place afterwards.
   */
  async importFile(
    source: string,
    options: { expected?: ExpectedDigests; link?: boolean; onBytes?: (n: number) => void } = {},
  ): Promise<WriteResult & { linked: boolean }> {
    const { expected = {}, onBytes } = options;
    const counted = async function* (stream: Readable): AsyncGenerator<Buffer> {
      for await (const chunk of stream) {
        onBytes?.((chunk as Buffer).length);
        yield chunk as Buffer;
      }
    };
    const copy = async () => {
      const result = await this.write(counted(createReadStream(source, { highWaterMark: 1024 * 1024 })), { expected });
      return { ...result, linked: false };
    };
    if (!options.link) return copy();

    // The link lands in tmp/ first, so it carries the per-pid name that stale-temp cleanup understands,
    // and it is hashed through that name: what gets verified is exactly the inode that gets committed.
    const tmp = path.join(this.tmpDir, `${process.pid}-${randomBytes(8).toString('hex')}${TEMP_SUFFIX}`);
    try {
      await link(source, tmp);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'EXDEV' || code === 'EPERM') return copy();
      throw fromFsError(err);
    }
    try {
      const hasher = new MultiHasher();
      const handle = await open(tmp, fsConstants.O_RDONLY);
      try {
        for await (const chunk of counted(handle.createReadStream({ highWaterMark: 1024 * 1024, autoClose: false }))) {
          hasher.update(chunk);
        }
        // The source may have been written moments ago by another program: make its bytes durable
        // before the index makes them servable.
        await handle.sync();
      } finally {
        await handle.close();
      }
      const digests = hasher.digest();
      const mismatches = compareDigests(expected, digests);
      if (mismatches.length > 0) {
        throw new AppError('DIGEST_MISMATCH', 'the file does not match the declared digests', { mismatches });
      }
      const created = await this.commit(tmp, digests);
      return { digests, created, linked: created };
    } catch (err) {
      throw fromFsError(err);
    } finally {
      await unlink(tmp).catch(() => undefined);
    }
  }

  /** Moves a verified temp file into place; false if the same blob already existed. */
  private async commit(tmp: string, digests: Digests, replaceExisting?: (digests: Digests) => boolean | Promise<boolean>): Promise<boolean> {
    const final = this.pathOf(digests.sha512);
    const dir = path.dirname(final);
    const firstCreated = await mkdir(dir, { recursive: true });
    try {
      await link(tmp, final);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      // Same hash already stored. A size that disagrees means the stored copy was damaged, and a copy the
      // caller does not trust may be damaged at the same size: replace either with the bytes just verified.
      const existing = await stat(final);
      if (existing.size === digests.size && !(await replaceExisting?.(digests))) return false;
      await rename(tmp, final);
    }
    await fsyncDir(dir);
    // Each directory mkdir just created is itself only an entry in its parent: all of those parents must
    // reach the disk too, or a crash could lose ab/cd/ (and with it the blob) after the index row commits.
    if (firstCreated) {
      for (let d = dir; ; d = path.dirname(d)) {
        await fsyncDir(path.dirname(d));
        if (d === firstCreated || path.dirname(d) === d) break;
      }
    }
    return true;
  }

  /** Opens a blob for reading; undefined when it is not on disk. */
  async open(sha512: string): Promise<OpenBlob | undefined> {
    let handle: FileHandle;
    try {
      handle = await open(this.pathOf(sha512), fsConstants.O_RDONLY);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw err;
    }
    try {
      const info = await handle.stat();
      return { handle, size: info.size, mtimeMs: info.mtimeMs };
    } catch (err) {
      await handle.close();
      throw err;
    }
  }

  /** Size on disk without reading bytes; undefined when missing. */
  async sizeOf(sha512: string): Promise<number | undefined> {
    try {
      return (await stat(this.pathOf(sha512))).size;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw err;
    }
  }

  /** Re-hashes a stored blob. `readStream` lets callers throttle (scrub) or count bytes. */
  hash(sha512: string, wrap?: (stream: Readable) => Readable | AsyncIterable<Buffer>): Promise<Digests> {
    return hashFile(this.pathOf(sha512), wrap);
  }

  /** Moves a damaged blob out of the serving tree; returns where it went. */
  async quarantine(sha512: string): Promise<string> {
    this.reader.forget(sha512);
    await mkdir(this.quarantineDir, { recursive: true });
    const target = path.join(this.quarantineDir, `${sha512}.${Date.now()}`);
    await rename(this.pathOf(sha512), target);
    return target;
  }

  /**
   * Takes back a blob this process just placed when its index row could not be recorded, unless a
   * concurrent upload of the same bytes recorded a row for it meanwhile (`claimed`). The file is
   * first moved aside so that such an upload, linking now, places a copy of its own.
   */
  async unplace(sha512: string, claimed: () => boolean | Promise<boolean>): Promise<void> {
    this.reader.forget(sha512);
    const final = this.pathOf(sha512);
    const aside = path.join(this.tmpDir, `${process.pid}-unplace-${randomBytes(8).toString('hex')}${TEMP_SUFFIX}`);
    try {
      await rename(final, aside);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
      throw err;
    }
    try {
      if (await claimed()) await link(aside, final).catch((err: unknown) => ((err as NodeJS.ErrnoException).code === 'EEXIST' ? undefined : Promise.reject(err)));
    } finally {
      await unlink(aside);
    }
  }

  async remove(sha512: string): Promise<boolean> {
    this.reader.forget(sha512);
    try {
      await unlink(this.pathOf(sha512));
      return true;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false;
      throw err;
    }
  }

  /** Every blob hash found on disk (for fsck/reindex); ignores anything not shaped like a blob. */
  list(): AsyncGenerator<string> {
    return blobsUnder(this.blobsDir);
  }
}

/** Every hash filed in an `ab/cd/ef/<sha512>` tree, in order; anything not shaped like a blob is ignored. */
export async function* blobsUnder(root: string): AsyncGenerator<string> {
  const hex2 = /^[0-9a-f]{2}$/;
  for (const a of await readdirSafe(root)) {
    if (!hex2.test(a)) continue;
    for (const b of await readdirSafe(path.join(root, a))) {
      if (!hex2.test(b)) continue;
      for (const c of await readdirSafe(path.join(root, a, b))) {
        if (!hex2.test(c)) continue;
        for (const name of await readdirSafe(path.join(root, a, b, c))) {
          if (isSha512Hex(name) && name.startsWith(a + b + c)) yield name;
        }
      }
    }
  }
}

export async function readdirSafe(dir: string): Promise<string[]> {
  try {
    return (await readdir(dir)).sort();
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw err;
  }
}

async function fsyncDir(dir: string): Promise<void> {
  const handle = await open(dir, fsConstants.O_RDONLY);
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

export function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}
