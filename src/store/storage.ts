import type { Readable } from 'node:stream';
import type { Digests, ExpectedDigests } from './digests.js';

/**
 * What ingest, the read path and maintenance need from wherever blobs live (`local` disk or an `s3` bucket).
 * Every driver keeps the same guarantees: a blob becomes visible under its hash only after its digests were
 * verified; nothing partial is ever visible; a failed or interrupted write leaves nothing a reader can see,
 * and whatever it left out of sight is swept by `init` or `removeStale`.
 */
export interface BlobStorage {
  readonly kind: 'local' | 's3';
  /** Where the blobs are, for logs and status: a directory, or `s3://bucket/prefix`. */
  readonly location: string;

  /** Prepares the store and removes what crashed writers left behind; returns how many leftovers went. */
  init(): Promise<number>;

  /**
   * Streams `source` in while computing every digest. Throws AppError DIGEST_MISMATCH (nothing stored) when
   * a declared value differs, PAYLOAD_TOO_LARGE past `maxBytes`. Two identical concurrent writes both succeed.
   */
  write(source: Readable | AsyncIterable<Buffer>, options?: StorageWriteOptions): Promise<StorageWriteResult>;

  /** Size and modification time without reading bytes; undefined when absent. */
  stat(sha512: string): Promise<BlobStat | undefined>;

  /**
   * The blob's bytes, or the inclusive byte range `[start, end]` of them; undefined when absent. As in HTTP, an
   * end past the blob is clipped; a start at or past the end (or after `end`) is RANGE_NOT_SATISFIABLE.
   */
  read(sha512: string, range?: ByteRange): Promise<Readable | undefined>;

  /** One page of stored hashes in ascending order, starting after `after`. */
  listPage(options?: { after?: string | undefined; limit?: number | undefined }): Promise<BlobPage>;

  /** Every stored hash, ascending, paged underneath. */
  list(): AsyncIterable<string>;

  /**
   * Takes a blob out of the serving namespace without destroying it: `gc` for a removal that may still be
   * undone (restore) before `purge`; `quarantine` for damaged bytes kept for an operator. Undefined when absent.
   */
  trash(sha512: string, reason: TrashReason): Promise<TrashedBlob | undefined>;

  /** Puts a trashed blob back; false when a blob already stands at its hash (a re-upload won, same bytes). */
  restore(trashed: TrashedBlob): Promise<boolean>;

  /** Destroys a trashed blob for good. */
  purge(trashed: TrashedBlob): Promise<void>;

  /** Deletes a stored blob outright; false when it was not there. */
  remove(sha512: string): Promise<boolean>;

  /** Removes abandoned in-flight writes (temp files, multipart uploads, gc trash) older than the driver's bar. */
  removeStale(): Promise<number>;

  /**
   * Takes back a blob this process just wrote (`created`) when its index row could not be recorded, unless
   * `claimed` says a concurrent writer of the same bytes recorded one meanwhile: no blob stays without its row.
   */
  unplace(sha512: string, claimed: () => boolean | Promise<boolean>): Promise<void>;

  /**
   * Headroom on the data disk that blob writes may not use (local driver only: S3 blobs do not fill it),
   * released so the index can still record a detach or a gc deletion on a full disk.
   */
  /** Releases what the driver holds open (S3: its socket pool); the storage is unusable afterwards. */
  close?(): void;

  readonly reserve?: { whenFull<T>(write: () => T | Promise<T>, onRelease?: () => void): Promise<T> } | undefined;
}

export interface StorageWriteOptions {
  expected?: ExpectedDigests;
  /** Bytes beyond this abort the write with PAYLOAD_TOO_LARGE. */
  maxBytes?: number;
  /**
   * Asked when a blob with the same hash is already stored: true means the stored copy is not trusted
   * (e.g. quarantined) and is replaced by the verified bytes. Depends on the hash alone, so a driver may
   * ask before reading the body (S3: to decide between uploading and only verifying).
   */
  replaceExisting?: (sha512: string) => boolean | Promise<boolean>;
  /** Told the bytes received so far before each chunk is stored; throwing aborts the write (nothing stored). */
  onProgress?: (received: number) => void;
}

export interface StorageWriteResult {
  digests: Digests;
  /** False when an identical blob was already stored (deduplicated). */
  created: boolean;
  /**
   * True when nothing stood at the hash when the driver looked, and a concurrent writer of the same bytes may have
   * put its copy there too: a service without a conditional PUT cannot tell which of them created the blob, so
   * the index row decides. (Local disk never sets it: link(2) makes exactly one of them the creator.)
   */
  contended?: boolean;
}

export interface BlobStat {
  size: number;
  mtimeMs: number;
}

/** Inclusive, like HTTP's `bytes=start-end`. */
export interface ByteRange {
  start: number;
  end: number;
}

export interface BlobPage {
  hashes: string[];
  /** Pass as `after` for the next page; undefined on the last page. */
  next: string | undefined;
}

export type TrashReason = 'gc' | 'quarantine';

export interface TrashedBlob {
  sha512: string;
  reason: TrashReason;
  /** Where the driver put it (a path, an object key): shown to operators, handed back to restore/purge. */
  where: string;
}

/** The page size listings use unless told otherwise (S3's own maximum per request). */
export const DEFAULT_PAGE_SIZE = 1000;

/** Every hash of a paged store, one page at a time. */
export async function* listAll(storage: Pick<BlobStorage, 'listPage'>, limit?: number): AsyncGenerator<string> {
  let after: string | undefined;
  do {
    const page = await storage.listPage({ after, limit });
    yield* page.hashes;
    after = page.next;
  } while (after !== undefined);
}
