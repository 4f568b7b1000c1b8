import { PutObjectCommand } from '@aws-sdk/client-s3';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openOriginIndex, type OriginIndex } from '../src/db/origin-index.js';
import { collect, gcCandidates } from '../src/maintenance/gc.js';
import { Scrubber, scrubCounters } from '../src/maintenance/scrub.js';
import { BlobStore } from '../src/store/blob-store.js';
import { LocalBlobStorage } from '../src/store/local-storage.js';
import { S3BlobStorage } from '../src/store/s3-store.js';
import type { BlobStorage } from '../src/store/storage.js';
import { runCli } from './helpers/cli.js';
import { blake2b, pseudoRandomBytes, sha256, sha512 } from './helpers/core.js';
import { postgresMissing, startPostgres, type Postgres } from './helpers/postgres.js';
import { skipWithoutService } from './helpers/services.js';
import { startSwift, swiftMissing, type Swift } from './helpers/swift.js';

/**
 * The maintenance commands (verify, fsck, gc, reindex, stats) run as real child processes against each
 * combination of drivers: the embedded default (local disk + SQLite) and a real object store (Swift's S3
 * API) + a real PostgreSQL. Same assertions for both; only how a test seeds and damages blobs differs.
 */
interface Setup {
  env: Record<string, string>;
  storage: BlobStorage;
  index: OriginIndex;
  /** Runs SQL with `?` placeholders on the index, whichever engine. */
  query<T = Record<string, unknown>>(text: string, params?: unknown[]): Promise<T[]>;
  /** Replaces the stored bytes of a blob in place, as a failing disk or a stray writer would. */
  damage(sha: string, bytes: Buffer): Promise<void>;
}

interface Combination {
  name: string;
  /** Whether a cluster lock keeps a second gc out (PostgreSQL), or both run (SQLite, as before). */
  exclusive: boolean;
  skip: boolean;
  setup(): Promise<Setup>;
}

const dirs: string[] = [];
const indexes: OriginIndex[] = [];
let swift: Swift | undefined;
let pg: Postgres | undefined;
let databases = 0;
const skipS3Pg = skipWithoutService('OpenStack Swift (s3)', swiftMissing()) || skipWithoutService('PostgreSQL', postgresMissing());

async function tempDir(): Promise<string> {
  const dir = await mkdtemp(path.join(tmpdir(), 'fp-maint-'));
  dirs.push(dir);
  return dir;
}

const local: Combination = {
  name: 'local disk + SQLite',
  exclusive: false,
  skip: false,
  async setup() {
    const dataDir = await tempDir();
    const index = await openOriginIndex({ dataDir, databaseUrl: undefined, databasePoolSize: 1 });
    indexes.push(index);
    const store = new BlobStore(dataDir);
    const storage = new LocalBlobStorage(store);
    await storage.init();
    const db = index.sqlite!;
    return {
      env: { FASTPULL_DATA_DIR: dataDir },
      storage,
      index,
      async query<T>(text: string, params: unknown[] = []) {
        const stmt = db.prepare(text);
        return (stmt.reader ? stmt.all(...params) : (stmt.run(...params), [])) as T[];
      },
      async damage(sha, bytes) {
        await writeFile(store.pathOf(sha), bytes);
      },
    };
  },
};

