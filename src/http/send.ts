import type { IncomingHttpHeaders } from 'node:http';
import type { FastifyReply, FastifyRequest } from 'fastify';
import type { Logger } from 'pino';
import type { ServableBlob } from '../db/index.js';
import { AppError } from '../errors.js';
import { SMALL_BLOB_BYTES, type BlobReader } from '../store/blob-reader.js';
import type { BlobSource, RemoteReader } from '../store/remote-reader.js';

/** Verification on serve (maintenance/verify-on-serve.ts), seen from here. */
export interface BodyWatch {
  /** A checker for one full body, chunk by chunk; false stops the response before that chunk is written. */
  body(blob: ServableBlob, log: Logger): (chunk: Buffer, last: boolean) => boolean;
  /** A small blob whose bytes do not hash to its name. */
  damaged(blob: ServableBlob, log: Logger, actual: string): void;
}

export const IMMUTABLE = 'public, max-age=31536000, immutable';

export interface ByteRange {
  start: number;
  end: number; // inclusive
}

/**
 * Interprets a Range header for a representation of `size` bytes (RFC 9110 §14):
 * undefined → serve the whole file (absent, multi-range, or a unit we do not speak);
 * 'unsatisfiable' → 416; otherwise the clipped single range.
 */
export function parseRange(header: string | undefined, size: number): ByteRange | 'unsatisfiable' | undefined {
  if (!header) return undefined;
  const match = /^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$/i.exec(header);
  if (!match) return undefined;
  const [, first, last] = match as unknown as [string, string, string];
  if (first === '' && last === '') return undefined;
  if (first === '') {
    const suffix = Number(last);
    if (suffix === 0 || size === 0) return 'unsatisfiable';
    return { start: Math.max(0, size - suffix), end: size - 1 };
  }
  const start = Number(first);
  const end = last === '' ? size - 1 : Number(last);
  if (!Number.isSafeInteger(start) || end < start || start >= size) return 'unsatisfiable';
  return { start, end: Math.min(end, size - 1) };
}

function etagMatches(header: string, etag: string, weak: boolean): boolean {
  if (header.trim() === '*') return true;
  const bare = etag.slice(1, -1);
  for (const part of header.split(',')) {
    let tag = part.trim();
    if (tag.startsWith('W/')) {
      if (!weak) continue;
      tag = tag.slice(2);
    }
    if (tag === etag || tag === bare) return true;
  }
  return false;
}

/** Last-Modified has whole seconds: compare at that resolution. NaN when the header is no date (then ignored). */
function secondsNewerThan(header: string, modifiedMs: number): boolean | undefined {
  const since = Date.parse(header);
  if (Number.isNaN(since)) return undefined;
  return Math.floor(modifiedMs / 1000) * 1000 > since;
}

/** If-Range: a strong ETag must match exactly; a date must equal Last-Modified. */
function ifRangeHolds(header: string, etag: string, lastModified: string): boolean {
  const value = header.trim();
  if (value.startsWith('"') || value.startsWith('W/')) return value === etag;
  return value === lastModified;
}

