import {
  AbortMultipartUploadCommand,
  CompleteMultipartUploadCommand,
  CopyObjectCommand,
  CreateMultipartUploadCommand,
  DeleteObjectCommand,
  GetObjectCommand,
  HeadBucketCommand,
  HeadObjectCommand,
  ListMultipartUploadsCommand,
  ListObjectsV2Command,
  ListPartsCommand,
  S3Client,
  S3ServiceException,
  UploadPartCopyCommand,
} from '@aws-sdk/client-s3';
import { Upload } from '@aws-sdk/lib-storage';
import { randomBytes } from 'node:crypto';
import type { Agent } from 'node:http';
import { createReadStream } from 'node:fs';
import { mkdir, open, readdir, readFile, stat, unlink, writeFile, type FileHandle } from 'node:fs/promises';
import path from 'node:path';
import { Readable } from 'node:stream';
import { isSha512Hex } from '../domain/hashes.js';
import { shardedPath } from '../domain/layout.js';
import { AppError, fromFsError } from '../errors.js';
import { processAlive } from './blob-store.js';
import { compareDigests, MultiHasher, type Digests, type ExpectedDigests } from './digests.js';
import { checkRange } from './local-storage.js';
import {
  DEFAULT_PAGE_SIZE,
  listAll,
  type BlobPage,
  type BlobStat,
  type BlobStorage,
  type ByteRange,
  type StorageWriteOptions,
  type StorageWriteResult,
  type TrashedBlob,
  type TrashReason,
} from './storage.js';

export interface S3StorageOptions {
  client: S3Client;
  bucket: string;
  /** Key prefix without leading or trailing slash; '' puts `ab/cd/ef/<sha512>` at the bucket's root. */
  prefix?: string;
  /** Local directory for bodies whose hash is only known once read (spooled, verified, then uploaded). */
  spoolDir: string;
  /**
   * In-flight work older than this is abandoned: multipart uploads (another replica's live upload is
   * younger), gc trash, spool files. Default a day, the local store's bar for temp files.
   */
  staleAfterMs?: number;
  /**
   * A multipart upload whose newest part (or, with none yet, its start) is older than this was abandoned by a
   * writer that died, on whichever replica: a live upload sends a part every few seconds. Default an hour.
   */
  abandonedAfterMs?: number;
  pageSize?: number;
  /** Multipart part size and parallel parts per upload (lib-storage's partSize/queueSize). */
  partSize?: number;
  queueSize?: number;
  /** Server-side copies (trash, restore) above this go part by part, in parts of `copyPartSize`. */
  maxSingleCopy?: number;
  copyPartSize?: number;
  /** The client's connection pool, when the caller made it: only observed (sockets in use, for tests and status). */
  agent?: Agent;
}

const MIN_PART_SIZE = 5 * 1024 * 1024;
const MAX_PARTS = 10_000;
/** Parts are held in memory (queueSize at a time, 2 by default: an upload holds about two parts in RSS): 64 MiB parts still reach 640 GB objects. */
const MAX_PART_SIZE = 64 * 1024 * 1024;
/** CopyObject's ceiling; bigger objects are copied part by part. */
const MAX_SINGLE_COPY = 5 * 1024 ** 3;
const COPY_PART_SIZE = 512 * 1024 ** 2;
const STALE_AFTER_MS = 24 * 3600 * 1000;
const ABANDONED_AFTER_MS = 3600 * 1000;
const SPOOL_SUFFIX = '.spool';
/** A marker in the spool directory naming an upload this process has under way (see `sweep`). */
const UPLOAD_SUFFIX = '.upload';
const BLOB_KEY = /^([0-9a-f]{2})\/([0-9a-f]{2})\/([0-9a-f]{2})\/([0-9a-f]{128})$/;
/** Every blob key sorts at or before this one (relative to the prefix); trash/ sorts after it. */
const LAST_BLOB_KEY = `ff/ff/ff/${'f'.repeat(128)}`;

