import { readFile, rm } from 'node:fs/promises';
import { describe, expect, it } from 'vitest';
import { BlobStore } from '../src/store/blob-store.js';
import { SLOT_BYTES } from '../src/store/parallel-digests.js';
import { blake2b, pseudoRandomBytes, sha256, sha512 } from './helpers/core.js';
import { makeDataDir } from './helpers/server.js';

/** Splits `bytes` into pieces of awkward, varying sizes, as a socket would deliver them. */
async function* pieces(bytes: Buffer): AsyncGenerator<Buffer> {
  const sizes = [1, 7000, 65_536, 300_001, 1_048_575, 13];
  for (let off = 0, i = 0; off < bytes.length; i++) {
    const n = sizes[i % sizes.length]!;
    yield bytes.subarray(off, off + n);
    off += n;
  }
}

/** A real store over a fresh data directory (no reserve: these tests are about the write path alone). */
async function withStore(body: (store: BlobStore) => Promise<void>): Promise<void> {
  const dataDir = await makeDataDir();
  try {
    const store = new BlobStore(dataDir, { reserveBytes: 0 });
    await store.init();
    await body(store);
  } finally {
    await rm(dataDir, { recursive: true, force: true });
  }
}

describe('upload ingest: digests computed on other threads', () => {
  it('stores exactly the bytes and all three digests at and around the slot size and across many slots', async () => {
    await withStore(async (store) => {
      for (const size of [0, 1, SLOT_BYTES - 1, SLOT_BYTES, SLOT_BYTES + 1, 9 * SLOT_BYTES + 12_345]) {
        const bytes = pseudoRandomBytes(size, size + 1);
        const { digests, created } = await store.write(pieces(bytes), { expected: { size } });
        expect(created).toBe(true);
        expect(digests).toEqual({ size, sha512: sha512(bytes), blake2b: blake2b(bytes), sha256: sha256(bytes) });
        expect((await readFile(store.pathOf(digests.sha512))).equals(bytes)).toBe(true);
      }
    });
  });

  it('keeps several large uploads apart when they run at once', async () => {
    await withStore(async (store) => {
      const bodies = Array.from({ length: 6 }, (_, i) => pseudoRandomBytes(3 * SLOT_BYTES + i * 1000, 100 + i));
      const results = await Promise.all(bodies.map((b) => store.write(pieces(b))));
      results.forEach((r, i) => expect(r.digests.sha512).toBe(sha512(bodies[i]!)));
    });
  });

  it('leaves nothing behind when the body is refused midway, and the threads go on serving other uploads', async () => {
    await withStore(async (store) => {
      const big = pseudoRandomBytes(5 * SLOT_BYTES, 7);
      await expect(store.write(pieces(big), { maxBytes: 3 * SLOT_BYTES })).rejects.toMatchObject({ code: 'PAYLOAD_TOO_LARGE' });
      expect(await store.temps()).toEqual([]);
      const { digests } = await store.write(pieces(big));
      expect(digests.blake2b).toBe(blake2b(big));
    });
  });
});
