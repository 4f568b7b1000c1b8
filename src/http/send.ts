import { closeSync, createReadStream } from 'node:fs';
import type { FastifyReply, FastifyRequest } from 'fastify';
import type { ServableBlob } from '../db/index.js';
import { AppError } from '../errors.js';
import type { BlobStore } from '../store/blob-store.js';

export const IMMUTABLE = 'public, max-age=31536000, immutable';
const READ_HIGH_WATER_MARK = 512 * 1024;
/**
 * Blobs up to this size are read whole, inline, and sent as one buffer (no larger than a single
 * stream chunk): see BlobStore.readSmall for why that beats a stream for small files.
 */
const SMALL_BLOB_BYTES = 64 * 1024;

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

function notModifiedSince(header: string, modifiedMs: number): boolean {
  const since = Date.parse(header);
  return !Number.isNaN(since) && Math.floor(modifiedMs / 1000) * 1000 <= since;
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

export interface SendOptions {
  cacheControl: string;
}

/**
 * Serves a stored blob with ranges and conditionals. HEAD answers with the same headers
 * from a stat, reading no bytes. A read that fails midway destroys the connection so that
 * no cache keeps a clean-looking truncated body.
 */
export async function sendBlob(
  request: FastifyRequest,
  reply: FastifyReply,
  store: BlobStore,
  blob: ServableBlob,
  options: SendOptions,
): Promise<FastifyReply> {
  const etag = `"${blob.sha512}"`;
  const lastModified = new Date(blob.modified_at).toUTCString();
  const headers = request.headers;

  reply.headers({
    'content-type': 'application/octet-stream',
    'accept-ranges': 'bytes',
    etag,
    'last-modified': lastModified,
    'cache-control': options.cacheControl,
    'repr-digest': `sha-512=:${Buffer.from(blob.sha512, 'hex').toString('base64')}:`,
    'x-content-type-options': 'nosniff',
  });
  if (blob.filename) reply.header('content-disposition', contentDisposition(blob.filename));

  const ifNoneMatch = headers['if-none-match'];
  const ifModifiedSince = headers['if-modified-since'];
  if (ifNoneMatch !== undefined ? etagMatches(ifNoneMatch, etag, true) : ifModifiedSince !== undefined && notModifiedSince(ifModifiedSince, blob.modified_at)) {
    return reply.code(304).send();
  }

  let range = parseRange(headers.range, blob.size);
  const ifRange = headers['if-range'] as string | undefined;
  if (range !== undefined && ifRange !== undefined && !ifRangeHolds(ifRange, etag, lastModified)) range = undefined;
  if (range === 'unsatisfiable') {
    reply.removeHeader('content-disposition');
    reply.header('content-range', `bytes */${blob.size}`);
    throw new AppError('RANGE_NOT_SATISFIABLE', `range not satisfiable for a ${blob.size}-byte file`, { size: blob.size });
  }

  if (request.method === 'HEAD') {
    const onDisk = await store.sizeOf(blob.sha512);
    if (onDisk !== blob.size) return missingOnDisk(request, reply, blob, onDisk);
    setLength(reply, range, blob.size);
    return reply.send();
  }

  if (blob.size <= SMALL_BLOB_BYTES) {
    const read = store.readSmall(blob.sha512, blob.size);
    if (!('bytes' in read)) return missingOnDisk(request, reply, blob, read.onDisk);
    setLength(reply, range, blob.size);
    return reply.send(range ? read.bytes.subarray(range.start, range.end + 1) : read.bytes);
  }

  const opened = store.openForRead(blob.sha512);
  if (!opened || opened.size !== blob.size) {
    if (opened) closeSync(opened.fd);
    return missingOnDisk(request, reply, blob, opened?.size);
  }
  setLength(reply, range, blob.size);
  // Always bounded: a file that grew must not push bytes past Content-Length into the next response,
  // and the stream stops at the last byte instead of paying one more read to discover end of file.
  // autoClose hands the descriptor back on end, error or abort.
  const start = range ? range.start : 0;
  const end = range ? range.end : blob.size - 1;
  const stream = createReadStream('', { fd: opened.fd, start, end, highWaterMark: READ_HIGH_WATER_MARK, autoClose: true });
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

function missingOnDisk(request: FastifyRequest, reply: FastifyReply, blob: ServableBlob, onDisk: number | undefined): never {
  // The index promises bytes the disk does not hold (or holds at the wrong size): refuse rather than serve damage.
  request.log.error({ sha512: blob.sha512, indexed: blob.size, onDisk }, 'indexed blob missing or damaged on disk');
  // Validators on this 404 would let a cache revalidate it against the good blob's ETag.
  for (const name of BLOB_HEADERS) reply.removeHeader(name);
  throw new AppError('NOT_FOUND', 'no such distfile');
}