/**
 * The `s3` driver: objects at `PREFIX/ab/cd/ef/<sha512>` in any S3-compatible bucket.
 *
 * Visibility follows the local store's rule with what S3 offers (no conditional PUT on Swift, so no
 * create-if-absent): an object appears at its key only when a PUT or a multipart completion succeeds,
 * and both happen only after the digests were checked.
 * - Declared SHA512 (the key is known): HEAD first; if absent, the body streams into a multipart upload
 *   at the final key whose last part is released only after every digest matched; any failure aborts the
 *   upload. If present, the body is only read and verified (dedup without uploading).
 * - Undeclared SHA512: the body is spooled to a local file while hashed, verified, then HEAD decides
 *   between dedup and uploading the spooled file.
 * Two identical concurrent uploads may both complete: same key, same bytes.
 */
export class S3BlobStorage implements BlobStorage {
  readonly kind = 's3';
  readonly location: string;
  readonly bucket: string;
  /** '' or 'prefix/'. */
  readonly root: string;
  private readonly client: S3Client;
  readonly spoolDir: string;
  private readonly staleAfterMs: number;
  private readonly abandonedAfterMs: number;
  private readonly pageSize: number;
  private readonly partSize: number | undefined;
  private readonly queueSize: number;
  private readonly maxSingleCopy: number;
  private readonly copyPartSize: number;
  private readonly agent: Agent | undefined;

  constructor(options: S3StorageOptions) {
    this.client = options.client;
    this.bucket = options.bucket;
    const prefix = (options.prefix ?? '').replace(/^\/+|\/+$/g, '');
    this.root = prefix === '' ? '' : `${prefix}/`;
    this.location = `s3://${this.bucket}/${prefix}`;
    this.spoolDir = options.spoolDir;
    this.staleAfterMs = options.staleAfterMs ?? STALE_AFTER_MS;
    this.abandonedAfterMs = options.abandonedAfterMs ?? ABANDONED_AFTER_MS;
    this.pageSize = options.pageSize ?? DEFAULT_PAGE_SIZE;
    this.partSize = options.partSize;
    this.queueSize = options.queueSize ?? 2;
    this.maxSingleCopy = options.maxSingleCopy ?? MAX_SINGLE_COPY;
    this.copyPartSize = options.copyPartSize ?? COPY_PART_SIZE;
    this.agent = options.agent;
  }

  close(): void {
    this.client.destroy();
  }

  /** Sockets to the endpoint carrying a request or a body right now (undefined when the pool is not ours to see). */
  get socketsInUse(): number | undefined {
    if (!this.agent) return undefined;
    return Object.values(this.agent.sockets).reduce((n, list) => n + (list?.length ?? 0), 0);
  }

  key(sha512: string): string {
    return this.root + shardedPath(sha512);
  }

  async init(): Promise<number> {
    await mkdir(this.spoolDir, { recursive: true });
    // Fails start-up with the service's own answer (no such bucket, bad credentials, wrong endpoint).
    await this.client.send(new HeadBucketCommand({ Bucket: this.bucket }));
    return this.sweep(true);
  }

  removeStale(): Promise<number> {
    return this.sweep(false);
  }

  async write(source: Readable | AsyncIterable<Buffer>, options: StorageWriteOptions = {}): Promise<StorageWriteResult> {
    const { expected = {}, maxBytes = Number.MAX_SAFE_INTEGER, replaceExisting, onProgress } = options;
    const chunks: AsyncIterable<Buffer> = source instanceof Readable ? source.iterator({ destroyOnReturn: false }) : source;
    const declared = expected.sha512 !== undefined && isSha512Hex(expected.sha512) ? expected.sha512 : undefined;
    if (declared === undefined) return this.spoolAndUpload(chunks, expected, maxBytes, replaceExisting, onProgress);

    const existing = await this.stat(declared);
    const trusted = existing !== undefined && (expected.size === undefined || existing.size === expected.size) && !(await replaceExisting?.(declared));
    if (trusted) {
      // Already stored: the client's bytes must still be what it declared, but need not travel again.
      const verifier = verifying(chunks, expected, maxBytes, onProgress);
      await drain(verifier);
      return { digests: verifier.digests(), created: false };
    }
    const verifier = verifying(chunks, expected, maxBytes, onProgress);
    await this.upload(declared, Readable.from(verifier), expected.size ?? maxBytes);
    return { digests: verifier.digests(), created: true, contended: existing === undefined };
  }