const s3Postgres: Combination = {
  name: 's3 (Swift) + PostgreSQL',
  exclusive: true,
  skip: skipS3Pg,
  async setup() {
    const dataDir = await tempDir();
    const bucket = await swift!.createBucket('maint');
    const databaseUrl = await pg!.createDatabase(`maint_${++databases}`);
    const index = await openOriginIndex({ dataDir, databaseUrl, databasePoolSize: 2 });
    indexes.push(index);
    const storage = new S3BlobStorage({ client: swift!.client, bucket, prefix: 'origin', spoolDir: path.join(dataDir, 'spool') });
    await storage.init();
    const sql = index.postgres!;
    return {
      env: {
        FASTPULL_DATA_DIR: dataDir,
        FASTPULL_STORAGE: `s3://${bucket}/origin`,
        FASTPULL_DATABASE_URL: databaseUrl,
        FASTPULL_S3_FORCE_PATH_STYLE: 'true',
        AWS_ENDPOINT_URL_S3: swift!.endpoint,
        AWS_REGION: swift!.region,
        AWS_ACCESS_KEY_ID: swift!.credentials.accessKeyId,
        AWS_SECRET_ACCESS_KEY: swift!.credentials.secretAccessKey,
      },
      storage,
      index,
      async query<T>(text: string, params: unknown[] = []) {
        let n = 0;
        return [...(await sql.unsafe(text.replace(/\?/g, () => `$${++n}`), params as never[]))] as T[];
      },
      async damage(sha, bytes) {
        await swift!.client.send(new PutObjectCommand({ Bucket: bucket, Key: storage.key(sha), Body: bytes }));
      },
    };
  },
};

beforeAll(async () => {
  if (skipS3Pg) return;
  [swift, pg] = await Promise.all([startSwift(), startPostgres()]);
}, 120_000);

afterAll(async () => {
  for (const index of indexes) await index.close();
  await Promise.all([swift?.stop(), pg?.stop()]);
  for (const dir of dirs) await rm(dir, { recursive: true, force: true });
});

const DAY = 86_400_000;

/** Stores `body` and (unless `row: false`) indexes it, optionally named, as ingested `age` ms ago. */
async function seed(s: Setup, body: Buffer, options: { name?: string; age?: number; pinned?: boolean; row?: boolean } = {}): Promise<string> {
  const { digests } = await s.storage.write(Readable.from([body]));
  if (options.row === false) return digests.sha512;
  await insertRow(s, body, options);
  return digests.sha512;
}

async function insertRow(s: Setup, body: Buffer, options: { name?: string; age?: number; pinned?: boolean } = {}): Promise<string> {
  const sha = sha512(body);
  const at = Date.now() - (options.age ?? 0);
  await s.query('INSERT INTO blobs (sha512, blake2b, sha256, size, ingested_at, pinned) VALUES (?, ?, ?, ?, ?, ?)', [
    sha,
    blake2b(body),
    sha256(body),
    body.length,
    at,
    options.pinned ? 1 : 0,
  ]);
  if (options.name !== undefined) {
    await s.query('INSERT INTO names (filename, sha512, seq, first_attached_at, attached_at, attached_by) VALUES (?, ?, ?, ?, ?, ?)', [
      options.name,
      sha,
      at,
      at,
      at,
      'test',
    ]);
  }
  return sha;
}

async function row(s: Setup, sha: string): Promise<{ quarantined_at: number | null; pinned: number; verified_at: number | null } | undefined> {
  const [r] = await s.query<{ quarantined_at: number | null; pinned: number; verified_at: number | null }>(
    'SELECT quarantined_at, pinned, verified_at FROM blobs WHERE sha512 = ?',
    [sha],
  );
  return r && { quarantined_at: r.quarantined_at === null ? null : Number(r.quarantined_at), pinned: Number(r.pinned), verified_at: r.verified_at };
}

async function events(s: Setup, sha: string): Promise<string[]> {
  return (await s.query<{ type: string }>('SELECT type FROM events WHERE sha512 = ? ORDER BY id', [sha])).map((r) => r.type);
}

