import type { Readable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';

/**
 * Token bucket in bytes. A chunk larger than the bucket may drive it negative: the debt is
 * slept off before the next chunk, so the average rate holds whatever the read size.
 */
export class TokenBucket {
  private tokens: number;
  private last = performance.now();

  constructor(
    readonly bytesPerSecond: number,
    readonly burstBytes = bytesPerSecond,
  ) {
    if (!(bytesPerSecond > 0)) throw new Error('a token bucket needs a positive rate');
    this.tokens = burstBytes;
  }

  async take(bytes: number, signal?: AbortSignal): Promise<void> {
    const now = performance.now();
    this.tokens = Math.min(this.burstBytes, this.tokens + ((now - this.last) / 1000) * this.bytesPerSecond);
    this.last = now;
    this.tokens -= bytes;
    if (this.tokens < 0) await sleep((-this.tokens / this.bytesPerSecond) * 1000, undefined, { signal });
  }
}

/** A stream wrapper for BlobStore.hash that paces reads through the bucket and stops on abort. */
export function throttled(bucket: TokenBucket, signal?: AbortSignal) {
  return (stream: Readable): AsyncIterable<Buffer> =>
    (async function* () {
      // Leaving this loop (abort) returns the stream's iterator, which destroys the stream and its fd.
      for await (const chunk of stream as AsyncIterable<Buffer>) {
        await bucket.take(chunk.length, signal);
        yield chunk;
      }
    })();
}
