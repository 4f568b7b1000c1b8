import { randomBytes } from 'node:crypto';
import type { Readable } from 'node:stream';
import { link, mkdir, open, rename, stat, unlink } from 'node:fs/promises';
import path from 'node:path';
import { isSha512Hex } from '../domain/hashes.js';
import { AppError } from '../errors.js';
import { readdirSafe, type BlobStore } from './blob-store.js';
import {
  DEFAULT_PAGE_SIZE,
  type BlobPage,
  type BlobStat,
  type BlobStorage,
  type ByteRange,
  type StorageWriteOptions,
  type StorageWriteResult,
  type TrashedBlob,
  type TrashReason,
} from './storage.js';

/**
 * The `local` driver: today's store on disk, unchanged (`<data>/blobs/ab/cd/ef/<sha512>`), seen through the
 * BlobStorage interface. The read path keeps using BlobStore's own synchronous fast paths for now.
 */
export class LocalBlobStorage implements BlobStorage {
  readonly kind = 'local';

  constructor(readonly store: BlobStore) {}

  get reserve(): BlobStore['reserve'] {
    return this.store.reserve;
  }

  get location(): string {
    return this.store.blobsDir;
  }

  init(): Promise<number> {
    return this.store.init();
  }

  write(source: Readable | AsyncIterable<Buffer>, options: StorageWriteOptions = {}): Promise<StorageWriteResult> {
    // The local store asks with the digests it computed; the interface asks by hash alone.
    const { replaceExisting, ...rest } = options;
    return this.store.write(source, replaceExisting ? { ...rest, replaceExisting: (d) => replaceExisting(d.sha512) } : rest);
  }

  async stat(sha512: string): Promise<BlobStat | undefined> {
    const info = await stat(this.store.pathOf(sha512)).catch(absentAsUndefined);
    return info && { size: info.size, mtimeMs: info.mtimeMs };
  }

  async read(sha512: string, range?: ByteRange): Promise<Readable | undefined> {
    const handle = await open(this.store.pathOf(sha512), 'r').catch(absentAsUndefined);
    if (!handle) return undefined;
    try {
      if (!range) return handle.createReadStream({ highWaterMark: 1024 * 1024 });
      const { size } = await handle.stat();
      checkRange(range, size);
      return handle.createReadStream({ start: range.start, end: Math.min(range.end, size - 1), highWaterMark: 1024 * 1024 });
    } catch (err) {
      await handle.close();
      throw err;
    }
  }

  async listPage(options: { after?: string | undefined; limit?: number | undefined } = {}): Promise<BlobPage> {
    const { after = '', limit = DEFAULT_PAGE_SIZE } = options;
    const hashes: string[] = [];
    const hex2 = /^[0-9a-f]{2}$/;
    const root = this.store.blobsDir;
    // Directories sort like the hashes they hold, so whole directories before the cursor are skipped.
    for (const a of await readdirSafe(root)) {
      if (!hex2.test(a) || a < after.slice(0, 2)) continue;
      for (const b of await readdirSafe(path.join(root, a))) {
        if (!hex2.test(b) || a + b < after.slice(0, 4)) continue;
        for (const c of await readdirSafe(path.join(root, a, b))) {
          if (!hex2.test(c) || a + b + c < after.slice(0, 6)) continue;
          for (const name of await readdirSafe(path.join(root, a, b, c))) {
            if (!isSha512Hex(name) || !name.startsWith(a + b + c) || name <= after) continue;
            if (hashes.length === limit) return { hashes, next: hashes[hashes.length - 1] };
            hashes.push(name);
          }
        }
      }
    }
    return { hashes, next: undefined };
  }

  list(): AsyncIterable<string> {
    return this.store.list();
  }

  async trash(sha512: string, reason: TrashReason): Promise<TrashedBlob | undefined> {
    if (reason === 'quarantine') {
      const where = await this.store.quarantine(sha512).catch(absentAsUndefined);
      return where === undefined ? undefined : { sha512, reason, where };
    }
    // gc trash is a temp file: after a crash, the next start's stale-temp sweep removes it.
    const where = path.join(this.store.tmpDir, `${process.pid}-gc-${randomBytes(8).toString('hex')}.tmp`);
    this.store.reader.forget(sha512);
    const moved = await rename(this.store.pathOf(sha512), where).then(() => true, absentAsUndefined);
    return moved ? { sha512, reason, where } : undefined;
  }

  async restore(trashed: TrashedBlob): Promise<boolean> {
    const final = this.store.pathOf(trashed.sha512);
    await mkdir(path.dirname(final), { recursive: true });
    // link(2) never overwrites: a copy placed meanwhile by a re-upload stays, and ours is dropped.
    const restored = await link(trashed.where, final).then(
      () => true,
      (err: unknown) => ((err as NodeJS.ErrnoException).code === 'EEXIST' ? false : Promise.reject(err)),
    );
    await unlink(trashed.where);
    return restored;
  }

  async purge(trashed: TrashedBlob): Promise<void> {
    await unlink(trashed.where).catch(absentAsUndefined);
  }

  remove(sha512: string): Promise<boolean> {
    return this.store.remove(sha512);
  }

  removeStale(): Promise<number> {
    return this.store.removeStaleTemps();
  }

  unplace(sha512: string, claimed: () => boolean | Promise<boolean>): Promise<void> {
    return this.store.unplace(sha512, claimed);
  }
}

/** HTTP's rule for one range: the start must fall inside the blob; an end past it is clipped by the caller. */
export function checkRange(range: ByteRange, size: number): void {
  if (!Number.isSafeInteger(range.start) || !Number.isSafeInteger(range.end) || range.start < 0 || range.start > range.end || range.start >= size) {
    throw new AppError('RANGE_NOT_SATISFIABLE', `range ${range.start}-${range.end} is outside a blob of ${size} bytes`, { size });
  }
}

function absentAsUndefined(err: unknown): undefined {
  if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
  throw err;
}
