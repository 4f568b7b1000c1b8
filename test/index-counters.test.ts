import { randomBytes } from 'node:crypto';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { IndexCounters, type IndexCounts } from '../src/db/counters.js';
import { listMigrations } from '../src/db/migrate.js';
import { databaseFile, openDatabase } from '../src/db/open.js';
import { runCli } from './helpers/cli.js';
import { detach, flipBit, openIndex, sha512, uploadBlob } from './helpers/integrity.js';
import { metric, parseMetrics } from './helpers/prom.js';
import { ADMIN_TOKEN, get, makeDataDir, startTestServer, type TestServer } from './helpers/server.js';

type Db = ReturnType<typeof openIndex>;

/** What the counters must equal: the full scans they replace. */
function scanned(db: Db): Omit<IndexCounts, 'verifiedBlobs' | 'verifiedBytes' | 'quarantines'> {
  const one = <T>(sql: string) => db.prepare(sql).get() as T;
  const b = one<{ n: number; bytes: number; q: number; qbytes: number; pinned: number }>(
    `SELECT count(*) AS n, coalesce(sum(size), 0) AS bytes, count(quarantined_at) AS q,
            coalesce(sum(CASE WHEN quarantined_at IS NOT NULL THEN size END), 0) AS qbytes,
            count(CASE WHEN pinned != 0 THEN 1 END) AS pinned FROM blobs`,
  );
  const n = one<{ names: number; pairs: number }>(
    `SELECT count(DISTINCT filename) AS names, count(*) AS pairs FROM names WHERE detached_at IS NULL`,
  );
  const saved = one<{ saved: number }>(
    `SELECT coalesce(sum(b.size * (r.n - 1)), 0) AS saved FROM blobs b
     JOIN (SELECT sha512, count(*) AS n FROM names WHERE detached_at IS NULL GROUP BY sha512) r ON r.sha512 = b.sha512`,
  );
  return {
    blobs: b.n,
    blobBytes: b.bytes,
    quarantinedBlobs: b.q,
    quarantinedBytes: b.qbytes,
    pinnedBlobs: b.pinned,
    attachedNames: n.names,
    attachedPairs: n.pairs,
    dedupSavedBytes: saved.saved,
  };
}

function maintained(db: Db): IndexCounts {
  return new IndexCounters(db).read()!;
}

function expectInStep(db: Db, step: string) {
  const { verifiedBlobs: _vb, verifiedBytes: _vy, quarantines: _q, ...counts } = maintained(db);
  expect(counts, step).toEqual(scanned(db));
}