describe.each([local, s3Postgres])('maintenance commands on $name', (combo) => {
  it.skipIf(combo.skip)('verify re-reads every blob, quarantines one damaged in the store, announces it and exits 1', async () => {
    const s = await combo.setup();
    const good = pseudoRandomBytes(70_000, 1);
    const bad = pseudoRandomBytes(50_000, 2);
    const goodSha = await seed(s, good, { name: 'good.tar' });
    const badSha = await seed(s, bad, { name: 'bad.tar' });
    const damaged = Buffer.from(bad);
    damaged.writeUInt8(damaged.readUInt8(1234) ^ 0x01, 1234);
    await s.damage(badSha, damaged);

    const verify = await runCli(['verify'], s.env);
    expect(verify.stderr).not.toMatch(/Error:|at .*\.ts:/);
    expect(verify.code).toBe(1);
    expect(verify.stdout).toMatch(/^ok: 1$/m);
    expect(verify.stdout).toMatch(/^corrupt: 1$/m);
    expect(verify.stdout).toContain(`corrupt ${badSha}`);
    expect((await row(s, badSha))?.quarantined_at).not.toBeNull();
    expect((await row(s, goodSha))?.verified_at).not.toBeNull();
    // Out of the serving namespace (kept in the quarantine for an operator), the good one untouched.
    expect(await s.storage.stat(badSha)).toBeUndefined();
    expect((await s.storage.stat(goodSha))?.size).toBe(good.length);
    expect(await events(s, badSha)).toEqual(['blob.quarantined']);
    const audit = await s.query<{ action: string; actor: string }>('SELECT action, actor FROM audit_log WHERE sha512 = ?', [badSha]);
    expect(audit.map((a) => a.action)).toEqual(['verify.quarantine']);
    expect(audit[0]!.actor).toMatch(/^cli:/);

    // A second run finds the store clean: the damaged blob is quarantined, not looked at again.
    const again = await runCli(['verify'], s.env);
    expect(again.code).toBe(0);
    expect(again.stdout).toMatch(/^corrupt: 0$/m);
  });

  it.skipIf(combo.skip)('fsck reports a blob without a row and a row without a blob, and --repair reconciles both', async () => {
    const s = await combo.setup();
    const orphan = pseudoRandomBytes(30_000, 3);
    const lost = pseudoRandomBytes(20_000, 4);
    const fine = pseudoRandomBytes(10_000, 5);
    const shrunk = pseudoRandomBytes(9_000, 17);
    const orphanSha = await seed(s, orphan, { row: false });
    const lostSha = await insertRow(s, lost, { name: 'lost.tar' });
    await seed(s, fine, { name: 'fine.tar' });
    const shrunkSha = await seed(s, shrunk, { name: 'shrunk.tar' });
    await s.damage(shrunkSha, shrunk.subarray(0, 4_000));

    const check = await runCli(['fsck'], s.env);
    expect(check.code).toBe(1);
    expect(check.stdout).toContain(`unindexed-blob ${orphanSha}`);
    expect(check.stdout).toContain(`missing-blob ${lostSha}`);
    expect(check.stdout).toContain(`size-mismatch ${shrunkSha}: index says 9000 bytes, file has 4000`);
    expect(check.stdout).toMatch(/^issues: 3, repaired: 0, remaining: 3$/m);
    expect(await row(s, orphanSha)).toBeUndefined();

    const repair = await runCli(['fsck', '--repair'], s.env);
    expect(repair.code).toBe(0);
    expect(repair.stdout).toMatch(/^issues: 3, repaired: 3, remaining: 0$/m);
    expect((await row(s, shrunkSha))?.quarantined_at).not.toBeNull();
    expect(await s.storage.stat(shrunkSha)).toBeUndefined();
    // The orphan is indexed unpinned (gc may reclaim it); the lost row is quarantined, its name history kept.
    expect((await row(s, orphanSha))?.pinned).toBe(0);
    expect((await row(s, lostSha))?.quarantined_at).not.toBeNull();
    expect(await s.query('SELECT filename FROM names WHERE sha512 = ?', [lostSha])).toHaveLength(1);
    expect(await events(s, orphanSha)).toEqual(['blob.stored']);
    expect(await events(s, lostSha)).toEqual(['blob.quarantined']);
    expect((await runCli(['fsck'], s.env)).code).toBe(0);
  });

  it.skipIf(combo.skip)('gc removes unreferenced blobs past the grace period and keeps named, pinned and young ones', async () => {
    const s = await combo.setup();
    const old = await seed(s, pseudoRandomBytes(40_000, 6), { age: 2 * DAY });
    const named = await seed(s, pseudoRandomBytes(40_000, 7), { age: 2 * DAY, name: 'named.tar' });
    const pinned = await seed(s, pseudoRandomBytes(40_000, 8), { age: 2 * DAY, pinned: true });
    const young = await seed(s, pseudoRandomBytes(40_000, 9));

    const dry = await runCli(['gc', '--dry-run', '--grace', '3600'], s.env);
    expect(dry.code).toBe(0);
    expect(dry.stdout).toContain(`would remove ${old}`);
    expect(dry.stdout).toMatch(/^dry run: 1 blobs, 40000 bytes/m);
    expect(await s.storage.stat(old)).toBeDefined();

    const gc = await runCli(['gc', '--grace', '3600'], s.env);
    expect(gc.code).toBe(0);
    expect(gc.stdout).toContain(`removed ${old}`);
    expect(gc.stdout).toMatch(/^removed 1 blobs, 40000 bytes/m);
    expect(await s.storage.stat(old)).toBeUndefined();
    expect(await row(s, old)).toBeUndefined();
    expect(await events(s, old)).toEqual(['blob.deleted']);
    for (const kept of [named, pinned, young]) {
      expect(await s.storage.stat(kept)).toBeDefined();
      expect(await row(s, kept)).toBeDefined();
    }
  });

  it.skipIf(combo.skip)('two gc at once: with a cluster lock the second says another gc is running', async () => {
    const s = await combo.setup();
    const old = await seed(s, pseudoRandomBytes(1000, 10), { age: 2 * DAY });
    // This process holds the gc lock (as a gc on another replica would) while the command runs.
    const held = await s.index.locks.run('gc', () => runCli(['gc', '--grace', '60'], s.env));
    expect(held.ran).toBe(true);
    const second = held.ran ? held.value : undefined;
    if (combo.exclusive) {
      expect(second?.code).toBe(75);
      expect(second?.stderr).toContain('another gc is running');
      expect(await s.storage.stat(old)).toBeDefined();
      // Once the lock is free, gc runs.
      expect((await runCli(['gc', '--grace', '60'], s.env)).code).toBe(0);
    } else {
      expect(second?.code).toBe(0);
    }
    expect(await s.storage.stat(old)).toBeUndefined();
  });

  it.skipIf(combo.skip)('reindex rebuilds the blob table from the stored blobs alone, pinned and nameless', async () => {
    const s = await combo.setup();
    const a = await seed(s, pseudoRandomBytes(25_000, 11), { name: 'a.tar' });
    const b = await seed(s, pseudoRandomBytes(15_000, 12), { row: false });
    const gone = await insertRow(s, pseudoRandomBytes(5_000, 13));

    const result = await runCli(['reindex'], s.env);
    expect(result.code).toBe(0);
    expect(result.stdout).toMatch(/^indexed 2 blobs .*, 1 of them new/m);
    expect(result.stdout).toContain(`dropped ${gone}`);
    expect((await row(s, b))?.pinned).toBe(1);
    expect(await row(s, a)).toBeDefined();
    expect(await row(s, gone)).toBeUndefined();
    // Names whose blob still exists are kept.
    expect(await s.query('SELECT filename FROM names WHERE sha512 = ?', [a])).toHaveLength(1);
  });

  it.skipIf(combo.skip)('stats counts blobs, bytes, names and dedup from the index', async () => {
    const s = await combo.setup();
    const body = pseudoRandomBytes(12_345, 14);
    const sha = await seed(s, body, { name: 'one.tar' });
    await s.query('INSERT INTO names (filename, sha512, seq, first_attached_at, attached_at, attached_by) VALUES (?, ?, ?, ?, ?, ?)', [
      'two.tar',
      sha,
      Date.now() + 1,
      Date.now(),
      Date.now(),
      'test',
    ]);
    await seed(s, pseudoRandomBytes(1_000, 15), { pinned: true });

    const result = await runCli(['stats', '--json'], s.env);
    expect(result.code).toBe(0);
    const stats = JSON.parse(result.stdout) as Record<string, unknown>;
    expect(stats).toMatchObject({
      blobs: 2,
      names: 2,
      attachedNames: 2,
      attachedPairs: 2,
      pinned: 1,
      bytesStored: 13_345,
      unreferencedBlobs: 1,
      unreferencedBytes: 1_000,
      dedupSavedBytes: 12_345,
      sharedBlobs: 1,
      largest: [
        { filename: 'one.tar', sha512: sha, size: 12_345 },
        { filename: 'two.tar', sha512: sha, size: 12_345 },
      ],
    });
  });
});

