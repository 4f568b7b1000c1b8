import { createHash } from 'node:crypto';
import { pipeline, Transform, type Readable } from 'node:stream';
import type { BlobReader, BlobRef, SmallRead } from './blob-reader.js';
import type { BlobStore } from './blob-store.js';
import type { ReadCache } from './read-cache.js';
import { SmallBlobCache } from './small-blob-cache.js';
import type { BlobStorage, ByteRange } from './storage.js';

/**
 * Where the download path finds a blob's bytes: a local file with the fast path (descriptor cache,
 * small-blob cache, pooled reads) when there is one (the local store, or the read cache for the blobs it
 * holds), else the remote storage.
 */
export interface BlobSource {
  /** The reader whose files hold this blob, if any; on a remote storage, only the read cache's hits. */
  local(blob: BlobRef): BlobReader | undefined;
  /** Present on a remote storage (s3). */
  remote?: RemoteReader | undefined;
}

/** The local driver: every blob is a local file. */
export function localSource(store: BlobStore): BlobSource {
  const reader = store.reader;
  return { local: () => reader };
}

const SMALL_CACHE_DEFAULT_BYTES = 64 * 1024 * 1024;

/**
 * Reads from a remote storage (S3) for the download path: small blobs whole, verified, and kept in memory
 * (as the local reader does); larger ones streamed, a range passed through as a ranged GET. Every read of
 * a blob the read cache lacks starts filling it (single flight), so the next request is served locally.
 */
export class RemoteReader {
  readonly smallCache: SmallBlobCache;

  constructor(
    readonly storage: BlobStorage,
    readonly cache: ReadCache | undefined,
    options: { smallCacheBytes?: number } = {},
  ) {
    this.smallCache = new SmallBlobCache(options.smallCacheBytes ?? SMALL_CACHE_DEFAULT_BYTES);
  }

  source(): BlobSource {
    const cache = this.cache;
    return { local: cache ? (blob) => (cache.holds(blob) ? cache.reader : undefined) : () => undefined, remote: this };
  }

  /** A local cache file the reader could not find (removed under us): forget it, the storage answers. */
  lost(blob: BlobRef): void {
    this.cache?.drop(blob.sha512);
  }

  /** Size in the storage, without reading bytes (HEAD). */
  async size(blob: BlobRef): Promise<number | undefined> {
    return (await this.storage.stat(blob.sha512))?.size;
  }

  /** Whole bytes of a small blob, verified against its hash before they are kept or served. */
  async small(blob: BlobRef): Promise<SmallRead> {
    const cached = this.smallCache.get(blob.sha512, blob.version);
    if (cached) return { bytes: cached };
    const body = await this.storage.read(blob.sha512);
    if (!body) return { onDisk: undefined };
    const chunks: Buffer[] = [];
    let got = 0;
    try {
      for await (const chunk of body as AsyncIterable<Buffer>) {
        chunks.push(chunk);
        got += chunk.length;
        if (got > blob.size) break;
      }
    } finally {
      body.destroy();
    }
    if (got !== blob.size) return { onDisk: got };
    const bytes = Buffer.concat(chunks, got);
    const actual = createHash('sha512').update(bytes).digest('hex');
    if (actual !== blob.sha512) return { damaged: actual };
    this.smallCache.set(blob.sha512, blob.version, bytes);
    void this.cache?.put(blob, bytes);
    return { bytes };
  }

  /**
   * Bytes [start, end] of a blob as a stream; undefined when the storage lacks it. The stream errors
   * (so the response is cut, never cleanly short) when the storage sends another number of bytes than
   * the index promises, or, for the whole blob, bytes that do not hash to its name: checked before the
   * last chunk goes out, so a client or CDN never receives a complete damaged body. Destroying the
   * stream (a client that went away) aborts the storage's GET and frees its socket.
   */
  async stream(blob: BlobRef, range: ByteRange | undefined, onDamaged: (actual: string) => void): Promise<Readable | undefined> {
    const body = await this.storage.read(blob.sha512, range);
    if (!body) return undefined;
    if (this.cache) void this.cache.fill(blob);
    const expected = range ? range.end - range.start + 1 : blob.size;
    const hash = range ? undefined : createHash('sha512');
    let got = 0;
    const checked = new Transform({
      transform(chunk: Buffer, _encoding, callback) {
        got += chunk.length;
        if (got > expected) return callback(new Error(`the storage sent more than the ${expected} bytes the index promises`));
        if (hash) {
          hash.update(chunk);
          if (got === expected) {
            const actual = hash.digest('hex');
            if (actual !== blob.sha512) {
              onDamaged(actual);
              return callback(new Error('the stored bytes do not hash to their name'));
            }
          }
        }
        callback(null, chunk);
      },
      flush(callback) {
        callback(got < expected ? new Error(`the storage sent ${got} of ${expected} bytes`) : null);
      },
    });
    // pipeline destroys the body (aborting its request) whenever `checked` ends early, whatever the cause.
    pipeline(body, checked, () => undefined);
    return checked;
  }
}