  async stat(sha512: string): Promise<BlobStat | undefined> {
    return this.head(this.key(sha512));
  }

  async read(sha512: string, range?: ByteRange): Promise<Readable | undefined> {
    // An invalid Range header would be ignored by S3 and the whole object sent: refuse it here.
    if (range) checkRange(range, Number.MAX_SAFE_INTEGER);
    try {
      const out = await this.client.send(
        new GetObjectCommand({ Bucket: this.bucket, Key: this.key(sha512), ...(range ? { Range: `bytes=${range.start}-${range.end}` } : {}) }),
      );
      return out.Body as Readable;
    } catch (err) {
      if (status(err) === 404) return undefined;
      if (status(err) === 416) throw new AppError('RANGE_NOT_SATISFIABLE', `range starts at or past the end of ${sha512.slice(0, 12)}…`);
      throw err;
    }
  }

  async listPage(options: { after?: string | undefined; limit?: number | undefined } = {}): Promise<BlobPage> {
    const limit = options.limit ?? this.pageSize;
    const hashes: string[] = [];
    // One key more than a page tells whether another page follows, without a further request.
    for await (const { key } of this.objects(this.root, options.after === undefined ? undefined : this.key(options.after), limit + 1)) {
      const rel = key.slice(this.root.length);
      if (rel > LAST_BLOB_KEY) break;
      const m = BLOB_KEY.exec(rel);
      // Anything else under the prefix (an operator's stray object) is not a blob.
      if (!m || !m[4]!.startsWith(m[1]! + m[2]! + m[3]!)) continue;
      if (hashes.length === limit) return { hashes, next: hashes[hashes.length - 1] };
      hashes.push(m[4]!);
    }
    return { hashes, next: undefined };
  }

  list(): AsyncIterable<string> {
    return listAll(this, this.pageSize);
  }

  async trash(sha512: string, reason: TrashReason): Promise<TrashedBlob | undefined> {
    const from = this.key(sha512);
    const info = await this.head(from);
    if (!info) return undefined;
    const where = `${this.root}trash/${reason}/${sha512}.${Date.now()}-${randomBytes(4).toString('hex')}`;
    await this.copy(from, where, info.size);
    await this.client.send(new DeleteObjectCommand({ Bucket: this.bucket, Key: from }));
    return { sha512, reason, where };
  }

  async restore(trashed: TrashedBlob): Promise<boolean> {
    const final = this.key(trashed.sha512);
    let restored = false;
    // No create-if-absent on every service: a re-upload racing this HEAD writes the same bytes anyway.
    if (!(await this.head(final))) {
      const info = await this.head(trashed.where);
      if (!info) throw new Error(`trashed blob ${trashed.where} is gone`);
      await this.copy(trashed.where, final, info.size);
      restored = true;
    }
    await this.client.send(new DeleteObjectCommand({ Bucket: this.bucket, Key: trashed.where }));
    return restored;
  }

  async purge(trashed: TrashedBlob): Promise<void> {
    await this.client.send(new DeleteObjectCommand({ Bucket: this.bucket, Key: trashed.where }));
  }

  async remove(sha512: string): Promise<boolean> {
    // DELETE answers 204 whether or not the key existed; the caller wants to know.
    if (!(await this.stat(sha512))) return false;
    await this.client.send(new DeleteObjectCommand({ Bucket: this.bucket, Key: this.key(sha512) }));
    return true;
  }

  async unplace(sha512: string, claimed: () => boolean | Promise<boolean>): Promise<void> {
    // S3 has no rename to hold the object aside while asking (as the local store does): a writer of the same
    // bytes that deduplicated against it and records its row between the question and the delete leaves a
    // row without bytes, which fsck reports. The window is one request long.
    if (await claimed()) return;
    await this.client.send(new DeleteObjectCommand({ Bucket: this.bucket, Key: this.key(sha512) }));
  }