async function link(baseUrl: string, filename: string, sha: string): Promise<number> {
  const res = await request(`${baseUrl}/api/v1/links`, {
    method: 'POST',
    headers: { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/json' },
    body: JSON.stringify({ filename, sha512: sha }),
  });
  await res.body.dump();
  return res.statusCode;
}

async function scrape(server: TestServer) {
  const res = await get(`${server.baseUrl}/metrics`);
  expect(res.status).toBe(200);
  return parseMetrics(res.body.toString());
}

describe('index counters kept by triggers (migration 005)', () => {
  let server: TestServer;
  let db: Db;
  const a = randomBytes(3000);
  const b = randomBytes(5000);
  const c = randomBytes(700);
  const pinnedBody = randomBytes(1234);

  beforeAll(async () => {
    server = await startTestServer();
    db = openIndex(server.dataDir);
  });
  afterAll(async () => {
    db?.close();
    await server?.stop();
  });

  it('start at zero on a fresh index', () => {
    expect(maintained(db)).toEqual({
      blobs: 0,
      blobBytes: 0,
      quarantinedBlobs: 0,
      quarantinedBytes: 0,
      pinnedBlobs: 0,
      attachedNames: 0,
      attachedPairs: 0,
      dedupSavedBytes: 0,
      verifiedBlobs: 0,
      verifiedBytes: 0,
      quarantines: 0,
    });
  });

  it('follow uploads, dedup, re-rolls, pins, links, detach and re-attach', async () => {
    expect((await server.upload('a-1.tar.gz', a)).status).toBe(201);
    expectInStep(db, 'first upload');
    expect((await server.upload('a-copy-1.tar.gz', a)).status).toBe(200);
    expect((await server.upload('a-again.tar.gz', a)).status).toBe(200);
    expectInStep(db, 'dedup');
    expect(maintained(db).dedupSavedBytes).toBe(2 * a.length);
    expect((await server.upload('a-1.tar.gz', a)).status).toBe(200);
    expectInStep(db, 'same pair again');
    expect((await server.upload('reroll.tar.gz', b)).status).toBe(201);
    expect((await server.upload('reroll.tar.gz', c)).status).toBe(201);
    expectInStep(db, 're-roll: one name, two attached hashes');
    expect(maintained(db).attachedNames).toBe(4);
    expect(maintained(db).attachedPairs).toBe(5);
    expect(await uploadBlob(server.baseUrl, pinnedBody)).toBe(201);
    expectInStep(db, 'upload by hash');
    expect(maintained(db).pinnedBlobs).toBe(1);
    expect(await link(server.baseUrl, 'pinned-named.tar.gz', sha512(pinnedBody))).toBe(200);
    expectInStep(db, 'link');
    expect(await detach(server.baseUrl, 'a-copy-1.tar.gz')).toBe(200);
    expect(await detach(server.baseUrl, 'reroll.tar.gz')).toBe(200);
    expectInStep(db, 'detach');
    expect(await link(server.baseUrl, 'a-copy-1.tar.gz', sha512(a))).toBe(200);
    expectInStep(db, 're-attach');
    expect(maintained(db)).toMatchObject({ blobs: 4, blobBytes: a.length + b.length + c.length + pinnedBody.length });
  });

  it('follow quarantine by a CLI verify in another process, and healing by re-upload', async () => {
    const before = maintained(db);
    await flipBit(server.dataDir, sha512(b), 10);
    const res = await runCli(['verify'], { FASTPULL_DATA_DIR: server.dataDir });
    expect(res.code, res.stdout + res.stderr).toBe(1);
    expectInStep(db, 'quarantined by fastpull verify');
    const after = maintained(db);
    expect(after.quarantinedBlobs).toBe(1);
    expect(after.quarantinedBytes).toBe(b.length);
    expect(after.quarantines - before.quarantines).toBe(1);
    // Three intact blobs re-hashed by the CLI count as verified; the damaged one does not.
    expect(after.verifiedBytes - before.verifiedBytes).toBe(a.length + c.length + pinnedBody.length);
    expect(after.verifiedBlobs - before.verifiedBlobs).toBe(3);

    expect((await server.upload('reroll-fixed.tar.gz', b)).status).toBe(201);
    expectInStep(db, 'healed by re-upload');
    expect(maintained(db).quarantinedBlobs).toBe(0);
  });

  it('are what the running server exports after a CLI verify in another process', async () => {
    const res = await runCli(['verify'], { FASTPULL_DATA_DIR: server.dataDir });
    expect(res.code, res.stdout + res.stderr).toBe(0);
    const counts = maintained(db);
    const s = await scrape(server);
    expect(metric(s, 'fastpull_verified_bytes_total')).toBe(counts.verifiedBytes);
    expect(metric(s, 'fastpull_verified_bytes_total')).toBeGreaterThanOrEqual(a.length + b.length + c.length + pinnedBody.length);
    expect(metric(s, 'fastpull_scrub_bytes_verified_total')).toBe(counts.verifiedBytes);
    expect(metric(s, 'fastpull_quarantines_total')).toBe(counts.quarantines);
    expect(metric(s, 'fastpull_stored_blobs')).toBe(counts.blobs);
    expect(metric(s, 'fastpull_stored_blob_bytes')).toBe(counts.blobBytes);
    expect(metric(s, 'fastpull_quarantined_blobs')).toBe(counts.quarantinedBlobs);
    expect(metric(s, 'fastpull_pinned_blobs')).toBe(counts.pinnedBlobs);
    expect(metric(s, 'fastpull_attached_names')).toBe(counts.attachedNames);
    expect(metric(s, 'fastpull_dedup_saved_bytes')).toBe(counts.dedupSavedBytes);
  });

  it('follow a CLI gc, a blob row deleted with names still attached, and a size rewritten from disk', async () => {
    // Unreferenced and unpinned: c (its only name was detached).
    const gc = await runCli(['gc', '--grace', '0'], { FASTPULL_DATA_DIR: server.dataDir });
    expect(gc.code, gc.stdout + gc.stderr).toBe(0);
    expect(db.prepare('SELECT count(*) AS n FROM blobs WHERE sha512 = ?').get(sha512(c))).toEqual({ n: 0 });
    expectInStep(db, 'fastpull gc');

    // This connection has no foreign keys on (like a hand-run sqlite3): the trigger still removes the names.
    db.prepare('DELETE FROM blobs WHERE sha512 = ?').run(sha512(a));
    expect(db.prepare('SELECT count(*) AS n FROM names WHERE sha512 = ?').get(sha512(a))).toEqual({ n: 0 });
    expectInStep(db, 'blob deleted under attached names');

    db.prepare('UPDATE blobs SET size = size + 100 WHERE sha512 = ?').run(sha512(pinnedBody));
    expectInStep(db, 'size rewritten');
    db.prepare('UPDATE blobs SET pinned = 0 WHERE sha512 = ?').run(sha512(pinnedBody));
    expectInStep(db, 'unpinned');
  });
});

describe('migration 005 on an index that already holds rows', () => {
  it('starts the counters from what is there', async () => {
    const dataDir = await makeDataDir();
    const server = await startTestServer({ dataDir });
    try {
      expect((await server.upload('x-1.tar.gz', 'shared')).status).toBe(201);
      expect((await server.upload('x-2.tar.gz', 'shared')).status).toBe(200);
      expect(await uploadBlob(server.baseUrl, 'pinned')).toBe(201);
    } finally {
      await server.stop();
    }
    const db = openIndex(dataDir);
    try {
      // Undo migration 005, as an index from an older release lacks it, then apply it again.
      db.exec(`DROP TABLE index_counters; DROP INDEX blobs_scrub_order; DROP INDEX names_current_nocase;
        DROP INDEX fetch_items_downloading;`);
      for (const t of db.prepare(`SELECT name FROM sqlite_master WHERE type = 'trigger' AND name LIKE 'index_counters_%'`).all() as { name: string }[]) {
        db.exec(`DROP TRIGGER ${t.name}`);
      }
      expect(db.prepare(`SELECT count(*) AS n FROM sqlite_master WHERE name LIKE 'index_counters%'`).get()).toEqual({ n: 0 });
    } catch (err) {
      db.close();
      throw err;
    }
    db.exec(listMigrations().find((m) => m.version === 5)!.sql);
    db.close();
    const migrated = openDatabase(databaseFile(dataDir));
    try {
      const counts = new IndexCounters(migrated).read()!;
      expect(counts).toMatchObject({ blobs: 2, blobBytes: 12, pinnedBlobs: 1, attachedNames: 2, attachedPairs: 2, dedupSavedBytes: 6 });
      expectInStep(migrated, 'migrated');
    } finally {
      migrated.close();
    }
  });
});
