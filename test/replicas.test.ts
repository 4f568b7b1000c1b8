import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { request } from 'undici';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { shardedPath } from '../src/domain/layout.js';
import {
  blobStored,
  countRows,
  damageBlob,
  freshTarget,
  listMultipartUploads,
  sharedServices,
  startServices,
  storedBlobs,
  TEST_BACKEND,
  type BackendServices,
  type BackendTarget,
} from './helpers/backend.js';
import { runCli } from './helpers/cli.js';
import { postgresMissing } from './helpers/postgres.js';
import { startServeProcess, type ServeProcess } from './helpers/serve-process.js';
import { ADMIN_TOKEN, get } from './helpers/server.js';
import { skipWithoutService } from './helpers/services.js';
import { swiftMissing } from './helpers/swift.js';
import { bytes, serve, sha512, sleep, startUpstream, type Upstream } from './helpers/upstream.js';

/**
 * Several `fastpull serve` processes on one bucket prefix and one database form one origin (issue 9, "Several
 * replicas"). Uses the run's Swift and PostgreSQL under FASTPULL_TEST_BACKEND=s3+postgres, else starts its own.
 */
const skip =
  TEST_BACKEND === 'local' && (skipWithoutService('Swift', swiftMissing()) || skipWithoutService('PostgreSQL', postgresMissing()));

const AUTH = { authorization: `Bearer ${ADMIN_TOKEN}` };

let services: BackendServices;
let stopServices: () => Promise<void> = async () => undefined;
const running = new Set<ServeProcess>();
const dirs: string[] = [];
const targets: BackendTarget[] = [];
const upstreams: Upstream[] = [];

async function stopProcess(p: ServeProcess, signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
  running.delete(p);
  if (p.child.exitCode === null && p.child.signalCode === null) p.child.kill(signal);
  await p.exited;
}

/** One replica: its own data dir and port, the target's bucket prefix and database. */
async function replica(target: BackendTarget, env: Record<string, string> = {}): Promise<ServeProcess & { dataDir: string }> {
  const dataDir = await mkdtemp(path.join(tmpdir(), 'fp-replica-'));
  dirs.push(dataDir);
  const proc = await startServeProcess(
    { FASTPULL_DATA_DIR: dataDir, FASTPULL_ADMIN_TOKEN: ADMIN_TOKEN, ...env },
    [],
    { backend: target },
  );
  running.add(proc);
  return { ...proc, dataDir };
}

/** Two replicas on a fresh target; A starts first (it applies the migrations), then B. */
async function pair(env: Record<string, string> = {}) {
  const target = await freshTarget(services);
  targets.push(target);
  const a = await replica(target, env);
  const b = await replica(target, env);
  return { target, a, b };
}

async function put(base: string, p: string, body: Buffer | string | AsyncIterable<Buffer>, headers: Record<string, string> = AUTH) {
  const payload = typeof body === 'string' || Buffer.isBuffer(body) ? body : Readable.from(body);
  const res = await request(`${base}${p}`, { method: 'PUT', headers, body: payload });
  const text = await res.body.text();
  return { status: res.statusCode, json: text ? JSON.parse(text) : undefined };
}

/** Polls (bounded, 100 ms apart) until `check` holds: for what a replica learns within seconds, not at once. */
async function eventually(what: string, check: () => Promise<boolean>, tries = 150): Promise<void> {
  for (let i = 0; i < tries; i++) {
    if (await check()) return;
    await sleep(100);
  }
  throw new Error(`never happened: ${what}`);
}

const byHash = (base: string, h: string) => `${base}/distfiles/${shardedPath(h)}`;

