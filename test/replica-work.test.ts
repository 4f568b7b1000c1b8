import { rm } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FetchJobStore, type FetchItemRow, type FetchJobQueue, type NewItem } from '../src/db/fetch-jobs.js';
import { DistfileIndex } from '../src/db/index.js';
import { databaseFile, openDatabase, type DB } from '../src/db/open.js';
import { connectPostgres, migratePostgres, type Sql } from '../src/db/postgres-index.js';
import { PgFlightLock } from '../src/db/postgres/flights.js';
import { PgUploadHolds } from '../src/db/postgres/holds.js';
import { PgFetchJobs } from '../src/db/postgres/jobs.js';
import { UploadHolds, type UploadHoldArea } from '../src/db/upload-holds.js';
import { FetchJobs } from '../src/ingest/fetch-jobs.js';
import { Ingest } from '../src/ingest/ingest.js';
import { PullThrough, type PullFlight } from '../src/ingest/pull-through.js';
import { StorageGuard } from '../src/maintenance/watermark.js';
import { BlobStore } from '../src/store/blob-store.js';
import { Fetcher } from '../src/upstream/fetcher.js';
import { Mirror } from '../src/upstream/mirrors.js';
import { UpstreamStats } from '../src/upstream/stats.js';
import { postgresMissing, startPostgres, type Postgres } from './helpers/postgres.js';
import { makeDataDir } from './helpers/server.js';
import { skipWithoutService } from './helpers/services.js';
import { bytes, LOOPBACK_CIDRS, sha512, sleep, startUpstream, type Upstream } from './helpers/upstream.js';

/**
 * Work that replicas sharing one index must split between them, or hold together: fetch-job claims, upload
 * holds against the watermark, pull-through single flight. Each "replica" here has its own connection (a
 * SQLite handle, or a PostgreSQL pool) to one index, as separate processes or machines would.
 */

const skipPg = skipWithoutService('PostgreSQL', postgresMissing());
let pg: Postgres | undefined;
let databases = 0;
const cleanup: (() => Promise<void>)[] = [];

afterAll(async () => {
  for (const fn of cleanup.reverse()) await fn().catch(() => undefined);
  await pg?.stop();
});

interface Replica {
  jobs: FetchJobQueue;
  holds: UploadHoldArea;
  /** The replica's process dies: it renews nothing any more (PostgreSQL), its pid no longer runs (SQLite). */
  kill(): Promise<void>;
}

interface Shared {
  a: Replica;
  b: Replica;
  /** Records a stored blob of `size` bytes, as an ingest on any replica would. */
  storeBlob(size: number): Promise<void>;
}

/** Short leases so a dead replica's work is taken back within a test; renewals come 4 times per lease. */
const LEASE_MS = 1_500;

async function sqliteShared(): Promise<Shared> {
  const dir = await makeDataDir();
  const [dbA, dbB] = [openDatabase(databaseFile(dir)), openDatabase(databaseFile(dir))] as [DB, DB];
  const running = new Set([1_000_001, 1_000_002]);
  cleanup.push(async () => {
    dbA.close();
    dbB.close();
    await rm(dir, { recursive: true, force: true });
  });
  const replica = (db: DB, pid: number): Replica => ({
    jobs: new FetchJobStore(db),
    holds: new UploadHolds(db, pid, (p) => running.has(p)),
    kill: async () => void running.delete(pid),
  });
  let seed = 0;
  return {
    a: replica(dbA, 1_000_001),
    b: replica(dbB, 1_000_002),
    async storeBlob(size) {
      const h = sha512(`blob ${++seed}`);
      dbA.prepare('INSERT INTO blobs (sha512, blake2b, sha256, size, ingested_at) VALUES (?, ?, ?, ?, 0)').run(h, h, h.slice(0, 64), size);
    },
  };
}

