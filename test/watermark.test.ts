import path from 'node:path';
import { Readable } from 'node:stream';
import { request } from 'undici';
import { describe, expect, it } from 'vitest';
import { AUTH, filesUnder } from './helpers/core.js';
import { content } from './helpers/integrity.js';
import { startServeProcess } from './helpers/serve-process.js';
import { ADMIN_TOKEN, makeDataDir, startTestServer, type TestServer } from './helpers/server.js';
import { openIndex } from './helpers/integrity.js';
import { rm } from 'node:fs/promises';

const MiB = 1024 * 1024;
const MARK = 10 * MiB;

/** A body sent in 64 KiB pieces, yielding between them so parallel uploads interleave on the wire. */
async function* trickle(bytes: Buffer): AsyncGenerator<Buffer> {
  for (let off = 0; off < bytes.length; off += 64 * 1024) {
    await new Promise((r) => setImmediate(r));
    yield bytes.subarray(off, off + 64 * 1024);
  }
}

/**
 * A refused upload is answered 507 with `Connection: close` while its body may still be on the way;
 * a client still writing then sees the connection reset before it reads the answer (status 0).
 */
async function put(server: Pick<TestServer, 'baseUrl'>, name: string, body: Buffer | Readable, query = '') {
  try {
    const res = await request(`${server.baseUrl}/api/v1/distfiles/${name}${query}`, { method: 'PUT', headers: AUTH, body });
    const json = (await res.body.json()) as { error?: string };
    return { status: res.statusCode, json };
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'EPIPE' || code === 'ECONNRESET' || code === 'UND_ERR_SOCKET') return { status: 0, json: {} };
    throw err;
  }
}

function storedBytes(server: TestServer): number {
  return (server.db!.prepare('SELECT coalesce(sum(size), 0) AS n FROM blobs').get() as { n: number }).n;
}

async function expectHeld(server: TestServer, results: { status: number; json: { error?: string } }[]) {
  for (const r of results) {
    expect([0, 201, 507]).toContain(r.status);
    if (r.status === 507) expect(r.json.error).toBe('INSUFFICIENT_STORAGE');
  }
  expect(storedBytes(server)).toBeLessThanOrEqual(MARK);
  // Refused uploads left nothing: only the accepted blobs are on disk, no temp remains.
  expect((await filesUnder(path.join(server.dataDir, 'blobs'))).length).toBe(results.filter((r) => r.status === 201).length);
  expect(await filesUnder(path.join(server.dataDir, 'tmp'))).toEqual([]);
}

describe('high watermark under concurrency', () => {
  /** Runs 20 parallel 2 MiB uploads against a fresh server with a 10 MiB mark; `send` shapes each body. */
  async function burst(prefix: string, send: (server: TestServer, name: string, body: Buffer) => ReturnType<typeof put>) {
    const server = await startTestServer({ highWatermarkBytes: MARK });
    const bodies = Array.from({ length: 20 }, (_, i) => content(`${prefix}-${i}`, 2 * MiB));
    const results = await Promise.all(bodies.map((b, i) => send(server, `${prefix}-${i}.bin`, b))).catch(async (err: unknown) => {
      await server.stop();
      throw err;
    });
    return { server, results };
  }

  it('holds for 20 parallel 2 MiB uploads that declare their size (Content-Length)', async () => {
    const { server, results } = await burst('par', (s, name, b) => put(s, name, b));
    try {
      await expectHeld(server, results);
      // Exactly what fits was accepted: five 2 MiB blobs fill 10 MiB.
      expect(results.filter((r) => r.status === 201)).toHaveLength(5);
    } finally {
      await server.stop();
    }
  });

  it('holds for 20 parallel chunked uploads of unknown size, counting the bytes as they arrive', async () => {
    const { server, results } = await burst('chunked', (s, name, b) => put(s, name, Readable.from(trickle(b))));
    try {
      await expectHeld(server, results);
      // Which ones win is a race (at the mark, every upload that asks for more is refused), but not all fit.
      expect(results.some((r) => r.status !== 201)).toBe(true);
      // Once the burst is over, space that was only held in flight is free again.
      const room = MARK - storedBytes(server);
      if (room >= MiB) expect((await put(server, 'after.bin', content('after', MiB))).status).toBe(201);
    } finally {
      await server.stop();
    }
  });

  it('holds for uploads that declare ?size= on a chunked body', async () => {
    const { server, results } = await burst('sized', (s, name, b) => put(s, name, Readable.from(trickle(b)), `?size=${b.length}`));
    try {
      await expectHeld(server, results);
      expect(results.filter((r) => r.status === 201)).toHaveLength(5);
    } finally {
      await server.stop();
    }
  });
});

describe('high watermark across serving processes (FASTPULL_WORKERS=2)', () => {
  it('holds for 20 parallel 2 MiB uploads spread over two processes', async () => {
    const dataDir = await makeDataDir();
    const server = await startServeProcess({
      FASTPULL_WORKERS: '2',
      FASTPULL_DATA_DIR: dataDir,
      FASTPULL_ADMIN_TOKEN: ADMIN_TOKEN,
      FASTPULL_HIGH_WATERMARK_BYTES: String(MARK),
      FASTPULL_SHUTDOWN_GRACE_MS: '2000',
    });
    try {
      const bodies = Array.from({ length: 20 }, (_, i) => content(`cluster-${i}`, 2 * MiB));
      const results = await Promise.all(bodies.map((b, i) => put(server, `cluster-${i}.bin`, b)));
      for (const r of results) expect([0, 201, 507]).toContain(r.status);
      expect(results.filter((r) => r.status === 201)).toHaveLength(5);
      // Both processes took uploads: the mark held across them, not just within one. Request lines are
      // flushed in batches (every 250 ms), so give the second process's lines a moment to arrive.
      const servingPids = () =>
        new Set(
          server
            .output()
            .split('\n')
            .filter((l) => l.includes('/api/v1/distfiles/cluster-'))
            .map((l) => (JSON.parse(l) as { pid: number }).pid),
        );
      for (let waited = 0; servingPids().size < 2 && waited < 5_000; waited += 50) await new Promise((r) => setTimeout(r, 50));
      expect(servingPids().size).toBe(2);
      const db = openIndex(dataDir);
      try {
        expect((db.prepare('SELECT coalesce(sum(size), 0) AS n FROM blobs').get() as { n: number }).n).toBe(MARK);
        expect(db.prepare('SELECT count(*) AS n FROM upload_holds').get()).toEqual({ n: 0 });
      } finally {
        db.close();
      }
    } finally {
      server.child.kill('SIGTERM');
      await server.exited;
      await rm(dataDir, { recursive: true, force: true });
    }
  }, 60_000);
});
