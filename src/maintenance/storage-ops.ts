import { existsSync } from 'node:fs';
import { stat } from 'node:fs/promises';
import type { Readable } from 'node:stream';
import type { Awaitable } from '../db/awaitable.js';
import type { BlobStore } from '../store/blob-store.js';
import { MultiHasher, type Digests } from '../store/digests.js';
import { LocalBlobStorage } from '../store/local-storage.js';
import type { BlobStorage } from '../store/storage.js';

/** Today's store on disk behind a `local` driver: maintenance keeps its disk-only duties (reserve, temps) there. */
export function localStoreOf(storage: BlobStorage): BlobStore | undefined {
  return storage instanceof LocalBlobStorage ? storage.store : undefined;
}

/** Every digest of a stored blob, re-read through `wrap` (throttle, count); undefined when it is absent. */
export async function hashStored(
  storage: BlobStorage,
  sha512: string,
  wrap?: (stream: Readable) => Readable | AsyncIterable<Buffer>,
): Promise<Digests | undefined> {
  const stream = await storage.read(sha512).catch(absentAsUndefined);
  if (stream === undefined) return undefined;
  const hasher = new MultiHasher();
  try {
    for await (const chunk of wrap ? wrap(stream) : stream) hasher.update(chunk as Buffer);
  } catch (err) {
    stream.destroy();
    // A blob removed (gc, quarantine) while being read is absent, not an error.
    return absentAsUndefined(err);
  }
  return hasher.digest();
}

/**
 * What tells one stored copy from a replacement at the same hash: the inode on disk (a re-upload renames a new
 * file over it), size and modification time in a bucket (a re-upload writes a new object).
 */
export async function storedIdentity(storage: BlobStorage, sha512: string): Promise<string | undefined> {
  const local = localStoreOf(storage);
  if (local) {
    const info = await stat(local.pathOf(sha512)).catch(absentAsUndefined);
    return info && String(info.ino);
  }
  const info = await storage.stat(sha512);
  return info && `${info.size}@${info.mtimeMs}`;
}

/**
 * "Is the blob still absent?" for an index change that must not race a re-upload: on disk a synchronous check,
 * which SQLite runs under its write lock; elsewhere a HEAD, asked while PostgreSQL holds the row.
 */
export function stillAbsent(storage: BlobStorage, sha512: string): () => Awaitable<boolean> {
  const local = localStoreOf(storage);
  if (local) return () => !existsSync(local.pathOf(sha512));
  return async () => (await storage.stat(sha512)) === undefined;
}

/** Quarantines a stored blob (moves it out of the serving namespace); undefined when it was already gone. */
export async function quarantineStored(storage: BlobStorage, sha512: string): Promise<string | undefined> {
  return (await storage.trash(sha512, 'quarantine'))?.where;
}

function absentAsUndefined(err: unknown): undefined {
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  if (code === 'ENOENT') return undefined;
  throw err;
}