describe.each([local, s3Postgres])('the maintenance area on $name', (combo) => {
  it.skipIf(combo.skip)('selects by verification time, samples, and announces a released quarantine', async () => {
    const s = await combo.setup();
    const m = s.index.maintenance.as('tester');
    const a = await insertRow(s, pseudoRandomBytes(100, 30));
    const b = await insertRow(s, pseudoRandomBytes(200, 31));
    await m.markVerified(a, 5_000);
    expect(await m.count(Number.MAX_SAFE_INTEGER)).toEqual({ blobs: 2, bytes: 300 });
    // Not verified since 6000: only b (never verified) and a (verified at 5000); since 5000: only b.
    expect((await m.page('', 6_000, 10)).length).toBe(2);
    expect((await m.page('', 5_000, 10)).map((r) => r.sha512)).toEqual([b]);
    expect(await m.count(5_000)).toEqual({ blobs: 1, bytes: 200 });
    expect((await m.sample(5)).map((r) => r.sha512).sort()).toEqual([a, b].sort());

    expect(await m.markQuarantined(b)).toBe(true);
    expect(await m.markQuarantined(b)).toBe(false);
    expect((await m.sample(5)).map((r) => r.sha512)).toEqual([a]);
    await m.clearQuarantine(b);
    await m.clearQuarantine(b);
    expect(await events(s, b)).toEqual(['blob.quarantined', 'blob.restored']);
    const [actor] = await s.query<{ actor: string }>('SELECT actor FROM events WHERE sha512 = ? LIMIT 1', [b]);
    expect(actor?.actor).toBe('tester');
  });

  it.skipIf(combo.skip)('gc deletes only what is still collectable when it gets to it', async () => {
    const s = await combo.setup();
    const m = s.index.maintenance;
    const body = pseudoRandomBytes(100, 32);
    const sha = await insertRow(s, body, { age: DAY });
    const cutoff = Date.now();
    expect((await m.gcCandidates(cutoff)).map((r) => r.sha512)).toEqual([sha]);
    // A name attached after the selection keeps it.
    await s.query('INSERT INTO names (filename, sha512, seq, first_attached_at, attached_at) VALUES (?, ?, ?, ?, ?)', ['late.tar', sha, 1, 1, 1]);
    expect(await m.deleteIfCollectable(sha, cutoff)).toBe(false);
    await s.query('UPDATE names SET detached_at = ? WHERE sha512 = ?', [Date.now(), sha]);
    expect(await m.deleteIfCollectable(sha, cutoff)).toBe(true);
    expect(await m.blobState(sha)).toBeUndefined();
    expect(await events(s, sha)).toEqual(['blob.deleted']);
  });
});

