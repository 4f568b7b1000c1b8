import { createHash } from 'node:crypto';
import { close, constants as fsConstants, fstat, open, read } from 'node:fs';
import { Readable, type Writable } from 'node:stream';
import { promisify } from 'node:util';
import { SmallBlobCache } from './small-blob-cache.js';

/** What the reader needs of an index row: the hash, the size it promises, and the row's version. */
export interface BlobRef {
  sha512: string;
  size: number;
  version: string;
}

/** A small blob read whole: its verified bytes, or why not. */
export type SmallRead = { bytes: Buffer } | { onDisk: number | undefined } | { damaged: string };

/** A descriptor lent out by the reader; `release()` exactly once when done with it. */
export interface OpenFile {
  fd: number;
  size: number;
  release(): void;
}

interface FdEntry {
  version: string;
  fd: number;
  size: number;
  refs: number;
  lastUsed: number;
  /** Left the table (stale version, eviction, forget): close once the last borrower releases it. */
  retired: boolean;
}

/** Blobs up to this size are read whole (one read, no stream) and kept in the small-blob cache. */
export const SMALL_BLOB_BYTES = 64 * 1024;
const SMALL_CACHE_DEFAULT_BYTES = 64 * 1024 * 1024;
/** Hot large blobs keep their descriptor open; idle ones close so a file gc unlinked frees its space. */
const MAX_OPEN_FDS = 256;
const FD_IDLE_MS = 10_000;
/** Reads are this big; each response keeps up to READS_IN_FLIGHT of them moving (disk and socket overlap). */
export const CHUNK_BYTES = 256 * 1024;
const READS_IN_FLIGHT = 2;
/** Free chunk buffers kept for reuse: beyond this, buffers are left to the garbage collector. */
const POOL_MAX_FREE = 64;

// The callback API, promisified: no FileHandle object (and its close bookkeeping) per small read.
const openFd = promisify(open);
const readFd = promisify(read);
const fstatFd = promisify(fstat);

/**
 * The read side of the blob store, for the download path: never a synchronous filesystem call.
 * - small blobs: one open + read + close through the thread pool, hashed before they enter the
 *   in-memory cache, then served from memory;
 * - large blobs: descriptors kept open while hot (bounded, closed when idle, when the index row's
 *   version moves on, or when this process quarantines or removes the blob), read into a bounded
 *   pool of reusable buffers with two reads in flight per response.
 * Everything cached is keyed by the index row's version, so a change made by another process
 * (verify, scrub, fsck, gc, a re-upload) is noticed at the next request's lookup.
 */
export class BlobReader {
  readonly smallCache: SmallBlobCache;
  private readonly fds = new Map<string, FdEntry>();
  private readonly opening = new Map<string, Promise<FdEntry | undefined>>();
  private readonly pool: Buffer[] = [];
  private sweeper: NodeJS.Timeout | undefined;
  private borrowed = 0;

  constructor(
    private readonly pathOf: (sha512: string) => string,
    options: { smallCacheBytes?: number } = {},
  ) {
    this.smallCache = new SmallBlobCache(options.smallCacheBytes ?? SMALL_CACHE_DEFAULT_BYTES);
  }

  /** Whole bytes of a blob no bigger than SMALL_BLOB_BYTES, verified against its hash before caching. */
  async small(blob: BlobRef): Promise<SmallRead> {
    const cached = this.smallCache.get(blob.sha512, blob.version);
    if (cached) return { bytes: cached };
    let fd: number;
    try {
      fd = await openFd(this.pathOf(blob.sha512), fsConstants.O_RDONLY);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return { onDisk: undefined };
      throw err;
    }
    try {
      // One byte more than expected shows a file of the wrong size without an fstat.
      const buffer = Buffer.allocUnsafe(blob.size + 1);
      let got = 0;
      for (;;) {
        const { bytesRead: n } = await readFd(fd, buffer, got, buffer.length - got, got);
        got += n;
        if (n === 0 || got === buffer.length) break;
      }
      if (got !== blob.size) return { onDisk: (await fstatFd(fd)).size };
      const bytes = buffer.subarray(0, blob.size);
      const actual = createHash('sha512').update(bytes).digest('hex');
      if (actual !== blob.sha512) return { damaged: actual };
      this.smallCache.set(blob.sha512, blob.version, bytes);
      return { bytes };
    } finally {
      close(fd, () => undefined);
    }
  }