export function contentDisposition(filename: string): string {
  // Plain ASCII without quote/backslash fits the quoted form; anything else also gets RFC 8187 filename*.
  if (/^[\x20-\x7e]*$/.test(filename) && !/["\\]/.test(filename)) return `attachment; filename="${filename}"`;
  const fallback = filename.replace(/[^\x20-\x7e]|["\\%]/g, '_');
  const encoded = encodeURIComponent(filename).replace(/['()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`);
  return `attachment; filename="${fallback}"; filename*=UTF-8''${encoded}`;
}

/** Headers that depend only on the blob, its index row and the path form: built once, reused per response. */
export interface FixedHeaders {
  etag: string;
  lastModified: string;
  modifiedMs: number;
  /** Name/value pairs in one flat list, as node:http's writeHead takes them. */
  flat: string[];
  /** The same as an object, for fastify's reply.headers. */
  object: Record<string, string>;
  /** `flat` less what nginx adds itself when it sends the bytes (X-Accel-Redirect). */
  accel: string[];
}

const FIXED_CACHE_MAX = 8192;
const fixedCache = new Map<string, FixedHeaders>();

/**
 * The fixed headers of a blob served under a Cache-Control. Keyed by everything they are made of
 * (the row's version, Last-Modified and the suggested name included), so a changed row never reuses them.
 */
export function fixedHeaders(blob: ServableBlob, cacheControl: string): FixedHeaders {
  const key = `${cacheControl}\n${blob.sha512}\n${blob.version}\n${blob.modified_at}\n${blob.filename ?? ''}`;
  const hit = fixedCache.get(key);
  if (hit) return hit;
  const etag = `"${blob.sha512}"`;
  const lastModified = new Date(blob.modified_at).toUTCString();
  const object: Record<string, string> = {
    'content-type': 'application/octet-stream',
    'accept-ranges': 'bytes',
    etag,
    'last-modified': lastModified,
    'cache-control': cacheControl,
    'repr-digest': `sha-512=:${Buffer.from(blob.sha512, 'hex').toString('base64')}:`,
    'x-content-type-options': 'nosniff',
  };
  if (blob.filename) object['content-disposition'] = contentDisposition(blob.filename);
  const flat = Object.entries(object).flat();
  const accel = Object.entries(object).filter(([name]) => name !== 'accept-ranges').flat();
  const fixed = { etag, lastModified, modifiedMs: blob.modified_at, object, flat, accel };
  // Crude but bounded: a full table starts over rather than tracking recency on every hit.
  if (fixedCache.size >= FIXED_CACHE_MAX) fixedCache.clear();
  fixedCache.set(key, fixed);
  return fixed;
}

export type Decision =
  | { status: 200 }
  | { status: 206; range: ByteRange }
  | { status: 304 }
  | { status: 412 }
  | { status: 416 };

/**
 * What a GET or HEAD of this blob answers, from its validators and the request's conditional and
 * Range headers, evaluated in RFC 9110 §13.2.2 order: If-Match, else If-Unmodified-Since; then
 * If-None-Match, else If-Modified-Since; then If-Range and Range.
 */
export function decide(headers: IncomingHttpHeaders, fixed: FixedHeaders, size: number): Decision {
  const ifMatch = headers['if-match'];
  if (ifMatch !== undefined) {
    // Strong comparison: a weak tag never matches (§13.1.1).
    if (!etagMatches(ifMatch, fixed.etag, false)) return { status: 412 };
  } else {
    const ifUnmodifiedSince = headers['if-unmodified-since'];
    if (ifUnmodifiedSince !== undefined && secondsNewerThan(ifUnmodifiedSince, fixed.modifiedMs) === true) return { status: 412 };
  }
  const ifNoneMatch = headers['if-none-match'];
  if (ifNoneMatch !== undefined) {
    if (etagMatches(ifNoneMatch, fixed.etag, true)) return { status: 304 };
  } else {
    const ifModifiedSince = headers['if-modified-since'];
    if (ifModifiedSince !== undefined && secondsNewerThan(ifModifiedSince, fixed.modifiedMs) === false) return { status: 304 };
  }
  let range = parseRange(headers.range, size);
  const ifRange = headers['if-range'] as string | undefined;
  if (range !== undefined && ifRange !== undefined && !ifRangeHolds(ifRange, fixed.etag, fixed.lastModified)) range = undefined;
  if (range === 'unsatisfiable') return { status: 416 };
  return range ? { status: 206, range } : { status: 200 };
}

export interface SendOptions {
  cacheControl: string;
}

/**
 * Serves a stored blob with ranges and conditionals through fastify (the lean path in hot-path.ts
 * answers the same requests the same way without it; this one covers what it hands over: errors,
 * pull-through, and servers where it is off). HEAD answers with the same headers, reading no bytes.
 * A read that fails midway destroys the connection so that no cache keeps a clean-looking truncated body.
 */
export async function sendBlob(
  request: FastifyRequest,
  reply: FastifyReply,
  source: BlobSource,
  blob: ServableBlob,
  options: SendOptions,
  watch?: BodyWatch,
): Promise<FastifyReply> {
  const fixed = fixedHeaders(blob, options.cacheControl);
  reply.headers(fixed.object);
  const decision = decide(request.headers, fixed, blob.size);
  switch (decision.status) {
    case 304:
      return reply.code(304).send();
    case 412:
      reply.removeHeader('content-disposition');
      throw new AppError('PRECONDITION_FAILED', 'a precondition (If-Match or If-Unmodified-Since) does not hold for this distfile');
    case 416:
      reply.removeHeader('content-disposition');
      reply.header('content-range', `bytes */${blob.size}`);
      throw new AppError('RANGE_NOT_SATISFIABLE', `range not satisfiable for a ${blob.size}-byte file`, { size: blob.size });
  }
  const range = decision.status === 206 ? decision.range : undefined;

  const reader = source.local(blob);
  if (reader) {
    const sent = await sendFile(request, reply, reader, blob, range, source.remote !== undefined);
    if (sent !== undefined) return sent;
    // A read-cache file gone from under us (another process evicted it) or damaged on local disk.
    source.remote!.lost(blob);
  }
  if (source.remote) return sendRemote(request, reply, source.remote, blob, range, watch);
  return missingOnDisk(request, reply, blob, { onDisk: undefined });
}

/** From a local file with the fast path; undefined when the file is missing and a remote storage may answer. */
async function sendFile(
  request: FastifyRequest,
  reply: FastifyReply,
  reader: BlobReader,
  blob: ServableBlob,
  range: ByteRange | undefined,
  fallBack: boolean,
): Promise<FastifyReply | undefined> {
  if (blob.size <= SMALL_BLOB_BYTES) {
    const read = await reader.small(blob);
    // A read-cache file missing or damaged: the storage still holds good bytes (checked on their way).
    if (fallBack && !('bytes' in read)) return undefined;
    if (!('bytes' in read)) return missingOnDisk(request, reply, blob, read);
    setLength(reply, range, blob.size);
    if (request.method === 'HEAD') return reply.send();
    return reply.send(range ? read.bytes.subarray(range.start, range.end + 1) : read.bytes);
  }

  const file = await reader.acquire(blob);
  if (!file || file.size !== blob.size) {
    file?.release();
    if (fallBack) return undefined;
    return missingOnDisk(request, reply, blob, { onDisk: file?.size });
  }
  setLength(reply, range, blob.size);
  if (request.method === 'HEAD') {
    file.release();
    return reply.send();
  }
  // Always bounded: a file that grew must not push bytes past Content-Length into the next response,
  // and the stream stops at the last byte instead of paying one more read to discover end of file.
  // The descriptor is the reader's (shared while hot): the stream releases it, never closes it.
  const start = range ? range.start : 0;
  const end = range ? range.end : blob.size - 1;
  const stream = reader.stream(file, start, end);
  // A file that shrank after the stat ends the read stream early but cleanly; piping that end would
  // finish the response short and keep the connection alive, so a cache would store a truncated file
  // (and a pipelined response would be read as its missing bytes). Registered before reply.send, so it
  // runs before the pipe ends the response.
  stream.once('end', () => {
    if (stream.bytesRead < end - start + 1) {
      request.log.error({ sha512: blob.sha512, expected: end - start + 1, read: stream.bytesRead }, 'blob shrank while being sent');
      reply.raw.destroy();
    }
  });
  return reply.send(stream);
}

/**
 * From the remote storage: small blobs whole and verified, others streamed (a range as a ranged GET).
 * HEAD asks the storage for the size, so a blob missing there answers 404 as on local disk.
 */
async function sendRemote(
  request: FastifyRequest,
  reply: FastifyReply,
  remote: RemoteReader,
  blob: ServableBlob,
  range: ByteRange | undefined,
  watch: BodyWatch | undefined,
): Promise<FastifyReply> {
  if (blob.size <= SMALL_BLOB_BYTES) {
    const read = await remote.small(blob);
    if (!('bytes' in read)) {
      if ('damaged' in read) watch?.damaged(blob, request.log as Logger, read.damaged);
      return missingOnDisk(request, reply, blob, read);
    }
    setLength(reply, range, blob.size);
    if (request.method === 'HEAD') return reply.send();
    return reply.send(range ? read.bytes.subarray(range.start, range.end + 1) : read.bytes);
  }
  if (request.method === 'HEAD') {
    const size = await remote.size(blob);
    if (size !== blob.size) return missingOnDisk(request, reply, blob, { onDisk: size });
    setLength(reply, range, blob.size);
    return reply.send();
  }
  const stream = await remote.stream(blob, range, (actual) => {
    request.log.error({ sha512: blob.sha512, actualSha512: actual }, 'stored blob damaged: connection cut before the last byte');
    watch?.damaged(blob, request.log as Logger, actual);
  });
  if (!stream) return missingOnDisk(request, reply, blob, { onDisk: undefined });
  stream.once('error', (err) => {
    if (!reply.raw.destroyed) request.log.error({ err, sha512: blob.sha512 }, 'reading a blob from the storage failed mid-response');
  });
  setLength(reply, range, blob.size);
  return reply.send(stream);
}

function setLength(reply: FastifyReply, range: ByteRange | undefined, size: number): void {
  if (range) {
    reply.code(206);
    reply.header('content-range', `bytes ${range.start}-${range.end}/${size}`);
    reply.header('content-length', range.end - range.start + 1);
  } else {
    reply.header('content-length', size);
  }
}

const BLOB_HEADERS = ['accept-ranges', 'etag', 'last-modified', 'repr-digest', 'content-disposition', 'content-range'];

/** Why a blob's bytes cannot be served, for the log line. */
export type Unservable = { onDisk: number | undefined } | { damaged: string };

function missingOnDisk(request: FastifyRequest, reply: FastifyReply, blob: ServableBlob, why: Unservable): never {
  // The index promises bytes the disk does not hold (or holds damaged): refuse rather than serve damage.
  if ('damaged' in why) request.log.error({ sha512: blob.sha512, actualSha512: why.damaged }, 'indexed blob damaged on disk');
  else request.log.error({ sha512: blob.sha512, indexed: blob.size, onDisk: why.onDisk }, 'indexed blob missing or damaged on disk');
  // Validators on this 404 would let a cache revalidate it against the good blob's ETag.
  for (const name of BLOB_HEADERS) reply.removeHeader(name);
  throw new AppError('NOT_FOUND', 'no such distfile');
}