describe.each([local, s3Postgres])('gc against a concurrent re-upload on $name', (combo) => {
  it.skipIf(combo.skip)('puts the blob back when a re-upload that found it stored records its row while gc settles', async () => {
    const s = await combo.setup();
    const body = pseudoRandomBytes(20_000, 40);
    const sha = await seed(s, body, { age: DAY });
    const cutoff = Date.now();
    const running = collect(s.storage, s.index.maintenance, await gcCandidates(s.index.maintenance, cutoff), cutoff, 1500);
    // The re-upload saw the blob stored (dedup) and skipped writing; its row lands only after gc trashed the blob.
    await until(async () => (await s.storage.stat(sha)) === undefined);
    await insertRow(s, body, { name: 'again.tar' });
    const result = await running;
    expect(result.removed.map((c) => c.sha512)).toEqual([sha]);
    expect(result.restored).toEqual([sha]);
    expect((await s.storage.stat(sha))?.size).toBe(body.length);
    const back = await s.storage.read(sha);
    const chunks: Buffer[] = [];
    for await (const chunk of back!) chunks.push(chunk as Buffer);
    expect(Buffer.concat(chunks).equals(body)).toBe(true);
  });
});

describe.each([local, s3Postgres])('scrub on $name', (combo) => {
  it.skipIf(combo.skip)('runs one pass at a time across processes sharing the index, and verifies once the lock is free', async () => {
    const s = await combo.setup();
    const sha = await seed(s, pseudoRandomBytes(8_000, 16), { name: 'scrubbed.tar' });
    // The scrubber opens the index on its own, as another replica would.
    const replica = await openOriginIndex({
      dataDir: s.env.FASTPULL_DATA_DIR!,
      databaseUrl: s.env.FASTPULL_DATABASE_URL,
      databasePoolSize: 2,
    });
    indexes.push(replica);
    const scrubber = new Scrubber({
      storage: s.storage,
      maintenance: replica.maintenance,
      audit: replica.audit,
      locks: replica.locks,
      bytesPerSecond: 1024 * 1024 * 1024,
      pauseMs: 100,
    });
    const verified = async () => (await row(s, sha))?.verified_at != null;
    try {
      await s.index.locks.run('scrub', async () => {
        const passes = scrubCounters.passesCompleted;
        scrubber.start();
        // Until it has either verified the blob or stepped aside and gone to rest.
        await until(async () => (await verified()) || (scrubCounters.resting && scrubCounters.passesCompleted === passes));
        expect(await verified()).toBe(!combo.exclusive);
      });
      await until(verified);
    } finally {
      await scrubber.stop();
    }
  });
});

