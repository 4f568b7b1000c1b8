import { DeleteObjectCommand, PutObjectCommand } from '@aws-sdk/client-s3';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import http from 'node:http';
import path from 'node:path';
import { Readable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import type { Config } from '../src/config.js';
import type { ServableBlob } from '../src/db/index.js';
import { blobFile } from '../src/store/paths.js';
import type { S3BlobStorage } from '../src/store/s3-store.js';
import { sha512 } from './helpers/core.js';
import { get, makeDataDir, startTestServer, ADMIN_TOKEN, type TestServer } from './helpers/server.js';
import { skipWithoutService } from './helpers/services.js';
import { LOOPBACK_CIDRS, serve as serveBytes, startUpstream } from './helpers/upstream.js';
import { startSwift, swiftMissing, type Swift } from './helpers/swift.js';

/**
 * `fastpull serve` with FASTPULL_STORAGE=s3://… on a real Swift (its S3 API) and the SQLite index:
 * uploads verified before visible and nothing left of a refused one, downloads streamed from the bucket
 * with every header the local path gives, and the local read cache in front of it.
 */
const skip = skipWithoutService('OpenStack Swift (s3)', swiftMissing());
const KiB = 1024;
const MiB = 1024 * KiB;
const WRITER = fileURLToPath(new URL('./helpers/killed-writer.ts', import.meta.url));

let swift: Swift | undefined;
let bucket = '';
let prefixes = 0;
const cleanup: (() => Promise<void>)[] = [];

beforeAll(async () => {
  if (skip) return;
  swift = await startSwift();
  bucket = await swift.createBucket('serve');
  // The SDK takes credentials from its own chain, as in production: the environment here.
  vi.stubEnv('AWS_ACCESS_KEY_ID', swift.credentials.accessKeyId);
  vi.stubEnv('AWS_SECRET_ACCESS_KEY', swift.credentials.secretAccessKey);
}, 120_000);

afterAll(async () => {
  for (const c of cleanup.reverse()) await c();
  vi.unstubAllEnvs();
  await swift?.stop();
});

async function serve(overrides: Partial<Config> = {}, prefix = `origin/t${++prefixes}`): Promise<TestServer> {
  const server = await startTestServer({
    storage: { kind: 's3', bucket, prefix },
    s3Endpoint: swift!.endpoint,
    s3Region: swift!.region,
    s3ForcePathStyle: true,
    ...overrides,
  });
  cleanup.push(() => server.stop());
  return server;
}

const s3Of = (server: TestServer) => server.blobStorage as S3BlobStorage;

async function multipartUploads(storage: S3BlobStorage): Promise<string[]> {
  const out: string[] = [];
  for await (const u of storage.multipartUploads()) out.push(u.key);
  return out;
}

async function putBlob(server: TestServer, name: string, bytes: Buffer): Promise<string> {
  const res = await server.upload(name, bytes);
  expect(res.status).toBe(201);
  return res.json.sha512 as string;
}

describe.skipIf(skip)('serve with s3 storage', () => {
  it('stores an upload in the bucket and serves it by hash and by name with the local headers, HEAD, Range and 304', async () => {
    const server = await serve();
    const big = randomBytes(3 * MiB + 17);
    const small = randomBytes(1000);
    const h = await putBlob(server, 'big-1.0.tar.gz', big);
    const hs = await putBlob(server, 'small-1.0.tar.gz', small);
    expect(h).toBe(sha512(big));
    // The bytes are in the bucket at the GLEP 75 key, not on local disk.
    expect((await s3Of(server).stat(h))?.size).toBe(big.length);
    expect(existsSync(path.join(server.dataDir, 'blobs'))).toBe(false);

    const local = await startTestServer();
    cleanup.push(() => local.stop());
    await local.upload('big-1.0.tar.gz', big);
    for (const url of [`/distfiles/${h.slice(0, 2)}/${h.slice(2, 4)}/${h.slice(4, 6)}/${h}`, '/distfiles/big-1.0.tar.gz']) {
      const res = await get(server.baseUrl + url);
      expect(res.status).toBe(200);
      expect(res.body.equals(big)).toBe(true);
      const same = await get(local.baseUrl + url);
      // Every header the local path pins, except what depends on the moment (dates of upload, request id).
      for (const name of ['content-type', 'content-length', 'accept-ranges', 'etag', 'cache-control', 'content-disposition', 'repr-digest']) {
        expect(res.headers[name], name).toEqual(same.headers[name]);
      }
      expect(res.headers['last-modified']).toBeTruthy();
    }
    const byName = await get(`${server.baseUrl}/distfiles/big-1.0.tar.gz`);
    expect(byName.headers['content-disposition']).toBe('attachment; filename="big-1.0.tar.gz"');
    expect((await get(`${server.baseUrl}/distfiles/small-1.0.tar.gz`)).body.equals(small)).toBe(true);
    expect((await get(`${server.baseUrl}/${hs}`)).body.equals(small)).toBe(true);

    const head = await get(`${server.baseUrl}/${h}`, {}, 'HEAD');
    expect(head.status).toBe(200);
    expect(head.headers['content-length']).toBe(String(big.length));
    expect(head.body.length).toBe(0);

    const range = await get(`${server.baseUrl}/${h}`, { range: 'bytes=1048570-1048580' });
    expect(range.status).toBe(206);
    expect(range.headers['content-range']).toBe(`bytes 1048570-1048580/${big.length}`);
    expect(range.body.equals(big.subarray(1048570, 1048581))).toBe(true);
    const tail = await get(`${server.baseUrl}/${h}`, { range: 'bytes=-5' });
    expect(tail.status).toBe(206);
    expect(tail.body.equals(big.subarray(big.length - 5))).toBe(true);
    expect((await get(`${server.baseUrl}/${h}`, { range: `bytes=${big.length}-` })).status).toBe(416);

    const etag = byName.headers.etag as string;
    const notModified = await get(`${server.baseUrl}/distfiles/big-1.0.tar.gz`, { 'if-none-match': etag });
    expect(notModified.status).toBe(304);
    expect(notModified.body.length).toBe(0);
    expect((await get(`${server.baseUrl}/${h}`, { 'if-match': '"nope"' })).status).toBe(412);

    const unknown = await get(`${server.baseUrl}/${sha512('never stored')}`);
    expect(unknown.status).toBe(404);
    expect(JSON.parse(unknown.body.toString()).error).toBe('NOT_FOUND');
    expect((await get(`${server.baseUrl}/distfiles/nothing-1.0.tar.gz`)).status).toBe(404);
  }, 60_000);

  it('refuses FASTPULL_ACCEL_REDIRECT at start: nginx cannot send objects from a bucket', async () => {
    const dataDir = await makeDataDir();
    cleanup.push(() => rm(dataDir, { recursive: true, force: true }));
    await expect(serve({ dataDir, accelRedirect: '/_fastpull_blobs/' })).rejects.toThrow(/FASTPULL_ACCEL_REDIRECT.*FASTPULL_STORAGE is s3/);
  }, 30_000);

  it('with FASTPULL_VERIFY_ON_SERVE, cuts a damaged object before its last byte and quarantines it', async () => {
    const server = await serve({ verifyOnServe: true });
    const bytes = randomBytes(1 * MiB);
    const h = await putBlob(server, 'rotten-1.0.tar.gz', bytes);
    await swift!.client.send(new PutObjectCommand({ Bucket: bucket, Key: s3Of(server).key(h), Body: randomBytes(bytes.length) }));
    const res = await request(`${server.baseUrl}/${h}`);
    await expect(res.body.arrayBuffer()).rejects.toThrow();
    await vi.waitFor(async () => expect((await server.index.blob(h))?.quarantined_at ?? null).not.toBeNull(), { timeout: 20_000, interval: 50 });
    expect((await get(`${server.baseUrl}/${h}`)).status).toBe(404);
    // The object moves to trash/quarantine/ after the row that makes reads 404.
    await vi.waitFor(async () => expect(await s3Of(server).stat(h)).toBeUndefined(), { timeout: 20_000, interval: 100 });
  }, 60_000);

  it('answers 404 (not a truncated 200) for a blob the index has but the bucket lost', async () => {
    const server = await serve();
    const bytes = randomBytes(200 * KiB);
    const h = await putBlob(server, 'lost-1.0.tar.gz', bytes);
    await swift!.client.send(new DeleteObjectCommand({ Bucket: bucket, Key: s3Of(server).key(h) }));
    expect((await get(`${server.baseUrl}/${h}`)).status).toBe(404);
    expect((await get(`${server.baseUrl}/${h}`, {}, 'HEAD')).status).toBe(404);
  }, 60_000);

  it('aborts the bucket GET when the client hangs up mid-body: no socket stays held', async () => {
    const server = await serve();
    const bytes = randomBytes(24 * MiB);
    const h = await putBlob(server, 'abort-1.0.tar.gz', bytes);
    const storage = s3Of(server);
    for (let i = 0; i < 3; i++) {
      await new Promise<void>((resolve, reject) => {
        const req = http.get(`${server.baseUrl}/${h}`, (res) => {
          expect(res.statusCode).toBe(200);
          res.once('data', () => {
            req.destroy();
            resolve();
          });
        });
        req.once('error', (err) => ((err as NodeJS.ErrnoException).code === 'ECONNRESET' ? undefined : reject(err)));
      });
    }
    // A body left paused behind a gone client would hold its socket for ever.
    await vi.waitFor(() => expect(storage.socketsInUse).toBe(0), { timeout: 20_000, interval: 50 });
    const whole = await get(`${server.baseUrl}/${h}`);
    expect(whole.body.equals(bytes)).toBe(true);
  }, 60_000);

  it('stores nothing for a body that does not match its declared digest: no object, no multipart upload left', async () => {
    const server = await serve();
    const bytes = randomBytes(12 * MiB);
    const declared = sha512('something else');
    const res = await request(`${server.baseUrl}/api/v1/distfiles/bad-1.0.tar.gz?sha512=${declared}`, {
      method: 'PUT',
      body: bytes,
      headers: { authorization: `Bearer ${ADMIN_TOKEN}` },
    });
    expect(res.statusCode).toBe(422);
    expect(((await res.body.json()) as { error: string }).error).toBe('DIGEST_MISMATCH');
    const storage = s3Of(server);
    expect((await storage.listPage()).hashes).toEqual([]);
    expect(await storage.stat(declared)).toBeUndefined();
    expect(await multipartUploads(storage)).toEqual([]);
    expect((await get(`${server.baseUrl}/distfiles/bad-1.0.tar.gz`)).status).toBe(404);
    expect(await readdir(storage.spoolDir)).toEqual([]);
  }, 60_000);

  it('refuses a chunked upload that grows past the high watermark mid-body, leaving nothing in the bucket', async () => {
    const server = await serve({ highWatermarkBytes: 4 * MiB });
    const storage = s3Of(server);
    for (const declared of [true, false]) {
      const bytes = randomBytes(12 * MiB);
      const body = Readable.from(
        (function* () {
          for (let at = 0; at < bytes.length; at += 256 * KiB) yield bytes.subarray(at, at + 256 * KiB);
        })(),
      );
      const status = await request(`${server.baseUrl}/api/v1/distfiles/big-1.0.tar.gz${declared ? `?sha512=${sha512(bytes)}` : ''}`, {
        method: 'PUT',
        body,
        headers: { authorization: `Bearer ${ADMIN_TOKEN}` },
      }).then(
        async (res) => {
          await res.body.dump();
          return res.statusCode;
        },
        // Refused while the body is still on its way: the connection closes under the sender.
        () => 0,
      );
      expect([0, 507], `declared ${declared}`).toContain(status);
      expect((await storage.listPage()).hashes).toEqual([]);
      expect(await multipartUploads(storage)).toEqual([]);
      expect(await readdir(storage.spoolDir)).toEqual([]);
    }
  }, 60_000);

  it('pulls a miss through from a mirror into the bucket, then serves it from there', async () => {
    const data = randomBytes(300 * KiB);
    const up = await startUpstream({ '/mirror/pulled-1.0.tar.xz': serveBytes(data, { chunkSize: 32 * KiB }) });
    cleanup.push(() => up.close());
    const server = await serve({ pullThrough: true, upstreams: [{ kind: 'flat', url: `${up.url}/mirror` }], fetchAllowCidrs: LOOPBACK_CIDRS });
    const first = await get(`${server.baseUrl}/distfiles/pulled-1.0.tar.xz`);
    expect(first.status).toBe(200);
    expect(first.body.equals(data)).toBe(true);
    const h = sha512(data);
    await vi.waitFor(async () => expect((await s3Of(server).stat(h))?.size).toBe(data.length));
    const second = await get(`${server.baseUrl}/${h}`);
    expect(second.body.equals(data)).toBe(true);
    expect(second.headers['x-fastpull-pull']).toBeUndefined();
    expect(up.requests).toHaveLength(1);
  }, 60_000);

  it('aborts at start the multipart upload a crashed writer of this host left behind', async () => {
    const dataDir = await makeDataDir();
    cleanup.push(() => rm(dataDir, { recursive: true, force: true }));
    const prefix = `origin/t${++prefixes}`;
    const spoolDir = path.join(dataDir, 'spool');
    await mkdir(spoolDir, { recursive: true });
    const { endpoint, region, credentials } = swift!;
    const child = spawn(
      process.execPath,
      ['--import', 'tsx', WRITER, JSON.stringify({ kind: 's3', endpoint, region, credentials, bucket, prefix, spoolDir, declared: true })],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    await new Promise<void>((resolve, reject) => {
      let out = '';
      child.stdout.on('data', (d: Buffer) => {
        out += d.toString();
        // Past two 5 MiB parts: the multipart upload exists in the bucket.
        if (/bytes (1[6-9]|[2-9]\d)\d{6}\n/.test(out)) resolve();
      });
      child.once('exit', (code) => reject(new Error(`writer exited (${code}) early`)));
    });
    child.kill('SIGKILL');
    await exited;

    const server = await serve({ dataDir }, prefix);
    const storage = s3Of(server);
    // Young (another replica's would be left alone), but its writer's marker names a dead process of this host.
    expect(await multipartUploads(storage)).toEqual([]);
    expect(await readdir(spoolDir)).toEqual([]);
  }, 60_000);
});

describe.skipIf(skip)('read cache (FASTPULL_CACHE_DIR) in front of s3', () => {
  /** A server with a fresh 64 MiB read cache. */
  const serveCached = async (overrides: Partial<Config> = {}) => {
    const cacheDir = path.join(await makeDataDir(), 'cache');
    cleanup.push(() => rm(path.dirname(cacheDir), { recursive: true, force: true }));
    return { server: await serve({ cacheDir, cacheMaxBytes: 64 * MiB, ...overrides }), cacheDir };
  };
  const refOf = (server: TestServer, h: string) => {
    // SQLite index here: answered synchronously.
    const row = server.index.servableByHash(h) as ServableBlob;
    return { sha512: h, size: row.size, version: row.version };
  };

  it('fills a blob once, verified, then serves it from local disk (the bucket no longer needed)', async () => {
    const { server, cacheDir } = await serveCached();
    const big = randomBytes(2 * MiB + 3);
    const small = randomBytes(3000);
    const h = await putBlob(server, 'cached-1.0.tar.gz', big);
    const hs = await putBlob(server, 'cached-small-1.0.tar.gz', small);
    expect((await get(`${server.baseUrl}/${h}`)).body.equals(big)).toBe(true);
    expect((await get(`${server.baseUrl}/${hs}`)).body.equals(small)).toBe(true);
    // The fill the first GET started; joining it waits for the same single flight.
    expect(await server.readCache!.fill(refOf(server, h))).toBe(true);
    expect(await server.readCache!.put(refOf(server, hs), small)).toBe(true);
    expect((await readFile(blobFile(path.join(cacheDir, 'blobs'), h))).equals(big)).toBe(true);
    expect(await readdir(path.join(cacheDir, 'tmp'))).toEqual([]);

    for (const hash of [h, hs]) await swift!.client.send(new DeleteObjectCommand({ Bucket: bucket, Key: s3Of(server).key(hash) }));
    const again = await get(`${server.baseUrl}/distfiles/cached-1.0.tar.gz`, { range: 'bytes=10-19' });
    expect(again.status).toBe(206);
    expect(again.body.equals(big.subarray(10, 20))).toBe(true);
    expect((await get(`${server.baseUrl}/${h}`)).body.equals(big)).toBe(true);
    expect((await get(`${server.baseUrl}/${hs}`, {}, 'HEAD')).status).toBe(200);
  }, 60_000);

  it('drops an entry when the index row changes version (quarantined, then released)', async () => {
    const { server, cacheDir } = await serveCached();
    const bytes = randomBytes(300 * KiB);
    const h = await putBlob(server, 'versioned-1.0.tar.gz', bytes);
    await get(`${server.baseUrl}/${h}`);
    expect(await server.readCache!.fill(refOf(server, h))).toBe(true);
    const file = blobFile(path.join(cacheDir, 'blobs'), h);
    expect(existsSync(file)).toBe(true);

    // What verify or another replica does to the row (the cache is not told: it sees the new version).
    server.db!.prepare('UPDATE blobs SET quarantined_at = 1 WHERE sha512 = ?').run(h);
    expect((await get(`${server.baseUrl}/${h}`)).status).toBe(404);
    server.db!.prepare('UPDATE blobs SET quarantined_at = NULL WHERE sha512 = ?').run(h);
    const head = await get(`${server.baseUrl}/${h}`, {}, 'HEAD');
    expect(head.status).toBe(200);
    await vi.waitFor(() => expect(existsSync(file)).toBe(false));
    expect(server.readCache!.usage.blobs).toBe(0);
    // The next GET serves from the bucket and fills the cache again, under the new version.
    expect((await get(`${server.baseUrl}/${h}`)).body.equals(bytes)).toBe(true);
    expect(await server.readCache!.fill(refOf(server, h))).toBe(true);
    expect(server.readCache!.holds(refOf(server, h))).toBe(true);
  }, 60_000);

  it('serves a small blob from the bucket when its read-cache copy was damaged on local disk, and drops the copy', async () => {
    const { server, cacheDir } = await serveCached();
    const small = randomBytes(5000);
    const h = await putBlob(server, 'rot-local-1.0.tar.gz', small);
    expect((await get(`${server.baseUrl}/${h}`)).body.equals(small)).toBe(true);
    expect(await server.readCache!.put(refOf(server, h), small)).toBe(true);
    const file = blobFile(path.join(cacheDir, 'blobs'), h);
    await writeFile(file, randomBytes(small.length));
    const res = await get(`${server.baseUrl}/${h}`);
    expect(res.status).toBe(200);
    expect(res.body.equals(small)).toBe(true);
    expect(server.readCache!.holds(refOf(server, h))).toBe(false);
    await vi.waitFor(() => expect(existsSync(file)).toBe(false));
  }, 60_000);

  it('never caches a damaged object, and cuts the response before its last byte', async () => {
    const { server, cacheDir } = await serveCached();
    const bytes = randomBytes(1 * MiB);
    const h = await putBlob(server, 'damaged-1.0.tar.gz', bytes);
    // Same size, other bytes, at the blob's key: bit rot or an operator's mistake in the bucket.
    await swift!.client.send(new PutObjectCommand({ Bucket: bucket, Key: s3Of(server).key(h), Body: randomBytes(bytes.length) }));

    const res = await request(`${server.baseUrl}/${h}`);
    expect(res.statusCode).toBe(200);
    await expect(res.body.arrayBuffer()).rejects.toThrow();
    expect(await server.readCache!.fill(refOf(server, h))).toBe(false);
    expect(existsSync(blobFile(path.join(cacheDir, 'blobs'), h))).toBe(false);
    expect(server.readCache!.usage.blobs).toBe(0);
    expect(await readdir(path.join(cacheDir, 'tmp'))).toEqual([]);
  }, 60_000);

  it('with FASTPULL_VERIFY_ON_SERVE, a fill that finds a damaged object has it quarantined (a range GET checks no hash)', async () => {
    const { server, cacheDir } = await serveCached({ verifyOnServe: true });
    const bytes = randomBytes(1 * MiB);
    const h = await putBlob(server, 'rot-fill-1.0.tar.gz', bytes);
    await swift!.client.send(new PutObjectCommand({ Bucket: bucket, Key: s3Of(server).key(h), Body: randomBytes(bytes.length) }));
    expect((await get(`${server.baseUrl}/${h}`, { range: 'bytes=0-99' })).status).toBe(206);
    await vi.waitFor(async () => expect((await server.index.blob(h))?.quarantined_at ?? null).not.toBeNull(), { timeout: 20_000, interval: 50 });
    expect(existsSync(blobFile(path.join(cacheDir, 'blobs'), h))).toBe(false);
  }, 60_000);

  it('evicts the least recently used blobs past FASTPULL_CACHE_MAX_BYTES, and keeps its entries across a restart', async () => {
    const root = await makeDataDir();
    cleanup.push(() => rm(root, { recursive: true, force: true }));
    const cacheDir = path.join(root, 'cache');
    const dataDir = path.join(root, 'data');
    await mkdir(dataDir);
    const size = 300 * KiB;
    const prefix = `origin/t${++prefixes}`;
    const first = await serve({ dataDir, cacheDir, cacheMaxBytes: 3 * size + 1000 }, prefix);
    const blobs = await Promise.all(['a', 'b', 'c', 'd'].map(async (n) => ({ n, bytes: randomBytes(size), h: '' })));
    for (const b of blobs) b.h = await putBlob(first, `lru-${b.n}-1.0.tar.gz`, b.bytes);
    const [a, b, c, d] = blobs as [(typeof blobs)[0], (typeof blobs)[0], (typeof blobs)[0], (typeof blobs)[0]];
    const fetched = async (server: TestServer, x: typeof a) => {
      expect((await get(`${server.baseUrl}/${x.h}`)).body.equals(x.bytes)).toBe(true);
      await server.readCache!.fill(refOf(server, x.h));
    };
    const cached = (x: typeof a) => existsSync(blobFile(path.join(cacheDir, 'blobs'), x.h));
    await fetched(first, a);
    await fetched(first, b);
    await fetched(first, c);
    await fetched(first, a); // a is now more recent than b
    await fetched(first, d);
    expect([a, b, c, d].map(cached)).toEqual([true, false, true, true]);
    expect(first.readCache!.usage).toEqual({ blobs: 3, bytes: 3 * size });
    await first.stop();

    const second = await serve({ dataDir, cacheDir, cacheMaxBytes: 3 * size + 1000 }, prefix);
    await second.readCache!.ready;
    expect(second.readCache!.usage).toEqual({ blobs: 3, bytes: 3 * size });
    // Served from the cache: the bucket has lost them.
    for (const x of [a, c, d]) await swift!.client.send(new DeleteObjectCommand({ Bucket: bucket, Key: s3Of(second).key(x.h) }));
    for (const x of [a, c, d]) expect((await get(`${second.baseUrl}/${x.h}`)).body.equals(x.bytes)).toBe(true);
  }, 90_000);
});