  /** Lends an open descriptor of the blob (opened once while hot); undefined when not on disk. */
  async acquire(blob: BlobRef): Promise<OpenFile | undefined> {
    let entry = this.fds.get(blob.sha512);
    if (entry && entry.version !== blob.version) {
      this.retire(blob.sha512, entry);
      entry = undefined;
    }
    if (!entry) {
      const key = `${blob.sha512}\n${blob.version}`;
      let pending = this.opening.get(key);
      if (!pending) {
        pending = this.openEntry(blob).finally(() => this.opening.delete(key));
        this.opening.set(key, pending);
      }
      entry = await pending;
      if (!entry) return undefined;
    }
    entry.refs++;
    this.borrowed++;
    entry.lastUsed = Date.now();
    const held = entry;
    let released = false;
    return {
      fd: held.fd,
      size: held.size,
      release: () => {
        if (released) return;
        released = true;
        held.refs--;
        this.borrowed--;
        held.lastUsed = Date.now();
        if (held.retired && held.refs === 0) close(held.fd, () => undefined);
      },
    };
  }

  private async openEntry(blob: BlobRef): Promise<FdEntry | undefined> {
    let fd: number;
    try {
      fd = await openFd(this.pathOf(blob.sha512), fsConstants.O_RDONLY);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw err;
    }
    let size: number;
    try {
      size = (await fstatFd(fd)).size;
    } catch (err) {
      close(fd, () => undefined);
      throw err;
    }
    const entry: FdEntry = { version: blob.version, fd, size, refs: 0, lastUsed: Date.now(), retired: false };
    // Keep only a descriptor of the right size: a damaged file is refused now and reopened next time.
    if (size !== blob.size) {
      entry.retired = true;
      return entry;
    }
    const previous = this.fds.get(blob.sha512);
    if (previous) this.retire(blob.sha512, previous);
    this.fds.set(blob.sha512, entry);
    if (this.fds.size > MAX_OPEN_FDS) this.evict(this.fds.size - MAX_OPEN_FDS);
    this.sweeper ??= setInterval(() => this.sweep(), FD_IDLE_MS).unref();
    return entry;
  }

  private retire(sha512: string, entry: FdEntry): void {
    if (this.fds.get(sha512) === entry) this.fds.delete(sha512);
    if (entry.retired) return;
    entry.retired = true;
    if (entry.refs === 0) close(entry.fd, () => undefined);
  }

  private evict(count: number): void {
    for (const [sha512, entry] of this.fds) {
      if (count <= 0) break;
      if (entry.refs > 0) continue;
      this.retire(sha512, entry);
      count--;
    }
  }

  private sweep(): void {
    const cutoff = Date.now() - FD_IDLE_MS;
    for (const [sha512, entry] of this.fds) if (entry.refs === 0 && entry.lastUsed < cutoff) this.retire(sha512, entry);
    if (this.fds.size === 0 && this.sweeper) {
      clearInterval(this.sweeper);
      this.sweeper = undefined;
    }
  }

  /** Drops whatever this process holds of a blob (quarantine, removal). */
  forget(sha512: string): void {
    this.smallCache.delete(sha512);
    const entry = this.fds.get(sha512);
    if (entry) this.retire(sha512, entry);
  }

  /** Descriptors kept open for hot blobs, and how many loans are outstanding (a leak shows here). */
  get files(): { open: number; borrowed: number } {
    return { open: this.fds.size, borrowed: this.borrowed };
  }

  /** Closes every idle descriptor (shutdown). */
  closeAll(): void {
    for (const [sha512, entry] of this.fds) this.retire(sha512, entry);
    if (this.sweeper) clearInterval(this.sweeper);
    this.sweeper = undefined;
  }

  takeBuffer(): Buffer {
    return this.pool.pop() ?? Buffer.allocUnsafeSlow(CHUNK_BYTES);
  }

  giveBuffer(buffer: Buffer): void {
    if (this.pool.length < POOL_MAX_FREE) this.pool.push(buffer);
  }