  /** In-progress multipart uploads under the prefix (for the sweep, and for tests proving none is left). */
  async *multipartUploads(): AsyncGenerator<{ key: string; uploadId: string; initiated: Date | undefined }> {
    let keyMarker: string | undefined;
    let uploadIdMarker: string | undefined;
    for (;;) {
      const page = await this.client.send(
        new ListMultipartUploadsCommand({
          Bucket: this.bucket,
          ...(this.root ? { Prefix: this.root } : {}),
          ...(keyMarker ? { KeyMarker: keyMarker } : {}),
          ...(uploadIdMarker ? { UploadIdMarker: uploadIdMarker } : {}),
        }),
      );
      for (const u of page.Uploads ?? []) {
        if (u.Key && u.UploadId) yield { key: u.Key, uploadId: u.UploadId, initiated: u.Initiated };
      }
      if (!page.IsTruncated) return;
      keyMarker = page.NextKeyMarker;
      uploadIdMarker = page.NextUploadIdMarker;
      if (!keyMarker) return;
    }
  }

  /** Every object under `prefix` after `startAfter`, in key order, fetched `pageSize` at a time. */
  private async *objects(prefix: string, startAfter?: string, pageSize = this.pageSize): AsyncGenerator<{ key: string; lastModified: number }> {
    for (;;) {
      const page = await this.client.send(
        new ListObjectsV2Command({
          Bucket: this.bucket,
          ...(prefix ? { Prefix: prefix } : {}),
          ...(startAfter ? { StartAfter: startAfter } : {}),
          MaxKeys: pageSize,
        }),
      );
      const contents = page.Contents ?? [];
      for (const o of contents) if (o.Key) yield { key: o.Key, lastModified: o.LastModified?.getTime() ?? 0 };
      startAfter = contents.at(-1)?.Key;
      if (!page.IsTruncated || !startAfter) return;
    }
  }

  /** Uploads a body to the final key; the multipart upload is aborted on any failure, never left behind. */
  private async upload(sha512: string, body: Readable, sizeHint: number): Promise<void> {
    const marker = path.join(this.spoolDir, `${process.pid}-${randomBytes(8).toString('hex')}${UPLOAD_SUFFIX}`);
    await writeFile(marker, JSON.stringify({ key: this.key(sha512), startedAt: Date.now() }), { mode: 0o600 });
    try {
      await this.uploadNow(sha512, body, sizeHint);
    } finally {
      await unlink(marker).catch(() => undefined);
    }
  }

  private async uploadNow(sha512: string, body: Readable, sizeHint: number): Promise<void> {
    const upload = new Upload({
      client: this.client,
      params: { Bucket: this.bucket, Key: this.key(sha512), Body: body, ContentType: 'application/octet-stream' },
      partSize: this.partSize ?? Math.min(MAX_PART_SIZE, Math.max(MIN_PART_SIZE, Math.ceil(sizeHint / MAX_PARTS))),
      queueSize: this.queueSize,
      leavePartsOnError: false,
    });
    try {
      await upload.done();
    } catch (err) {
      // lib-storage aborts its upload on failure; should that abort itself have failed, try once more.
      const uploadId = (upload as unknown as { uploadId?: string }).uploadId;
      if (uploadId) {
        await this.client
          .send(new AbortMultipartUploadCommand({ Bucket: this.bucket, Key: this.key(sha512), UploadId: uploadId }))
          .catch(() => undefined);
      }
      body.destroy();
      throw err;
    }
  }

  private async spoolAndUpload(
    chunks: AsyncIterable<Buffer>,
    expected: ExpectedDigests,
    maxBytes: number,
    replaceExisting: ((sha512: string) => boolean | Promise<boolean>) | undefined,
    onProgress: ((received: number) => void) | undefined,
  ): Promise<StorageWriteResult> {
    const spool = path.join(this.spoolDir, `${process.pid}-${randomBytes(8).toString('hex')}${SPOOL_SUFFIX}`);
    let handle: FileHandle | undefined;
    try {
      handle = await open(spool, 'wx', 0o600);
      const verifier = verifying(chunks, expected, maxBytes, onProgress);
      for await (const chunk of verifier) await handle.write(chunk);
      await handle.close();
      handle = undefined;
      const digests = verifier.digests();
      const existing = await this.stat(digests.sha512);
      if (existing && existing.size === digests.size && !(await replaceExisting?.(digests.sha512))) return { digests, created: false };
      await this.upload(digests.sha512, createReadStream(spool, { highWaterMark: 1024 * 1024 }), digests.size);
      return { digests, created: true, contended: existing === undefined };
    } catch (err) {
      throw fromFsError(err);
    } finally {
      if (handle) await handle.close().catch(() => undefined);
      await unlink(spool).catch(() => undefined);
    }
  }