describe.skipIf(skip)('replicas: two fastpull serve processes, one bucket, one database', () => {
  beforeAll(async () => {
    const shared = sharedServices();
    if (shared) services = shared;
    else {
      const own = await startServices();
      services = own.services;
      stopServices = own.stop;
    }
  }, 120_000);

  afterEach(async () => {
    for (const p of [...running]) await stopProcess(p);
    for (const up of upstreams.splice(0)) await up.close();
  });

  afterAll(async () => {
    for (const t of targets) await t.release().catch(() => undefined);
    await stopServices();
    for (const d of dirs) await rm(d, { recursive: true, force: true });
  });

  it('serves an upload through A from B at once by hash, and by name within the name TTL', async () => {
    const { a, b } = await pair();
    const data = bytes(200_000, 901);
    const h = sha512(data);
    const up = await put(a.baseUrl, '/api/v1/distfiles/shared-1.0.tar.gz', data);
    expect(up.status).toBe(201);
    // By hash: no polling — a miss is never cached, so B finds the row and the object at once.
    const direct = await get(byHash(b.baseUrl, h));
    expect(direct.status).toBe(200);
    expect(direct.body.equals(data)).toBe(true);
    const range = await get(byHash(b.baseUrl, h), { range: 'bytes=10-19' });
    expect(range.status).toBe(206);
    expect(range.body.equals(data.subarray(10, 20))).toBe(true);
    await eventually('B serves the name', async () => {
      const res = await get(`${b.baseUrl}/distfiles/shared-1.0.tar.gz`);
      return res.status === 200 && res.body.equals(data);
    });
    expect(await blobStored(a, h)).toBe(true);
  });

  it('honours on B a re-point made on A within seconds', async () => {
    const { a, b } = await pair();
    const v1 = bytes(10_000, 902);
    const v2 = bytes(12_000, 903);
    expect((await put(a.baseUrl, '/api/v1/distfiles/moving-1.0.tar.gz', v1)).status).toBe(201);
    await eventually('B serves v1', async () => (await get(`${b.baseUrl}/distfiles/moving-1.0.tar.gz`)).body.equals(v1));
    expect((await put(a.baseUrl, '/api/v1/distfiles/moving-1.0.tar.gz', v2)).status).toBe(201);
    await eventually('B serves v2 after the re-point', async () => (await get(`${b.baseUrl}/distfiles/moving-1.0.tar.gz`)).body.equals(v2));
  });

  it('stops serving on B a blob the verify CLI quarantined through A, within seconds', async () => {
    const { a, b } = await pair();
    const data = bytes(50_000, 904);
    const h = sha512(data);
    expect((await put(a.baseUrl, '/api/v1/distfiles/rotting-1.0.tar.gz', data)).status).toBe(201);
    // B has served it, so it knows the hash: the quarantine must reach its cache, not just the database.
    expect((await get(byHash(b.baseUrl, h))).status).toBe(200);
    await damageBlob(a, h, Buffer.alloc(data.length, 0x55));
    const verify = await runCli(['verify'], { FASTPULL_DATA_DIR: a.dataDir });
    expect(verify.stdout, verify.stderr).toMatch(/^corrupt: 1$/m);
    expect((await get(byHash(a.baseUrl, h))).status).toBe(404);
    await eventually('B refuses the quarantined blob', async () => (await get(byHash(b.baseUrl, h))).status === 404);
    expect((await get(`${b.baseUrl}/distfiles/rotting-1.0.tar.gz`)).status).toBe(404);
  });

  it('refuses on B a token revoked through A on the very next request', async () => {
    const { a, b } = await pair();
    const created = await runCli(['token', 'create', '--name', 'reader', '--scope', 'read-api'], { FASTPULL_DATA_DIR: a.dataDir });
    expect(created.code, created.stderr).toBe(0);
    const secret = created.stdout.trimEnd().split('\n').pop()!;
    expect((await put(a.baseUrl, '/api/v1/distfiles/tok-1.0.tar.gz', 'x')).status).toBe(201);
    const asReader = { authorization: `Bearer ${secret}` };
    expect((await get(`${b.baseUrl}/api/v1/distfiles/tok-1.0.tar.gz`, asReader)).status).toBe(200);
    const revoked = await runCli(['token', 'revoke', 'reader'], { FASTPULL_DATA_DIR: a.dataDir });
    expect(revoked.code, revoked.stderr).toBe(0);
    expect((await get(`${b.baseUrl}/api/v1/distfiles/tok-1.0.tar.gz`, asReader)).status).toBe(403);
    expect((await get(`${a.baseUrl}/api/v1/distfiles/tok-1.0.tar.gz`, asReader)).status).toBe(403);
  });

  it('runs gc once when two start at once: every unreferenced blob removed exactly once', async () => {
    const { a, b, target } = await pair();
    const hashes: string[] = [];
    for (let i = 0; i < 3; i++) {
      const data = bytes(20_000, 910 + i);
      hashes.push(sha512(data));
      expect((await put(a.baseUrl, `/api/v1/distfiles/gone-${i}.tar.gz`, data)).status).toBe(201);
      const del = await request(`${a.baseUrl}/api/v1/distfiles/gone-${i}.tar.gz`, { method: 'DELETE', headers: AUTH });
      await del.body.dump();
      expect(del.statusCode).toBe(200);
    }
    const kept = bytes(20_000, 919);
    expect((await put(a.baseUrl, '/api/v1/distfiles/kept-1.0.tar.gz', kept)).status).toBe(201);
    const [first, second] = await Promise.all([
      runCli(['gc', '--grace', '0'], { FASTPULL_DATA_DIR: a.dataDir }),
      runCli(['gc', '--grace', '0'], { FASTPULL_DATA_DIR: b.dataDir }),
    ]);
    const removed = [first, second].flatMap((r) => [...r.stdout.matchAll(/^removed ([0-9a-f]{128}) /gm)].map((m) => m[1]));
    expect(removed.sort(), `${first.stdout}${first.stderr}\n---\n${second.stdout}${second.stderr}`).toEqual([...hashes].sort());
    expect(await countRows({ dataDir: a.dataDir, backend: target }, 'audit_log', "action = 'gc.remove'")).toBe(hashes.length);
    for (const h of hashes) expect((await get(byHash(b.baseUrl, h))).status).toBe(404);
    expect(await storedBlobs({ dataDir: a.dataDir, backend: target })).toEqual([shardedPath(sha512(kept))]);
  });

  it('runs the background scrub in one replica at a time: the pass verifies every byte once', async () => {
    const target = await freshTarget(services);
    targets.push(target);
    const writer = await replica(target);
    let total = 0;
    for (let i = 0; i < 4; i++) {
      const data = bytes(1024 * 1024 + i, 920 + i);
      total += data.length;
      expect((await put(writer.baseUrl, `/api/v1/distfiles/scrubbed-${i}.tar.gz`, data)).status).toBe(201);
    }
    await stopProcess(writer);
    // A slow pass (4 MiB at 256 KiB/s) that B's start falls into, and a rest longer than the test: whatever B
    // verified would be a second, concurrent pass.
    const env = { FASTPULL_SCRUB_BYTES_PER_SECOND: String(256 * 1024), FASTPULL_SCRUB_PAUSE_SECONDS: '3600' };
    const a = await replica(target, env);
    const ours = { dataDir: a.dataDir, backend: target };
    const advisoryLocks = () =>
      countRows(ours, 'pg_locks', "locktype = 'advisory' AND granted AND database = (SELECT oid FROM pg_database WHERE datname = current_database())");
    await eventually('A holds the scrub lock', async () => (await advisoryLocks()) > 0);
    const b = await replica(target, env);
    const verifiedBytes = async () => {
      const text = await (await request(`${b.baseUrl}/metrics`)).body.text();
      return Number(/^fastpull_verified_bytes_total (\d+)/m.exec(text)?.[1] ?? NaN);
    };
    await eventually('the pass over every blob', async () => (await verifiedBytes()) >= total, 600);
    expect(await verifiedBytes()).toBe(total);
  });

  it('claims each fetch-job item once across replicas', async () => {
    const items = Array.from({ length: 12 }, (_, i) => bytes(30_000 + i, 930 + i));
    const up = await startUpstream(Object.fromEntries(items.map((d, i) => [`/item-${i}.tgz`, serve(d, { chunkSize: 5_000, delayMs: 20 })])));
    upstreams.push(up);
    const { a, b } = await pair({ FASTPULL_FETCH_ALLOW_CIDRS: '127.0.0.0/8', FASTPULL_FETCH_CONCURRENCY: '4' });
    const submit = await request(`${a.baseUrl}/api/v1/fetches`, {
      method: 'POST',
      headers: { ...AUTH, 'content-type': 'application/json' },
      body: JSON.stringify({ items: items.map((d, i) => ({ url: `${up.url}/item-${i}.tgz`, filename: `item-${i}.tgz`, sha512: sha512(d) })) }),
    });
    const job = (await submit.body.json()) as { id: string };
    expect(submit.statusCode).toBe(202);
    let final: any;
    await eventually(
      'every item settled',
      async () => {
        final = await (await request(`${b.baseUrl}/api/v1/fetches/${job.id}`, { headers: AUTH })).body.json();
        return final.counts.done + final.counts.failed === final.counts.total;
      },
      600,
    );
    expect(final.state).toBe('done');
    for (let i = 0; i < items.length; i++) expect(up.count(`/item-${i}.tgz`), `item ${i}`).toBe(1);
    for (let i = 0; i < items.length; i++) expect((await get(`${b.baseUrl}/distfiles/item-${i}.tgz`)).body.equals(items[i]!)).toBe(true);
  });

  it('makes one upstream request for 100 concurrent pull-through misses spread over both replicas', async () => {
    const data = bytes(300_000, 940);
    const h = sha512(data);
    const p = `/distfiles/${shardedPath(h)}`;
    const up = await startUpstream({ [p]: serve(data, { headerDelayMs: 300, chunkSize: 30_000, delayMs: 5 }) });
    upstreams.push(up);
    const { a, b } = await pair({
      FASTPULL_PULL_THROUGH: 'true',
      FASTPULL_UPSTREAMS: `fastpull=${up.url}`,
      FASTPULL_FETCH_ALLOW_CIDRS: '127.0.0.0/8',
    });
    const results = await Promise.all(Array.from({ length: 100 }, (_, i) => get(byHash(i % 2 === 0 ? a.baseUrl : b.baseUrl, h))));
    for (const r of results) {
      expect(r.status).toBe(200);
      expect(sha512(r.body)).toBe(h);
    }
    expect(up.count(p)).toBe(1);
  });

  it('leaves nothing visible and no multipart upload behind when A is killed mid-upload', async () => {
    const { target, a, b } = await pair();
    const data = bytes(12 * 1024 * 1024, 950);
    const h = sha512(data);
    let release: () => void = () => undefined;
    const never = new Promise<void>((r) => (release = r));
    async function* body() {
      // Past lib-storage's 5 MiB part: a multipart upload at the final key is under way when A dies.
      yield data.subarray(0, 8 * 1024 * 1024);
      await never;
      yield data.subarray(8 * 1024 * 1024);
    }
    const pending = put(a.baseUrl, `/api/v1/distfiles/killed-1.0.tar.gz?sha512=${h}`, body()).catch((err: unknown) => err);
    await eventually('a multipart upload under way', async () => (await listMultipartUploads(target)).length > 0);
    await stopProcess(a, 'SIGKILL');
    release();
    await pending;
    expect((await get(byHash(b.baseUrl, h))).status).toBe(404);
    expect((await get(`${b.baseUrl}/distfiles/killed-1.0.tar.gz`)).status).toBe(404);
    expect(await blobStored({ dataDir: b.dataDir, backend: target }, h)).toBe(false);
    // Another replica cannot tell a dead writer's upload from a live one by its start: a live one keeps adding
    // parts. Once its newest part is older than FASTPULL_S3_ABANDONED_UPLOAD_SECONDS, a replica's start-up sweep
    // reclaims it; before that, the sweep leaves it alone.
    await replica(target, { FASTPULL_S3_ABANDONED_UPLOAD_SECONDS: '3600' });
    expect(await listMultipartUploads(target)).toHaveLength(1);
    await new Promise((r) => setTimeout(r, 2_500));
    await replica(target, { FASTPULL_S3_ABANDONED_UPLOAD_SECONDS: '2' });
    expect(await listMultipartUploads(target)).toEqual([]);
  });
});
