import { randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';

const CHUNK = 1024 * 1024;

/**
 * Incompressible bytes of any size without holding them: a random 1 MiB block, each chunk
 * stamped with a per-run seed and its index so no two chunks (and no two runs) hash alike.
 * The same generator feeds both the upload and the hashing ceiling, so they see identical bytes.
 */
export function* chunks(size: number, seed: Buffer, block: Buffer = randomBytes(CHUNK)): Generator<Buffer> {
  let index = 0;
  for (let sent = 0; sent < size; index++) {
    const n = Math.min(CHUNK, size - sent);
    // A fresh buffer per chunk: a stream may still hold the previous one when we move on.
    const out = Buffer.allocUnsafe(n);
    block.copy(out, 0, 0, n);
    const stamp = Buffer.alloc(16);
    seed.copy(stamp, 0, 0, 8);
    stamp.writeBigUInt64BE(BigInt(index), 8);
    stamp.copy(out, 0, 0, Math.min(16, n));
    sent += n;
    yield out;
  }
}

export function dataStream(size: number, seed: Buffer, block?: Buffer): Readable {
  return Readable.from(chunks(size, seed, block), { objectMode: false });
}
