import type { Readable } from 'node:stream';
import type { Logger } from 'pino';
import { AppError, fromFsError } from '../errors.js';
import type { NameIndex } from '../db/index.js';
import { BlobStore } from '../store/blob-store.js';
import { LocalBlobStorage } from '../store/local-storage.js';
import type { BlobStorage } from '../store/storage.js';
import type { Digests, ExpectedDigests } from '../store/digests.js';
import { isSha512Hex } from '../domain/hashes.js';
import { filenameProblem } from '../domain/names.js';
import { leased, type UploadLease } from '../maintenance/watermark.js';

export interface IngestOptions {
  /** Name to attach once the blob is stored. */
  filename?: string;
  expected?: ExpectedDigests;
  maxBytes?: number;
  /** Token name recorded with the name attachment. */
  by?: string | null;
  /** Keep the blob even when no name references it. */
  pinned?: boolean;
  /** Space held against the high watermark: grown as bytes arrive, told of the commit. */
  lease?: UploadLease;
}

export interface IngestResult {
  digests: Digests;
  created: boolean;
  filename?: string;
}

/**
 * The only place that combines store and index (and, later, upstream).
 * Order matters: bytes are durable and verified in the storage (disk or bucket) before the index row that makes them visible.
 */
export class Ingest {
  readonly storage: BlobStorage;

  constructor(
    storage: BlobStorage | BlobStore,
    readonly index: NameIndex,
    readonly log?: Logger,
  ) {
    this.storage = storage instanceof BlobStore ? new LocalBlobStorage(storage) : storage;
  }

  async ingest(source: Readable | AsyncIterable<Buffer>, options: IngestOptions = {}): Promise<IngestResult> {
    if (options.filename !== undefined) assertFilename(options.filename);
    const lease = options.lease;
    const limit = Math.min(options.maxBytes ?? Number.MAX_SAFE_INTEGER, options.expected?.size ?? Number.MAX_SAFE_INTEGER);
    const { digests, created: written, contended } = await this.storage.write(lease ? leased(source, lease, limit) : source, {
      ...(options.expected ? { expected: options.expected } : {}),
      ...(options.maxBytes !== undefined ? { maxBytes: options.maxBytes } : {}),
      // A copy found damaged but left in place must give way to the bytes just verified; deduping
      // against it would un-quarantine the damage. (A file with no index row yet is a concurrent
      // upload's or a crash's: it was verified before it was linked, so dedup is right for it.)
      replaceExisting: async (sha512) => ((await this.index.blob(sha512))?.quarantined_at ?? null) !== null,
    });
    let created: boolean;
    try {
      const recorded = await this.index.recordBlob(digests, {
        ...(options.filename !== undefined ? { filename: options.filename } : {}),
        by: options.by ?? null,
        pinned: options.pinned ?? false,
      });
      created = written && (!contended || recorded);
      options.lease?.recorded(digests.size, created);
    } catch (err) {
      // No blob file may stay without its row (e.g. SQLite "database or disk is full" after the link):
      // take back what this upload placed; a file that was already there before stays.
      if (written) await this.storage.unplace(digests.sha512, async () => (await this.index.blob(digests.sha512)) !== undefined);
      throw fromFsError(err);
    }
    this.log?.info(
      { sha512: digests.sha512, size: digests.size, filename: options.filename, created, by: options.by },
      created ? 'blob stored' : 'blob already stored',
    );
    return { digests, created, ...(options.filename !== undefined ? { filename: options.filename } : {}) };
  }

  /** Attaches a name to a blob that is already stored, without re-sending bytes. */
  async link(filename: string, sha512: string, by: string | null): Promise<Digests> {
    assertFilename(filename);
    assertSha512(sha512);
    const blob = await this.index.blob(sha512);
    if (!blob || blob.quarantined_at !== null) throw new AppError('BLOB_NOT_FOUND', 'no stored blob has that sha512', { sha512 });
    if (!(await this.index.attach(filename, sha512, by))) throw new AppError('BLOB_NOT_FOUND', 'no stored blob has that sha512', { sha512 });
    this.log?.info({ filename, sha512, by }, 'name attached');
    return { size: blob.size, sha512: blob.sha512, blake2b: blob.blake2b, sha256: blob.sha256 };
  }

  /** Detaching must work on a full disk: it may use the reserve, which is what the reserve is for. */
  async detach(filename: string, by: string | null): Promise<number> {
    assertFilename(filename);
    const detach = () => this.index.detach(filename, by);
    const reserve = this.storage.reserve;
    const detached = reserve
      ? await reserve.whenFull<number>(detach, () =>
          this.log?.warn({ filename }, 'disk full: released the reserve to record a detach (uploads wait until gc frees space)'),
        )
      : await detach();
    if (detached === 0) throw new AppError('NAME_NOT_FOUND', 'no blob is attached to that name', { filename });
    this.log?.info({ filename, by, detached }, 'name detached');
    return detached;
  }
}

export function assertFilename(filename: string): void {
  const problem = filenameProblem(filename);
  if (problem) throw new AppError('BAD_FILENAME', problem);
}

export function assertSha512(value: string, what = 'sha512'): void {
  if (!isSha512Hex(value)) throw new AppError('BAD_HASH', `${what} must be 128 lower-case hex digits`);
}