  /** When a multipart upload last moved: its newest part, or its start when it has none. */
  private async lastActivity(u: { key: string; uploadId: string; initiated: Date | undefined }): Promise<number> {
    let last = u.initiated?.getTime() ?? 0;
    let marker: string | undefined;
    try {
      for (;;) {
        const page = await this.client.send(
          new ListPartsCommand({ Bucket: this.bucket, Key: u.key, UploadId: u.uploadId, ...(marker ? { PartNumberMarker: marker } : {}) }),
        );
        for (const part of page.Parts ?? []) last = Math.max(last, part.LastModified?.getTime() ?? 0);
        if (!page.IsTruncated || !page.NextPartNumberMarker) return last;
        marker = page.NextPartNumberMarker;
      }
    } catch (err) {
      // Completed or aborted since the listing: nothing to reclaim.
      if (status(err) === 404) return Number.POSITIVE_INFINITY;
      throw err;
    }
  }

  private async head(key: string): Promise<BlobStat | undefined> {
    try {
      const out = await this.client.send(new HeadObjectCommand({ Bucket: this.bucket, Key: key }));
      return { size: out.ContentLength ?? 0, mtimeMs: out.LastModified?.getTime() ?? 0 };
    } catch (err) {
      if (status(err) === 404) return undefined;
      throw err;
    }
  }

  /** Server-side copy; objects over CopyObject's 5 GiB ceiling go part by part, aborted on failure. */
  private async copy(from: string, to: string, size: number): Promise<void> {
    const source = `${this.bucket}/${from.split('/').map(encodeURIComponent).join('/')}`;
    if (size <= this.maxSingleCopy) {
      await this.client.send(new CopyObjectCommand({ Bucket: this.bucket, Key: to, CopySource: source }));
      return;
    }
    const { UploadId } = await this.client.send(new CreateMultipartUploadCommand({ Bucket: this.bucket, Key: to }));
    try {
      const parts: { PartNumber: number; ETag: string }[] = [];
      for (let start = 0, n = 1; start < size; start += this.copyPartSize, n++) {
        const end = Math.min(start + this.copyPartSize, size) - 1;
        const out = await this.client.send(
          new UploadPartCopyCommand({ Bucket: this.bucket, Key: to, UploadId, PartNumber: n, CopySource: source, CopySourceRange: `bytes=${start}-${end}` }),
        );
        parts.push({ PartNumber: n, ETag: out.CopyPartResult?.ETag ?? '' });
      }
      await this.client.send(new CompleteMultipartUploadCommand({ Bucket: this.bucket, Key: to, UploadId, MultipartUpload: { Parts: parts } }));
    } catch (err) {
      await this.client.send(new AbortMultipartUploadCommand({ Bucket: this.bucket, Key: to, UploadId })).catch(() => undefined);
      throw err;
    }
  }

