import { Worker } from 'node:worker_threads';
import type { FileHandle } from 'node:fs/promises';
import { MultiHasher, type Digests } from './digests.js';

/** Bytes handed to the digest threads at a time; a body shorter than this is hashed inline. */
export const SLOT_BYTES = 1024 * 1024;
/** Slots per upload: while the threads hash one and the disk takes another, the socket fills a third. */
const SLOTS = 4;
const ALGORITHMS = ['sha512', 'blake2b512', 'sha256'] as const;
type Algorithm = (typeof ALGORITHMS)[number];

// Plain JavaScript evaluated as the worker's script, so it runs the same from the sources (tsx)
// and from dist/ with no file to resolve. One thread per algorithm; each keeps one hash per upload,
// reads the upload's shared slots in place (no copy) and acknowledges each slot when done with it.
const WORKER_SOURCE = `
const { parentPort, workerData } = require('node:worker_threads');
const { createHash } = require('node:crypto');
const jobs = new Map();
parentPort.on('message', (m) => {
  if (m.op === 'start') jobs.set(m.id, { hash: createHash(workerData.algorithm), bytes: new Uint8Array(m.buffer) });
  else if (m.op === 'update') {
    const job = jobs.get(m.id);
    job.hash.update(job.bytes.subarray(m.offset, m.offset + m.length));
    parentPort.postMessage({ id: m.id, slot: m.slot });
  } else if (m.op === 'digest') {
    const job = jobs.get(m.id);
    jobs.delete(m.id);
    parentPort.postMessage({ id: m.id, hex: job.hash.digest('hex') });
  } else if (m.op === 'abort') jobs.delete(m.id);
});
`;

interface Waiting {
  slot: Map<number, () => void>;
  digest?: (hex: string) => void;
  fail: (err: Error) => void;
}

/** One worker per algorithm, shared by every upload in the process. */
class DigestThread {
  private readonly worker: Worker;
  private readonly waiting = new Map<number, Waiting>();
  broken: Error | undefined;

  constructor(readonly algorithm: Algorithm) {
    this.worker = new Worker(WORKER_SOURCE, { eval: true, workerData: { algorithm } });
    this.worker.unref();
    this.worker.on('message', (m: { id: number; slot?: number; hex?: string }) => {
      const w = this.waiting.get(m.id);
      if (!w) return;
      if (m.hex !== undefined) {
        this.forget(m.id);
        w.digest?.(m.hex);
      } else {
        const done = w.slot.get(m.slot!);
        w.slot.delete(m.slot!);
        done?.();
      }
    });
    const fail = (err: Error) => {
      this.broken = err;
      for (const [id, w] of this.waiting) {
        this.forget(id);
        w.fail(err);
      }
    };
    this.worker.on('error', fail);
    this.worker.on('exit', (code) => fail(new Error(`${algorithm} digest thread exited (${code})`)));
  }

  start(id: number, buffer: SharedArrayBuffer, fail: (err: Error) => void): void {
    // A pending acknowledgement must keep the process alive (e.g. a CLI import awaiting nothing else).
    if (this.waiting.size === 0) this.worker.ref();
    this.waiting.set(id, { slot: new Map(), fail });
    this.worker.postMessage({ op: 'start', id, buffer });
  }

  update(id: number, slot: number, offset: number, length: number): Promise<void> {
    return new Promise((resolve) => {
      this.waiting.get(id)!.slot.set(slot, resolve);
      this.worker.postMessage({ op: 'update', id, slot, offset, length });
    });
  }

  digest(id: number): Promise<string> {
    return new Promise((resolve) => {
      this.waiting.get(id)!.digest = resolve;
      this.worker.postMessage({ op: 'digest', id });
    });
  }

  abort(id: number): void {
    if (!this.waiting.has(id)) return;
    this.forget(id);
    this.worker.postMessage({ op: 'abort', id });
  }

  private forget(id: number): void {
    this.waiting.delete(id);
    if (this.waiting.size === 0) this.worker.unref();
  }
}

let threads: DigestThread[] | undefined;
let nextId = 1;

function digestThreads(): DigestThread[] {
  if (!threads || threads.some((t) => t.broken)) threads = ALGORITHMS.map((a) => new DigestThread(a));
  return threads;
}

/**
 * Hashes and writes an upload's bytes. Bodies up to SLOT_BYTES are hashed inline and written with
 * one writev (a thread round trip would cost more than the hashing). Larger ones are copied into a
 * small ring of shared slots: each full slot goes to the three digest threads and to the disk at
 * once, and is refilled only when all four are done with it. Memory stays at SLOTS × SLOT_BYTES
 * whatever the body size, and `push` returns only when a slot is free, so a slow disk or slow
 * hashing holds the socket back.
 */
