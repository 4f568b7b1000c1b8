import { createHash, randomBytes } from 'node:crypto';
import { mkdir, open, rename, stat, unlink, type FileHandle } from 'node:fs/promises';
import path from 'node:path';
import { Readable } from 'node:stream';
import type { Logger } from 'pino';
import { BlobReader, type BlobRef } from './blob-reader.js';
import { blobsUnder, processAlive, readdirSafe } from './blob-store.js';
import { blobFile } from './paths.js';
import type { BlobStorage } from './storage.js';

interface Entry {
  size: number;
  /** The index row's version the bytes were cached under; undefined for an entry found on disk at start. */
  version: string | undefined;
}

export interface ReadCacheOptions {
  dir: string;
  maxBytes: number;
  storage: BlobStorage;
  log?: Logger | undefined;
}

const TEMP_SUFFIX = '.tmp';

/**
 * FASTPULL_CACHE_DIR: whole blobs from a remote storage kept on local disk (`<dir>/blobs/ab/cd/ef/<sha512>`),
 * served with the local fast path (its own BlobReader). A blob is filled once at a time (single flight),
 * hashed on its way to a temp file and renamed in only when its SHA-512 matches, so a damaged object never
 * enters. Least recently used blobs go first once the bytes exceed `maxBytes`. Entries survive a restart:
 * the directory is counted again in the background at start, oldest files first in line for eviction.
 * An entry is dropped when the index row's version moves on (quarantine, release, resize), as the
 * in-memory caches are.
 */
export class ReadCache {
  readonly reader: BlobReader;
  readonly blobsDir: string;
  readonly tmpDir: string;
  readonly maxBytes: number;
  /** Map order is recency order: the first entry is the least recently used. */
  private readonly entries = new Map<string, Entry>();
  private bytes = 0;
  private readonly filling = new Map<string, Promise<boolean>>();
  private readonly storage: BlobStorage;
  private readonly log: Logger | undefined;
  /** Told of a blob whose bytes in the storage do not hash to its name (never cached; verify-on-serve judges it). */
  onDamaged: ((blob: BlobRef, actualSha512: string) => void) | undefined;
  /** The start-up count of what is already on disk; resolves when done. */
  ready: Promise<void> = Promise.resolve();

  constructor(options: ReadCacheOptions) {
    this.blobsDir = path.join(options.dir, 'blobs');
    this.tmpDir = path.join(options.dir, 'tmp');
    this.maxBytes = options.maxBytes;
    this.storage = options.storage;
    this.log = options.log;
    this.reader = new BlobReader((sha512) => blobFile(this.blobsDir, sha512));
  }

  /** Bytes and blobs held (as far as this process has counted). */
  get usage(): { bytes: number; blobs: number } {
    return { bytes: this.bytes, blobs: this.entries.size };
  }

  /** Creates the directories and starts counting what an earlier run left (not awaited: see `ready`). */
  async init(): Promise<void> {
    await mkdir(this.blobsDir, { recursive: true });
    await mkdir(this.tmpDir, { recursive: true });
    this.ready = this.scan().catch((err: unknown) => this.log?.error({ err, dir: this.blobsDir }, 'counting the read cache failed'));
  }

  /**
   * True when the cache holds this blob at this row version, marking it most recently used. A size or
   * version that disagrees drops the entry (the caller goes to the storage, which may refill it).
   */
  holds(blob: BlobRef): boolean {
    const entry = this.entries.get(blob.sha512);
    if (!entry) return false;
    if (entry.size !== blob.size || (entry.version !== undefined && entry.version !== blob.version)) {
      this.drop(blob.sha512);
      return false;
    }
    entry.version = blob.version;
    this.entries.delete(blob.sha512);
    this.entries.set(blob.sha512, entry);
    return true;
  }

  /** Copies a blob in from the storage unless already there or under way; true once it is held. */
  fill(blob: BlobRef): Promise<boolean> {
    return this.once(blob, () => this.storage.read(blob.sha512));
  }

  /** Keeps bytes already read and verified elsewhere (a small blob); verified again on the way in all the same. */
  put(blob: BlobRef, bytes: Buffer): Promise<boolean> {
    return this.once(blob, () => Promise.resolve(Readable.from([bytes])));
  }

  /** Forgets a blob and removes its file (damaged, gone from under us, evicted). */
  drop(sha512: string): void {
    const entry = this.entries.get(sha512);
    if (!entry) return;
    this.entries.delete(sha512);
    this.bytes -= entry.size;
    this.reader.forget(sha512);
    // An open descriptor keeps reading the unlinked file: responses under way finish.
    void unlink(blobFile(this.blobsDir, sha512)).catch(() => undefined);
  }