async function until(probe: () => Promise<boolean>): Promise<void> {
  while (!(await probe())) await new Promise((r) => setTimeout(r, 20));
}

describe.each([local, s3Postgres])('import on $name', (combo) => {
  it.skipIf(combo.skip)('copies every file into the store, verified, indexes it, and a re-run finds it all present', async () => {
    const s = await combo.setup();
    const tree = await tempDir();
    const files = { 'one-1.0.tar.gz': pseudoRandomBytes(33_000, 20), 'two-2.0.tar.xz': pseudoRandomBytes(7_000, 21) };
    for (const [name, body] of Object.entries(files)) await writeFile(path.join(tree, name), body);

    const first = await runCli(['import', tree, '--kind', 'flat'], s.env);
    expect(first.stderr).not.toMatch(/Error:|at .*\.ts:/);
    expect(first.code).toBe(0);
    expect(first.stdout).toMatch(/^ {2}imported: +2$/m);
    for (const body of Object.values(files)) expect((await s.storage.stat(sha512(body)))?.size).toBe(body.length);
    const names = await s.query<{ filename: string }>('SELECT filename FROM names WHERE detached_at IS NULL ORDER BY filename');
    expect(names.map((n) => n.filename)).toEqual(Object.keys(files));
    const audit = await s.query<{ action: string }>('SELECT action FROM audit_log');
    expect(audit.map((a) => a.action)).toEqual(['import']);

    const again = await runCli(['import', tree, '--kind', 'flat'], s.env);
    expect(again.code).toBe(0);
    expect(again.stdout).toMatch(/^ {2}already present: +2$/m);

    if (s.storage.kind === 's3') {
      // Nothing landed on local disk.
      expect(await new LocalBlobStorage(new BlobStore(s.env.FASTPULL_DATA_DIR!)).listPage()).toEqual({ hashes: [], next: undefined });
      const linked = await runCli(['import', tree, '--link'], s.env);
      expect(linked.code).toBe(2);
      expect(linked.stderr).toContain('--link needs the local store');
    }
  });
});

describe('openDataDir', () => {
  it('still refuses a missing data directory and a missing SQLite index', async () => {
    const dir = await tempDir();
    const missing = await runCli(['stats'], { FASTPULL_DATA_DIR: path.join(dir, 'nope') });
    expect(missing.code).toBe(2);
    expect(missing.stderr).toContain('does not exist');
    await mkdir(path.join(dir, 'empty'));
    const noIndex = await runCli(['stats'], { FASTPULL_DATA_DIR: path.join(dir, 'empty') });
    expect(noIndex.code).toBe(2);
    expect(noIndex.stderr).toContain('no index at');
  });
});