export class DigestingWriter {
  private pending: Buffer[] = [];
  private pendingBytes = 0;
  private size = 0;
  private parallel:
    | { id: number; threads: DigestThread[]; ring: Buffer; free: Promise<void>[]; slot: number; fill: number; failed: Promise<never> }
    | undefined;
  private writes: Promise<void> = Promise.resolve();
  private position = 0;

  constructor(private readonly handle: FileHandle) {}

  /** Takes a chunk; resolves when there is room for the next one. */
  async push(chunk: Buffer): Promise<void> {
    this.size += chunk.length;
    if (!this.parallel) {
      this.pending.push(chunk);
      this.pendingBytes += chunk.length;
      if (this.pendingBytes < SLOT_BYTES) return;
      this.goParallel();
      const held = this.pending;
      this.pending = [];
      this.pendingBytes = 0;
      for (const c of held) await this.copyIn(c);
      return;
    }
    await this.copyIn(chunk);
  }

  /** Writes what is left and returns the digests once every byte is hashed and written (not yet fsynced). */
  async finish(): Promise<Digests> {
    if (!this.parallel) {
      const hasher = new MultiHasher();
      for (const c of this.pending) hasher.update(c);
      if (this.pendingBytes > 0) await writeAll(this.handle, this.pending, this.pendingBytes);
      return hasher.digest();
    }
    const p = this.parallel;
    if (p.fill > 0) this.dispatch();
    await Promise.race([Promise.all(p.free), p.failed]);
    const [sha512, blake2b, sha256] = await Promise.race([Promise.all(p.threads.map((t) => t.digest(p.id))), p.failed]);
    this.parallel = undefined;
    return { size: this.size, sha512: sha512!, blake2b: blake2b!, sha256: sha256! };
  }

  /** Stops hashing after a failure; waits for writes in flight so the caller may close the file. */
  async abort(): Promise<void> {
    const p = this.parallel;
    if (!p) return;
    this.parallel = undefined;
    for (const t of p.threads) t.abort(p.id);
    await this.writes.catch(() => undefined);
  }

  private goParallel(): void {
    const id = nextId++;
    const shared = new SharedArrayBuffer(SLOTS * SLOT_BYTES);
    let reject!: (err: Error) => void;
    const failed = new Promise<never>((_, r) => (reject = r));
    failed.catch(() => undefined);
    const threads = digestThreads();
    for (const t of threads) t.start(id, shared, reject);
    this.parallel = { id, threads, ring: Buffer.from(shared), free: Array.from({ length: SLOTS }, () => Promise.resolve()), slot: 0, fill: 0, failed };
  }

  private async copyIn(chunk: Buffer): Promise<void> {
    let offset = 0;
    while (offset < chunk.length) {
      const p = this.parallel!;
      const n = Math.min(chunk.length - offset, SLOT_BYTES - p.fill);
      chunk.copy(p.ring, p.slot * SLOT_BYTES + p.fill, offset, offset + n);
      p.fill += n;
      offset += n;
      if (p.fill === SLOT_BYTES) {
        this.dispatch();
        // Back-pressure: the next slot must be hashed and written before it is refilled.
        await Promise.race([p.free[p.slot], p.failed]);
      }
    }
  }

  /** Sends the current slot to the threads and the disk, and moves to the next slot. */
  private dispatch(): void {
    const p = this.parallel!;
    const { slot, fill } = p;
    const start = slot * SLOT_BYTES;
    const bytes = p.ring.subarray(start, start + fill);
    const position = this.position;
    this.position += fill;
    this.writes = this.writes.then(() => writeAt(this.handle, bytes, position));
    const free = Promise.all([this.writes, ...p.threads.map((t) => t.update(p.id, slot, start, fill))]).then(() => undefined);
    // Awaited when the slot comes round again or at finish; a failure must not go unhandled before that.
    free.catch(() => undefined);
    p.free[slot] = free;
    p.slot = (slot + 1) % SLOTS;
    p.fill = 0;
  }
}

/** write(2) may write less than asked (e.g. near a full disk); keep going until all is written or it fails. */
async function writeAt(handle: FileHandle, bytes: Buffer, position: number): Promise<void> {
  let offset = 0;
  while (offset < bytes.length) {
    const { bytesWritten } = await handle.write(bytes, offset, bytes.length - offset, position + offset);
    if (bytesWritten === 0) throw Object.assign(new Error('short write'), { code: 'ENOSPC' });
    offset += bytesWritten;
  }
}

export async function writeAll(handle: FileHandle, buffers: Buffer[], total: number): Promise<void> {
  const { bytesWritten } = await handle.writev(buffers);
  if (bytesWritten === total) return;
  const rest = Buffer.concat(buffers).subarray(bytesWritten);
  await writeAt(handle, rest, bytesWritten);
}
