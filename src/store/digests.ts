import { createHash, type Hash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import type { Readable } from 'node:stream';

export interface Digests {
  size: number;
  sha512: string;
  blake2b: string;
  sha256: string;
}

/** What a client may declare about a blob before sending it (as in a Manifest DIST line). */
export interface ExpectedDigests {
  size?: number | undefined;
  sha512?: string | undefined;
  blake2b?: string | undefined;
  sha256?: string | undefined;
}

export interface Mismatch {
  field: keyof Digests;
  expected: string | number;
  actual: string | number;
}

/** Computes every digest the index keeps in a single pass over the bytes. */
export class MultiHasher {
  private readonly sha512: Hash = createHash('sha512');
  private readonly blake2b: Hash = createHash('blake2b512');
  private readonly sha256: Hash = createHash('sha256');
  size = 0;

  update(chunk: Buffer): void {
    this.sha512.update(chunk);
    this.blake2b.update(chunk);
    this.sha256.update(chunk);
    this.size += chunk.length;
  }

  digest(): Digests {
    return {
      size: this.size,
      sha512: this.sha512.digest('hex'),
      blake2b: this.blake2b.digest('hex'),
      sha256: this.sha256.digest('hex'),
    };
  }
}

export function compareDigests(expected: ExpectedDigests, actual: Digests): Mismatch[] {
  const out: Mismatch[] = [];
  for (const field of ['size', 'sha512', 'blake2b', 'sha256'] as const) {
    const want = expected[field];
    if (want !== undefined && want !== actual[field]) out.push({ field, expected: want, actual: actual[field] });
  }
  return out;
}

/** Every digest of a file, streamed. `wrap` lets callers throttle (scrub) or count bytes on the way. */
export async function hashFile(file: string, wrap?: (stream: Readable) => Readable | AsyncIterable<Buffer>): Promise<Digests> {
  const hasher = new MultiHasher();
  const stream = createReadStream(file, { highWaterMark: 1024 * 1024 });
  for await (const chunk of wrap ? wrap(stream) : stream) hasher.update(chunk as Buffer);
  return hasher.digest();
}