  close(): void {
    this.reader.closeAll();
  }

  private once(blob: BlobRef, source: () => Promise<Readable | AsyncIterable<Buffer> | undefined>): Promise<boolean> {
    if (blob.size > this.maxBytes) return Promise.resolve(false);
    if (this.entries.has(blob.sha512)) return Promise.resolve(true);
    let pending = this.filling.get(blob.sha512);
    if (!pending) {
      pending = this.copyIn(blob, source)
        .catch((err: unknown) => {
          this.log?.warn({ err, sha512: blob.sha512 }, 'filling the read cache failed');
          return false;
        })
        .finally(() => this.filling.delete(blob.sha512));
      this.filling.set(blob.sha512, pending);
    }
    return pending;
  }

  private async copyIn(blob: BlobRef, source: () => Promise<Readable | AsyncIterable<Buffer> | undefined>): Promise<boolean> {
    const body = await source();
    if (!body) return false;
    const tmp = path.join(this.tmpDir, `${process.pid}-${randomBytes(8).toString('hex')}${TEMP_SUFFIX}`);
    let handle: FileHandle | undefined;
    try {
      handle = await open(tmp, 'wx', 0o644);
      const hash = createHash('sha512');
      let size = 0;
      for await (const chunk of body as AsyncIterable<Buffer>) {
        size += chunk.length;
        if (size > blob.size) break;
        hash.update(chunk);
        await handle.write(chunk);
      }
      // Durable before it is renamed in: a crash must not leave a file of the right size holding zeros.
      await handle.sync();
      await handle.close();
      handle = undefined;
      const actual = size === blob.size ? hash.digest('hex') : `${size > blob.size ? 'more' : 'fewer'} than ${blob.size} bytes`;
      if (actual !== blob.sha512) {
        this.log?.error({ sha512: blob.sha512, actualSha512: actual, storage: this.storage.location }, 'stored blob is damaged: not cached');
        this.onDamaged?.(blob, actual);
        return false;
      }
      const final = blobFile(this.blobsDir, blob.sha512);
      await mkdir(path.dirname(final), { recursive: true });
      await rename(tmp, final);
      this.admit(blob.sha512, { size, version: blob.version });
      return true;
    } finally {
      if (handle) await handle.close().catch(() => undefined);
      await unlink(tmp).catch(() => undefined);
      if ('destroy' in body && typeof body.destroy === 'function') body.destroy();
    }
  }

  private admit(sha512: string, entry: Entry): void {
    const previous = this.entries.get(sha512);
    if (previous) this.bytes -= previous.size;
    this.entries.delete(sha512);
    this.entries.set(sha512, entry);
    this.bytes += entry.size;
    for (const [victim] of this.entries) {
      if (this.bytes <= this.maxBytes) break;
      this.drop(victim);
    }
  }

  /** Counts the blobs an earlier run cached (oldest first in line for eviction) and removes its temp files. */
  private async scan(): Promise<void> {
    for (const name of await readdirSafe(this.tmpDir)) {
      const pid = Number(name.split('-', 1)[0]);
      if (!Number.isInteger(pid) || pid === process.pid || !processAlive(pid)) await unlink(path.join(this.tmpDir, name)).catch(() => undefined);
    }
    const found: { sha512: string; size: number; mtimeMs: number }[] = [];
    for await (const sha512 of blobsUnder(this.blobsDir)) {
      const info = await stat(blobFile(this.blobsDir, sha512)).catch(() => undefined);
      if (info?.isFile()) found.push({ sha512, size: info.size, mtimeMs: info.mtimeMs });
    }
    found.sort((x, y) => x.mtimeMs - y.mtimeMs);
    // Entries filled while counting are newer than anything found: they stay at the recent end.
    const filled = new Map(this.entries);
    this.entries.clear();
    this.bytes = 0;
    for (const f of found) {
      if (!filled.has(f.sha512)) this.admitQuietly(f.sha512, { size: f.size, version: undefined });
    }
    for (const [sha512, entry] of filled) this.admitQuietly(sha512, entry);
    for (const [victim] of this.entries) {
      if (this.bytes <= this.maxBytes) break;
      this.drop(victim);
    }
    this.log?.info({ dir: this.blobsDir, blobs: this.entries.size, bytes: this.bytes }, 'read cache counted');
  }

  private admitQuietly(sha512: string, entry: Entry): void {
    this.entries.set(sha512, entry);
    this.bytes += entry.size;
  }
}