async function postgresShared(): Promise<Shared> {
  const url = await pg!.createDatabase(`replicas_${++databases}`);
  const pools = [connectPostgres(url, { max: 3 }), connectPostgres(url, { max: 3 })] as [Sql, Sql];
  await migratePostgres(pools[0]);
  const ended = new Set<Sql>();
  const end = async (sql: Sql) => {
    if (ended.has(sql)) return;
    ended.add(sql);
    await sql.end({ timeout: 1 });
  };
  cleanup.push(async () => {
    for (const sql of pools) await end(sql);
  });
  const replica = (sql: Sql, name: string): Replica => ({
    jobs: new PgFetchJobs(sql, name, LEASE_MS),
    holds: new PgUploadHolds(sql, name, LEASE_MS),
    kill: () => end(sql),
  });
  let seed = 0;
  return {
    a: replica(pools[0], 'replica-a'),
    b: replica(pools[1], 'replica-b'),
    async storeBlob(size) {
      const h = sha512(`blob ${++seed}`);
      await pools[0]`INSERT INTO blobs (sha512, blake2b, sha256, size, ingested_at) VALUES (${h}, ${h}, ${h.slice(0, 64)}, ${size}, 0)`;
    },
  };
}

const items = (n: number): NewItem[] =>
  Array.from({ length: n }, (_, i) => ({ url: `http://upstream.invalid/f${i}.tgz`, mirrors: [], filename: `f${i}.tgz` }));

/** Asks until `probe` says yes; a bounded wait for something another process does on its own schedule. */
async function until(probe: () => Promise<boolean>, what: string, tries = 200): Promise<void> {
  for (let i = 0; i < tries; i++) {
    if (await probe()) return;
    await sleep(50);
  }
  throw new Error(`never happened: ${what}`);
}

/** What an admission comes to: 'admitted' or the error code (SQLite throws at once, PostgreSQL rejects). */
const refusal = (admission: () => unknown) =>
  Promise.resolve()
    .then(admission)
    .then(
      () => 'admitted',
      (err: { code?: string }) => err.code ?? String(err),
    );