  /**
   * Removes abandoned work: spool files of dead processes (ours too at start-up), multipart uploads and gc
   * trash older than `staleAfterMs`. Younger uploads may belong to another replica that is still writing,
   * except those a dead process of this host left a marker for: they are aborted at once.
   */
  private async sweep(atStart: boolean): Promise<number> {
    let removed = 0;
    const now = Date.now();
    /** Keys a crashed local writer was uploading, and when it started. */
    const crashed = new Map<string, number>();
    for (const name of await readdir(this.spoolDir).catch(() => [] as string[])) {
      const pid = Number(name.split('-', 1)[0]);
      const file = path.join(this.spoolDir, name);
      let stale = !Number.isInteger(pid) || (pid === process.pid ? atStart : !processAlive(pid));
      if (!stale) stale = ((await stat(file).catch(() => undefined))?.mtimeMs ?? now) < now - this.staleAfterMs;
      if (!stale) continue;
      if (name.endsWith(UPLOAD_SUFFIX)) {
        const marker = await readFile(file, 'utf8').then((text) => JSON.parse(text) as { key?: unknown; startedAt?: unknown }, () => undefined);
        if (typeof marker?.key === 'string' && typeof marker.startedAt === 'number') crashed.set(marker.key, Math.min(crashed.get(marker.key) ?? Infinity, marker.startedAt));
      }
      if (await unlink(file).then(() => true, () => false)) removed++;
    }
    // Listings give whole seconds, and Swift rounds them up: a time may be up to 1 s later than the event.
    const bar = now - this.staleAfterMs + 1000;
    const stale: { key: string; uploadId: string }[] = [];
    for await (const u of this.multipartUploads()) {
      const initiated = u.initiated?.getTime() ?? 0;
      const crashedAt = crashed.get(u.key);
      // Initiated after the marker was written (give or take the listing's whole second): that writer's.
      if (initiated <= bar || (crashedAt !== undefined && initiated >= crashedAt - 2000)) stale.push(u);
      else if ((await this.lastActivity(u)) <= now - this.abandonedAfterMs + 1000) stale.push(u);
    }
    for (const u of stale) {
      await this.client.send(new AbortMultipartUploadCommand({ Bucket: this.bucket, Key: u.key, UploadId: u.uploadId })).catch((err: unknown) => {
        if (status(err) !== 404) throw err;
      });
      removed++;
    }
    for await (const o of this.objects(`${this.root}trash/gc/`)) {
      if (o.lastModified > bar) continue;
      await this.client.send(new DeleteObjectCommand({ Bucket: this.bucket, Key: o.key }));
      removed++;
    }
    return removed;
  }
}

async function drain(chunks: AsyncIterable<Buffer>): Promise<void> {
  const it = chunks[Symbol.asyncIterator]();
  while (!(await it.next()).done);
}

/** The HTTP status an SDK error carries (404 for NoSuchKey/NotFound, 416 for InvalidRange). */
function status(err: unknown): number | undefined {
  if (err instanceof S3ServiceException) return err.$metadata.httpStatusCode;
  return (err as { $metadata?: { httpStatusCode?: number } } | undefined)?.$metadata?.httpStatusCode;
}

/**
 * Passes chunks through while hashing, enforcing `maxBytes` and a declared size as bytes arrive; at the end
 * throws DIGEST_MISMATCH unless every declared digest matched. Whatever consumes it (an upload) therefore
 * never sees the end of a body that does not verify, so it never completes.
 */
function verifying(
  source: AsyncIterable<Buffer>,
  expected: ExpectedDigests,
  maxBytes: number,
  onProgress?: (received: number) => void,
): AsyncGenerator<Buffer> & { digests(): Digests } {
  let result: Digests | undefined;
  async function* run(): AsyncGenerator<Buffer> {
    const hasher = new MultiHasher();
    for await (const chunk of source) {
      const total = hasher.size + chunk.length;
      if (total > maxBytes) {
        throw new AppError('PAYLOAD_TOO_LARGE', `body exceeds the upload limit of ${maxBytes} bytes`, { limit: maxBytes });
      }
      if (expected.size !== undefined && total > expected.size) {
        throw new AppError('DIGEST_MISMATCH', 'body is larger than the declared size', {
          mismatches: [{ field: 'size', expected: expected.size, actual: `more than ${expected.size}` }],
        });
      }
      onProgress?.(total);
      hasher.update(chunk);
      yield chunk;
    }
    const digests = hasher.digest();
    const mismatches = compareDigests(expected, digests);
    if (mismatches.length > 0) throw new AppError('DIGEST_MISMATCH', 'the body does not match the declared digests', { mismatches });
    result = digests;
  }
  return Object.assign(run(), {
    digests(): Digests {
      if (!result) throw new Error('digests read before the body was verified');
      return result;
    },
  });
}