  /**
   * Sends bytes [start, end] of an open blob to `out` and ends it. Up to READS_IN_FLIGHT chunks move
   * at once (one being read while another is written); a chunk's buffer goes back to the pool only when
   * the socket has taken it, so a slow client holds at most that many buffers and nothing piles up.
   * `onChunk` sees each chunk before it is written (verification on serve). `done` is called once:
   * with no argument after the last byte was handed to `out`, with 'short' when the file ended early,
   * 'refused' when onChunk said no, an Error when a read failed or `out` closed first. The caller
   * decides what to destroy.
   */
  pump(
    file: OpenFile,
    start: number,
    end: number,
    out: Writable,
    done: (outcome?: 'short' | 'refused' | Error) => void,
    onChunk?: (chunk: Buffer, last: boolean) => boolean,
  ): void {
    let next = start; // next file offset to read
    let written = start; // file offset up to which chunks were passed to out, in order
    let inFlight = 0;
    let finished = false;
    let waitingDrain = false;
    /** Chunks read out of order wait here until the ones before them are written. */
    const ready = new Map<number, { buffer: Buffer; n: number }>();

    const finish = (outcome?: 'short' | 'refused' | Error) => {
      if (finished) return;
      finished = true;
      out.off('close', onClose);
      out.off('drain', onDrain);
      for (const { buffer } of ready.values()) this.giveBuffer(buffer);
      ready.clear();
      done(outcome);
    };
    const onClose = () => finish(new Error('response closed before the last byte'));
    const onDrain = () => {
      waitingDrain = false;
      fill();
    };
    out.on('close', onClose);

    const flush = () => {
      for (let chunk = ready.get(written); chunk; chunk = ready.get(written)) {
        ready.delete(written);
        written += chunk.n;
        const last = written > end;
        const view = chunk.buffer.subarray(0, chunk.n);
        if (onChunk && !onChunk(view, last)) {
          this.giveBuffer(chunk.buffer);
          return finish('refused');
        }
        const buffer = chunk.buffer;
        const ok = out.write(view, () => {
          inFlight--;
          this.giveBuffer(buffer);
          if (!finished) fill();
        });
        if (last) {
          out.end();
          return finish();
        }
        if (!ok && !waitingDrain) {
          waitingDrain = true;
          out.once('drain', onDrain);
        }
      }
    };

    const fill = () => {
      while (!finished && !waitingDrain && inFlight < READS_IN_FLIGHT && next <= end) {
        const offset = next;
        const length = Math.min(CHUNK_BYTES, end - offset + 1);
        next += length;
        inFlight++;
        const buffer = this.takeBuffer();
        read(file.fd, buffer, 0, length, offset, (err, n) => {
          if (finished) {
            inFlight--;
            this.giveBuffer(buffer);
            return;
          }
          if (err) {
            inFlight--;
            this.giveBuffer(buffer);
            return finish(err);
          }
          if (n < length) {
            inFlight--;
            this.giveBuffer(buffer);
            return finish('short');
          }
          ready.set(offset, { buffer, n });
          flush();
        });
      }
    };
    fill();
  }

  /**
   * Bytes [start, end] of a lent descriptor as a stream, for fastify's reply.send. Unlike fs.ReadStream
   * it never closes the descriptor (other responses share it): it releases it, once, when it ends or
   * is destroyed. `bytesRead` below end - start + 1 at 'end' means the file shrank.
   */
  stream(file: OpenFile, start: number, end: number): Readable & { bytesRead: number } {
    let position = start;
    const stream = new Readable({
      highWaterMark: CHUNK_BYTES,
      read() {
        const length = Math.min(CHUNK_BYTES, end - position + 1);
        if (length <= 0) return void this.push(null);
        const buffer = Buffer.allocUnsafe(length);
        read(file.fd, buffer, 0, length, position, (err, n) => {
          if (err) return void this.destroy(err);
          if (n === 0) return void this.push(null);
          position += n;
          stream.bytesRead += n;
          this.push(n < length ? buffer.subarray(0, n) : buffer);
        });
      },
      destroy(err, callback) {
        file.release();
        callback(err);
      },
    }) as Readable & { bytesRead: number };
    stream.bytesRead = 0;
    stream.once('end', () => file.release());
    return stream;
  }
}