describe.each([
  { engine: 'sqlite', open: sqliteShared, skip: false },
  { engine: 'postgres', open: postgresShared, skip: skipPg },
])('replicas sharing one $engine index', ({ engine, open, skip }) => {
  beforeAll(async () => {
    if (!skip && engine === 'postgres') pg ??= await startPostgres();
  }, 60_000);

  it.skipIf(skip)('two replicas claiming at once take each fetch item exactly once; both read the same outcomes', async () => {
    const { a, b } = await open();
    await a.jobs.create('job-1', items(40), 'spider');
    // Both claim at the same moment, round after round, until neither gets anything: each round races the two
    // (a replica left to drain alone on a busy machine would take everything and prove nothing).
    const byA: FetchItemRow[] = [];
    const byB: FetchItemRow[] = [];
    for (;;) {
      const [fromA, fromB] = await Promise.all([a.jobs.claim(3), b.jobs.claim(3)]);
      byA.push(...fromA);
      byB.push(...fromB);
      if (fromA.length === 0 && fromB.length === 0) break;
    }
    expect(byA.length).toBeGreaterThan(0);
    expect(byB.length).toBeGreaterThan(0);
    expect([...byA, ...byB].map((r) => r.idx).sort((x, y) => x - y)).toEqual(Array.from({ length: 40 }, (_, i) => i));
    expect(await b.jobs.claim(5)).toEqual([]);
    expect((await b.jobs.items('job-1')).every((r) => r.state === 'downloading' && r.attempts === 1)).toBe(true);

    const h = sha512('f0');
    await a.jobs.done(byA[0]!, { size: 2, sha512: h, blake2b: h, sha256: h.slice(0, 64) }, 'http://upstream.invalid/f0.tgz');
    await b.jobs.fail(byB[0]!, 'upstream said 404');
    await a.jobs.rememberUrl('http://upstream.invalid/f0.tgz', h);
    const rows = new Map((await b.jobs.items('job-1')).map((r) => [r.idx, r]));
    expect(rows.get(byA[0]!.idx)).toMatchObject({ state: 'done', sha512: h, size: 2 });
    expect(rows.get(byB[0]!.idx)).toMatchObject({ state: 'failed', reason: 'upstream said 404' });
    expect(await b.jobs.urlHash('http://upstream.invalid/f0.tgz')).toBe(h);
    expect(await b.jobs.urlHash('http://upstream.invalid/never')).toBeUndefined();
    expect((await b.jobs.job('job-1'))?.created_by).toBe('spider');
  });

  it.skipIf(skip)('holds taken through two replicas keep the watermark, for declared and growing uploads', async () => {
    const { a, b, storeBlob } = await open();
    await storeBlob(40);
    const guards = [new StorageGuard(a.holds, 100), new StorageGuard(b.holds, 100)];
    // 20 uploads of 10 bytes, alternating replicas, all at once: 60 bytes of room.
    const leases = await Promise.all(Array.from({ length: 20 }, (_, i) => Promise.resolve().then(() => guards[i % 2]!.admit(10)).catch(() => undefined)));
    const admitted = leases.filter((l) => l !== undefined);
    expect(admitted).toHaveLength(6);
    expect(await guards[1]!.bytesHeld()).toBe(60);
    // Full to the byte: checks still pass, but not one more byte is admitted.
    expect(await refusal(() => guards[0]!.assertAccepting())).toBe('admitted');
    expect(await refusal(() => guards[0]!.admit(1))).toBe('INSUFFICIENT_STORAGE');
    for (const lease of admitted) lease.release();
    await until(async () => (await guards[0]!.bytesHeld()) === 0, 'holds released');

    // An upload of unknown size holds what has arrived; the other replica sees it at once.
    const growing = (await guards[0]!.admit(undefined))!;
    await growing.grow(30);
    expect(await refusal(() => guards[1]!.admit(31))).toBe('INSUFFICIENT_STORAGE');
    expect(await refusal(() => growing.grow(61))).toBe('INSUFFICIENT_STORAGE');
    const fits = (await guards[1]!.admit(30))!;
    expect(await guards[0]!.bytesHeld()).toBe(60);
    growing.release();
    fits.release();
  });

  it.skipIf(skip)("a dead replica's holds free their room; a live replica's holds stay", async () => {
    const { a, b, storeBlob } = await open();
    await storeBlob(40);
    const onA = new StorageGuard(a.holds, 100);
    const onB = new StorageGuard(b.holds, 100);
    const held = (await onA.admit(50))!;
    expect(await refusal(() => onB.admit(50))).toBe('INSUFFICIENT_STORAGE');
    // Longer than a lease: a live replica renews its holds.
    await sleep(2 * LEASE_MS);
    expect(await refusal(() => onB.admit(50))).toBe('INSUFFICIENT_STORAGE');
    await a.kill();
    let lease: Awaited<ReturnType<StorageGuard['admit']>>;
    await until(async () => {
      lease = await Promise.resolve()
        .then(() => onB.admit(50))
        .catch(() => undefined);
      return lease !== undefined;
    }, "the dead replica's hold to be reclaimed");
    expect(await onB.bytesHeld()).toBe(50);
    lease!.release();
    held.release();
  });
});

describe.skipIf(skipPg)('PostgreSQL: work in flight across replicas', () => {
  beforeAll(async () => {
    pg ??= await startPostgres();
  }, 60_000);

  async function pools(n: number): Promise<Sql[]> {
    const url = await pg!.createDatabase(`flight_${++databases}`);
    const all = Array.from({ length: n }, () => connectPostgres(url, { max: 3 }));
    await migratePostgres(all[0]!);
    cleanup.push(async () => {
      for (const sql of all) await sql.end({ timeout: 1 });
    });
    return all;
  }

  /** What two replicas share besides the database: the blobs and their index (the bucket, here a directory). */
  async function sharedStore() {
    const dir = await makeDataDir();
    const store = new BlobStore(dir, { reserveBytes: 0 });
    await store.init();
    const db = openDatabase(path.join(dir, 'index.sqlite'));
    cleanup.push(async () => {
      db.close();
      await rm(dir, { recursive: true, force: true });
    });
    return { store, index: new DistfileIndex(db) };
  }

  const fetcherFor = (stats: UpstreamStats) => {
    const fetcher = new Fetcher({
      connectTimeoutMs: 5_000,
      idleTimeoutMs: 30_000,
      maxRedirects: 5,
      retries: 0,
      concurrency: 8,
      perHostConcurrency: 8,
      stats,
      allowCidrs: LOOPBACK_CIDRS,
    });
    cleanup.push(() => fetcher.close());
    return fetcher;
  };

  async function upstream(routes: Parameters<typeof startUpstream>[0]): Promise<Upstream> {
    const up = await startUpstream(routes);
    cleanup.push(() => up.close());
    return up;
  }

  it("a replica leaves the items a live replica is downloading alone, and takes back those of a dead one", async () => {
    const [sqlA, sqlB] = await pools(2);
    const a = new PgFetchJobs(sqlA!, 'replica-a', LEASE_MS);
    const b = new PgFetchJobs(sqlB!, 'replica-b', LEASE_MS);
    await a.create('job-1', items(2), 'spider');
    const mine = await a.claim(5);
    expect(mine.map((r) => [r.idx, r.claimed_by])).toEqual([[0, 'replica-a'], [1, 'replica-a']]);
    // Twice a lease, renewed as a live runner does: B starting (or polling) takes nothing.
    for (let i = 0; i < 8; i++) {
      await sleep(LEASE_MS / 4);
      await a.renew(mine);
      expect(await b.requeueInterrupted()).toBe(0);
    }
    expect(await b.claim(5)).toEqual([]);
    // A stops renewing (it died): once the lease has run out, B puts the items back and claims them.
    await until(async () => (await b.requeueInterrupted()) === 2, "A's lease to run out");
    const taken = await b.claim(5);
    expect(taken.map((r) => [r.idx, r.claimed_by, r.attempts])).toEqual([[0, 'replica-b', 2], [1, 'replica-b', 2]]);
    // A coming back to life cannot hand back what is no longer its own.
    await a.requeue(mine[0]!);
    expect((await b.items('job-1')).map((r) => [r.state, r.claimed_by])).toEqual([['downloading', 'replica-b'], ['downloading', 'replica-b']]);
  });

  it('an upload of unknown size is stopped mid-body when PostgreSQL refuses its growing hold; nothing is stored', async () => {
    const [sql] = await pools(1);
    const shared = await sharedStore();
    const MiB = 1024 * 1024;
    const guard = new StorageGuard(new PgUploadHolds(sql!, 'replica-a', LEASE_MS), 10 * MiB);
    const ingest = new Ingest(shared.store, shared.index);
    const body = (mib: number, seed: number) =>
      (async function* () {
        for (let i = 0; i < mib; i++) yield Buffer.alloc(MiB, seed + i);
      })();
    const tooBig = (await guard.admit(undefined))!;
    await expect(ingest.ingest(body(12, 1), { lease: tooBig, maxBytes: 1e9 })).rejects.toMatchObject({ code: 'INSUFFICIENT_STORAGE' });
    tooBig.release();
    expect(await shared.store.temps()).toEqual([]);
    await until(async () => (await guard.bytesHeld()) === 0, 'the refused hold to go');
    // One that fits is stored, and its hold gives way to the stored bytes.
    const fits = (await guard.admit(undefined))!;
    const { digests } = await ingest.ingest(body(3, 50), { lease: fits, maxBytes: 1e9, filename: 'fits.tgz' });
    fits.release();
    expect(digests.size).toBe(3 * MiB);
    expect(shared.index.servableByName('fits.tgz')?.sha512).toBe(digests.sha512);
    await until(async () => (await guard.bytesHeld()) === 0, 'the hold of the stored upload to go');
  });

  it('100 concurrent misses spread over two replicas cause one upstream fetch; the other replica serves the stored blob', async () => {
    const [sqlA, sqlB] = await pools(2);
    const shared = await sharedStore();
    const data = bytes(300_000, 9);
    let open!: () => void;
    const gate = new Promise<void>((resolve) => (open = resolve));
    const up = await upstream({
      '/dist/big.tgz': async (_req, res) => {
        await gate;
        res.writeHead(200, { 'content-length': data.length }).end(data);
      },
    });
    const replica = (sql: Sql, name: string) => {
      const stats = new UpstreamStats();
      const lock = new PgFlightLock(sql, name);
      const pull = new PullThrough({
        ingest: new Ingest(shared.store, shared.index),
        fetcher: fetcherFor(stats),
        mirrors: [new Mirror({ kind: 'flat', url: `${up.url}/dist` }, { threshold: 5, cooldownMs: 60_000 })],
        stats,
        negativeCacheSeconds: 60,
        maxBytes: 1e9,
        lock,
      });
      cleanup.push(async () => {
        await pull.close();
        await lock.close();
      });
      return pull;
    };
    const replicas = [replica(sqlA!, 'replica-a'), replica(sqlB!, 'replica-b')];
    const target = { kind: 'name' as const, filename: 'big.tgz', form: 'flat' as const };
    // Every request has its flight (owner or follower) before the upstream answers a byte.
    const flights = await Promise.all(Array.from({ length: 100 }, (_, i) => replicas[i % 2]!.flight(target) as Promise<PullFlight>));
    open();
    const results = await Promise.all(flights.map((f) => f.result));
    expect(up.count('/dist/big.tgz')).toBe(1);
    // The owner's requests get the digests, the other replica's hear that the blob is stored.
    const owners = results.filter((r) => typeof r === 'object');
    expect(owners).toHaveLength(50);
    expect(owners.every((r) => (r as { sha512: string }).sha512 === sha512(data))).toBe(true);
    expect(results.filter((r) => r === true)).toHaveLength(50);
    expect(shared.index.servableByName('big.tgz')?.sha512).toBe(sha512(data));

    // A request that missed just before the commit asks for the key after the flight ended: it becomes the owner,
    // finds the blob stored, and downloads nothing.
    const late = await replicas[1]!.flight(target)!;
    expect(await late.result).toBe(true);
    expect(up.count('/dist/big.tgz')).toBe(1);
  });

  it('a flight whose owner dies is given up by its waiters, and the next miss takes it over', async () => {
    const [sqlDead, sqlB] = await pools(2);
    const dead = new PgFlightLock(sqlDead!, 'dead', 600, 50);
    const live = new PgFlightLock(sqlB!, 'live', 600, 50);
    cleanup.push(() => live.close());
    // A release is heard by the waiters at once, with its outcome.
    const first = await dead.acquire('n:one.tgz');
    const waiting = await live.acquire('n:one.tgz');
    expect([first.owner, waiting.owner]).toEqual([true, false]);
    if (first.owner) first.release(true);
    expect(!waiting.owner && (await waiting.outcome)).toBe(true);

    const stranded = await dead.acquire('n:two.tgz');
    const follower = await live.acquire('n:two.tgz');
    expect([stranded.owner, follower.owner]).toEqual([true, false]);
    // The owner's process goes: no release, no renewal.
    await dead.close();
    await sqlDead!.end({ timeout: 0 });
    expect(!follower.owner && (await follower.outcome)).toBe(false);
    expect((await live.acquire('n:two.tgz')).owner).toBe(true);
  });

  it('a job queued on one replica is run by another, and a dead runner’s items are finished by a survivor', async () => {
    const [sqlA, sqlB, sqlDead] = await pools(3);
    const shared = await sharedStore();
    const files = [bytes(5000, 1), bytes(6000, 2), bytes(7000, 3)];
    const up = await upstream(
      Object.fromEntries(files.map((f, i) => [`/f${i}.tgz`, (_req, res) => void res.writeHead(200, { 'content-length': f.length }).end(f)])),
    );
    const runner = (jobs: FetchJobQueue, concurrency: number) => {
      const stats = new UpstreamStats();
      const r = new FetchJobs({
        ingest: new Ingest(shared.store, shared.index),
        jobs,
        fetcher: fetcherFor(stats),
        stats,
        concurrency,
        maxBytes: 1e9,
      });
      cleanup.push(() => r.stop());
      return r;
    };
    const queueA = new PgFetchJobs(sqlA!, 'replica-a', LEASE_MS);
    const queueB = new PgFetchJobs(sqlB!, 'replica-b', LEASE_MS);
    // Replica A takes requests but runs no downloads (all its slots busy, say); B runs them.
    const onA = runner(queueA, 0);
    const onB = runner(queueB, 2);
    onA.start();
    onB.start();
    let heard!: () => void;
    const told = new Promise<void>((resolve) => (heard = resolve));
    cleanup.push(await queueB.watch(() => heard()));
    const job = await onA.submit({ items: files.map((_, i) => ({ url: `${up.url}/f${i}.tgz`, filename: `f${i}.tgz` })) }, 'spider');
    await told;
    await until(async () => (await onA.view(job.id)).state === 'done', 'the job to be done by replica B');
    expect(files.map((f, i) => shared.index.servableByName(`f${i}.tgz`)?.sha512)).toEqual(files.map((f) => sha512(f)));

    // A replica claims a job's items and dies before finishing them: its lease runs out, a survivor takes them over.
    await onB.stop();
    await queueA.create('orphaned', [{ url: `${up.url}/f0.tgz`, mirrors: [], filename: 'again.tgz' }], 'spider');
    expect(await new PgFetchJobs(sqlDead!, 'dead', LEASE_MS).claim(10)).toHaveLength(1);
    await sqlDead!.end({ timeout: 0 });
    // Still leased when the survivor starts: not taken back yet, only once the lease has run out.
    const survivor = runner(queueB, 2);
    survivor.start();
    await until(async () => (await queueA.items('orphaned'))[0]?.state === 'done', "the dead replica's item to be finished by the survivor");
    expect((await queueA.items('orphaned'))[0]).toMatchObject({ attempts: 2, claimed_by: null, lease_until: null });
    expect(shared.index.servableByName('again.tgz')?.sha512).toBe(sha512(files[0]!));
  });

  it('a replica stopping mid-download hands its items straight back: another replica resumes them without waiting for a lease', async () => {
    const [sqlA, sqlB] = await pools(2);
    const shared = await sharedStore();
    const data = bytes(4000, 5);
    let started!: () => void;
    const downloading = new Promise<void>((resolve) => (started = resolve));
    const up = await upstream({
      '/slow.tgz': (_req, res, hit) => {
        res.writeHead(200, { 'content-length': data.length });
        if (hit > 1) return void res.end(data);
        // The first download never ends: it is cut off by its replica's stop.
        res.write(data.subarray(0, 100));
        started();
        return new Promise<void>(() => undefined);
      },
    });
    const runner = (jobs: FetchJobQueue) => {
      const stats = new UpstreamStats();
      return new FetchJobs({ ingest: new Ingest(shared.store, shared.index), jobs, fetcher: fetcherFor(stats), stats, concurrency: 1, maxBytes: 1e9 });
    };
    // Leases far longer than the test: only the hand-back can get the item to B in time.
    const queueA = new PgFetchJobs(sqlA!, 'replica-a', 600_000);
    const onA = runner(queueA);
    onA.start();
    const job = await onA.submit({ url: `${up.url}/slow.tgz`, filename: 'slow.tgz' }, 'spider');
    await downloading;
    const onB = runner(new PgFetchJobs(sqlB!, 'replica-b', 600_000));
    cleanup.push(() => onB.stop());
    onB.start();
    // B's start-up round finds nothing to claim (A holds the item); from then on only news can bring it work.
    await until(async () => (await queueA.items(job.id))[0]?.state === 'downloading', 'A to hold the item');
    await sleep(500);
    await onA.stop();
    await until(async () => (await onB.view(job.id)).state === 'done', 'replica B to finish the item A handed back');
    expect((await queueA.items(job.id))[0]).toMatchObject({ attempts: 2, source: `${up.url}/slow.tgz` });
    expect(shared.index.servableByName('slow.tgz')?.sha512).toBe(sha512(data));
  });
});
