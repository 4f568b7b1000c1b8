import { existsSync, readdirSync } from 'node:fs';
import { appendFile, mkdir, rm, unlink, utimes, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { Writable } from 'node:stream';
import { pino } from 'pino';
import { request } from 'undici';
import { describe, expect, it } from 'vitest';
import { loadConfig } from '../src/config.js';
import { openDatabase } from '../src/db/open.js';
import { UploadHolds } from '../src/db/upload-holds.js';
import { collect, gcCandidates } from '../src/maintenance/gc.js';
import { MaintenanceQueries } from '../src/db/maintenance.js';
import { LocalBlobStorage } from '../src/store/local-storage.js';
import { StorageGuard, storageState } from '../src/maintenance/watermark.js';
import { startServer } from '../src/server.js';
import { BlobStore } from '../src/store/blob-store.js';
import { runCli } from './helpers/cli.js';
import { blobPath, content, detach, flipBit, openIndex, quarantined, sha512, uploadBlob } from './helpers/integrity.js';
import { ADMIN_TOKEN, get, makeDataDir, startTestServer } from './helpers/server.js';

const cli = (dataDir: string, ...args: string[]) => runCli(args, { FASTPULL_DATA_DIR: dataDir });

describe('fastpull fsck', () => {
  it('reports inconsistencies both ways, changes nothing without --repair, and repairs what is safe', async () => {
    const server = await startTestServer();
    const { dataDir, baseUrl } = server;
    try {
      const files = { 'a.tar': content('a', 2000), 'b.tar': content('b', 3000), 'c.tar': content('c', 4000) };
      for (const [n, b] of Object.entries(files)) expect((await server.upload(n, b)).status).toBe(201);
      const clean = await cli(dataDir, 'fsck');
      expect(clean.code, clean.stdout).toBe(0);
      expect(clean.stdout).toMatch(/issues: 0,/);

      // Orphan: good bytes at their own path, no row (a crash between link and index, or a restore).
      const orphan = content('orphan', 5000);
      const orphanSha = sha512(orphan);
      await mkdir(path.dirname(blobPath(dataDir, orphanSha)), { recursive: true });
      await writeFile(blobPath(dataDir, orphanSha), orphan);
      // Misnamed: a file whose bytes do not hash to its name.
      const fakeSha = sha512('the name this file claims');
      await mkdir(path.dirname(blobPath(dataDir, fakeSha)), { recursive: true });
      await writeFile(blobPath(dataDir, fakeSha), 'other bytes');
      // A row whose file is gone, and a row whose file changed size.
      const bSha = sha512(files['b.tar']);
      const cSha = sha512(files['c.tar']);
      await unlink(blobPath(dataDir, bSha));
      await appendFile(blobPath(dataDir, cSha), 'trailing garbage');
      // A temp no process owns, and one owned by a live process (an upload in flight).
      await writeFile(path.join(dataDir, 'tmp', '999999999-0123456789abcdef.tmp'), 'half an upload');
      const inFlight = path.join(dataDir, 'tmp', `${process.pid}-fedcba9876543210.tmp`);
      await writeFile(inFlight, 'uploading');

      const report = await cli(dataDir, 'fsck');
      expect(report.code, report.stdout).toBe(1);
      expect(report.stdout).toMatch(new RegExp(`^unindexed-blob ${orphanSha}`, 'm'));
      expect(report.stdout).toMatch(new RegExp(`^unindexed-blob ${fakeSha}`, 'm'));
      expect(report.stdout).toMatch(new RegExp(`^missing-blob ${bSha}.*b\\.tar`, 'm'));
      expect(report.stdout).toMatch(new RegExp(`^size-mismatch ${cSha}`, 'm'));
      expect(report.stdout).toMatch(/^stale-temp 999999999-0123456789abcdef\.tmp/m);
      expect(report.stdout).not.toContain(path.basename(inFlight));
      expect(report.stdout).toMatch(/issues: 5, repaired: 0, remaining: 5/);
      expect(report.stdout).toMatch(/1 temp files belong to uploads in flight/);
      // Report-only changed nothing.
      expect(existsSync(path.join(dataDir, 'tmp', '999999999-0123456789abcdef.tmp'))).toBe(true);
      expect(existsSync(blobPath(dataDir, fakeSha))).toBe(true);
      expect((await get(`${baseUrl}/${orphanSha}`)).status).toBe(404);

      const repair = await cli(dataDir, 'fsck', '--repair');
      expect(repair.code, repair.stdout).toBe(0);
      expect(repair.stdout).toMatch(/issues: 5, repaired: 5, remaining: 0/);
      expect(repair.stdout).toMatch(new RegExp(`^misnamed-blob ${fakeSha}.*moved to quarantine`, 'm'));

      // Orphan indexed (servable by hash, not pinned: gc reclaims it after grace unless claimed); misnamed file out of blobs/.
      const orphanGet = await get(`${baseUrl}/${orphanSha}`);
      expect(orphanGet.status).toBe(200);
      expect(orphanGet.body.equals(orphan)).toBe(true);
      expect(existsSync(blobPath(dataDir, fakeSha))).toBe(false);
      expect(await quarantined(dataDir, fakeSha)).toHaveLength(1);
      // Rows without good files 404 by name and hash; their name history is kept.
      for (const [name, sha] of [['b.tar', bSha], ['c.tar', cSha]] as const) {
        expect((await get(`${baseUrl}/distfiles/${name}`)).status).toBe(404);
        expect((await get(`${baseUrl}/${sha}`)).status).toBe(404);
      }
      const db = openIndex(dataDir);
      try {
        expect(db.prepare('SELECT count(*) AS n FROM names WHERE filename = ?').get('b.tar')).toEqual({ n: 1 });
        expect(db.prepare('SELECT pinned FROM blobs WHERE sha512 = ?').get(orphanSha)).toEqual({ pinned: 0 });
      } finally {
        db.close();
      }
      // Stale temp gone, in-flight temp untouched.
      expect(existsSync(path.join(dataDir, 'tmp', '999999999-0123456789abcdef.tmp'))).toBe(false);
      expect(existsSync(inFlight)).toBe(true);
      await unlink(inFlight);

      // Re-uploading heals the quarantined rows.
      expect((await server.upload('b.tar', files['b.tar'])).status).toBe(201);
      const healed = await get(`${baseUrl}/distfiles/b.tar`);
      expect(healed.status).toBe(200);
      expect(healed.body.equals(files['b.tar'])).toBe(true);

      const after = await cli(dataDir, 'fsck');
      expect(after.code, after.stdout).toBe(0);
    } finally {
      await server.stop();
    }
  });

  it('clears a quarantine whose file is back with good bytes, and quarantines bad ones left in place', async () => {
    const server = await startTestServer();
    try {
      const good = content('good', 100);
      const bad = content('bad', 100);
      await server.upload('good.tar', good);
      await server.upload('bad.tar', bad);
      await flipBit(server.dataDir, sha512(bad), 7);
      // A crash between marking the row and moving the file leaves both in this state.
      const db = openIndex(server.dataDir);
      try {
        db.prepare('UPDATE blobs SET quarantined_at = 1').run();
      } finally {
        db.close();
      }
      const report = await cli(server.dataDir, 'fsck');
      expect(report.code).toBe(1);
      expect(report.stdout.match(/^quarantined-present /gm)).toHaveLength(2);
      const repair = await cli(server.dataDir, 'fsck', '--repair');
      expect(repair.code, repair.stdout).toBe(0);
      expect((await get(`${server.baseUrl}/distfiles/good.tar`)).status).toBe(200);
      expect((await get(`${server.baseUrl}/distfiles/bad.tar`)).status).toBe(404);
      expect(await quarantined(server.dataDir, sha512(bad))).toHaveLength(1);
      expect(existsSync(blobPath(server.dataDir, sha512(bad)))).toBe(false);
    } finally {
      await server.stop();
    }
  });
});

describe('fastpull reindex', () => {
  it('rebuilds the blob table after the SQLite file is deleted, says names are lost, quarantines bad files', async () => {
    const seed = await startTestServer();
    const { dataDir } = seed;
    const keep = { 'x.tar': content('x', 1500), 'y.tar': content('y', 2500) };
    const damaged = content('z', 700);
    for (const [n, b] of Object.entries(keep)) await seed.upload(n, b);
    await seed.upload('z.tar', damaged);
    const pinnedBody = content('pinned', 900);
    expect(await uploadBlob(seed.baseUrl, pinnedBody)).toBe(201);
    await closeKeepingData(seed);
    await flipBit(dataDir, sha512(damaged), 3);
    for (const f of ['index.sqlite', 'index.sqlite-wal', 'index.sqlite-shm']) await rm(path.join(dataDir, f), { force: true });

    const refused = await cli(dataDir, 'verify');
    expect(refused.code).toBe(2);
    expect(refused.stderr).toMatch(/reindex/);

    const res = await cli(dataDir, 'reindex');
    expect(res.code, res.stdout + res.stderr).toBe(1);
    expect(res.stdout).toMatch(/indexed 3 blobs/);
    expect(res.stdout).toMatch(/File names cannot be recovered from disk/);
    expect(res.stderr).toMatch(/File names cannot be recovered from disk/);
    expect(res.stdout).toContain(`quarantined ${sha512(damaged)}`);

    const db = openIndex(dataDir);
    try {
      expect(db.prepare('SELECT count(*) AS n, sum(pinned) AS p FROM blobs').get()).toEqual({ n: 3, p: 3 });
      expect(db.prepare('SELECT count(*) AS n FROM names').get()).toEqual({ n: 0 });
      const row = db.prepare('SELECT size, verified_at FROM blobs WHERE sha512 = ?').get(sha512(keep['y.tar'])) as any;
      expect(row.size).toBe(2500);
      expect(row.verified_at).not.toBeNull();
    } finally {
      db.close();
    }

    const server = await startTestServer({ dataDir });
    try {
      for (const body of [...Object.values(keep), pinnedBody]) {
        const res = await get(`${server.baseUrl}/${sha512(body)}`);
        expect(res.status).toBe(200);
        expect(res.body.equals(body)).toBe(true);
      }
      expect((await get(`${server.baseUrl}/distfiles/x.tar`)).status).toBe(404);
      expect((await get(`${server.baseUrl}/${sha512(damaged)}`)).status).toBe(404);
      // gc keeps reindexed blobs even with grace 0: nothing proves them unreferenced.
      const gc = await cli(dataDir, 'gc', '--grace', '0');
      expect(gc.stdout).toMatch(/removed 0 blobs/);
    } finally {
      await server.stop();
      await rm(dataDir, { recursive: true, force: true });
    }
  });

  it('keeps name rows whose blob still exists and drops rows whose blob is gone', async () => {
    const server = await startTestServer();
    try {
      const a = content('keep-me', 300);
      const b = content('lose-me', 300);
      await server.upload('keep.tar', a);
      await server.upload('lose.tar', b);
      await unlink(blobPath(server.dataDir, sha512(b)));
      const res = await cli(server.dataDir, 'reindex');
      expect(res.code, res.stdout).toBe(0);
      expect(res.stdout).toContain(`dropped ${sha512(b)}`);
      expect((await get(`${server.baseUrl}/distfiles/keep.tar`)).status).toBe(200);
      expect((await get(`${server.baseUrl}/distfiles/lose.tar`)).status).toBe(404);
      const db = openIndex(server.dataDir);
      try {
        expect(db.prepare('SELECT filename FROM names').all()).toEqual([{ filename: 'keep.tar' }]);
        // The existing row kept its pinned flag (0): reindex only pins rows it had to create.
        expect(db.prepare('SELECT pinned FROM blobs').all()).toEqual([{ pinned: 0 }]);
      } finally {
        db.close();
      }
    } finally {
      await server.stop();
    }
  });
});

async function closeKeepingData(server: { close(): Promise<void> }): Promise<void> {
  // stop() would delete the temporary data dir; close() keeps it for the next step.
  await server.close();
}

describe('fastpull gc', () => {
  it('honours the grace period, names, pins and detached names; --dry-run changes nothing', async () => {
    const server = await startTestServer();
    const { dataDir, baseUrl } = server;
    try {
      const detachedOld = content('detached-old', 1234);
      const referencedOld = content('referenced-old', 2000);
      const pinnedOld = content('pinned-old', 3000);
      const detachedYoung = content('detached-young', 4000);
      const inFlight = path.join(dataDir, 'tmp', `${process.pid}-0011223344556677.tmp`);
      await server.upload('old.tar', detachedOld);
      expect(await detach(baseUrl, 'old.tar')).toBe(200);
      await server.upload('ref.tar', referencedOld);
      expect(await uploadBlob(baseUrl, pinnedOld)).toBe(201);
      await server.upload('young.tar', detachedYoung);
      expect(await detach(baseUrl, 'young.tar')).toBe(200);
      await writeFile(inFlight, 'an upload in progress');
      await utimes(inFlight, new Date('2020-01-01'), new Date('2020-01-01'));
      const db = openIndex(dataDir);
      try {
        const twoDaysAgo = Date.now() - 2 * 86_400_000;
        const age = db.prepare('UPDATE blobs SET ingested_at = ? WHERE sha512 = ?');
        for (const body of [detachedOld, referencedOld, pinnedOld]) age.run(twoDaysAgo, sha512(body));
      } finally {
        db.close();
      }

      const dry = await cli(dataDir, 'gc', '--dry-run');
      expect(dry.code, dry.stderr).toBe(0);
      expect(dry.stdout).toContain(`would remove ${sha512(detachedOld)} 1234 bytes`);
      expect(dry.stdout.match(/^would remove/gm)).toHaveLength(1);
      expect(dry.stdout).toMatch(/dry run: 1 blobs, 1234 bytes/);
      expect(existsSync(blobPath(dataDir, sha512(detachedOld)))).toBe(true);
      expect((await get(`${baseUrl}/${sha512(detachedOld)}`)).status).toBe(200);

      const res = await cli(dataDir, 'gc');
      expect(res.code, res.stderr).toBe(0);
      expect(res.stdout).toMatch(/removed 1 blobs, 1234 bytes/);
      expect(existsSync(blobPath(dataDir, sha512(detachedOld)))).toBe(false);
      expect((await get(`${baseUrl}/${sha512(detachedOld)}`)).status).toBe(404);
      for (const body of [referencedOld, pinnedOld, detachedYoung]) {
        expect((await get(`${baseUrl}/${sha512(body)}`)).status).toBe(200);
        expect(existsSync(blobPath(dataDir, sha512(body)))).toBe(true);
      }
      expect(existsSync(inFlight)).toBe(true);
      expect(readdirSync(path.join(dataDir, 'tmp'))).toEqual([path.basename(inFlight)]);

      // A shorter grace (here none) takes the young detached blob too; references and pins still hold.
      const now = await cli(dataDir, 'gc', '--grace', '0');
      expect(now.stdout).toMatch(/removed 1 blobs, 4000 bytes/);
      expect((await get(`${baseUrl}/${sha512(detachedYoung)}`)).status).toBe(404);
      expect((await get(`${baseUrl}/distfiles/ref.tar`)).status).toBe(200);
      expect((await get(`${baseUrl}/${sha512(pinnedOld)}`)).status).toBe(200);
      await unlink(inFlight);

      // Re-uploading a collected blob works: the path was freed.
      expect((await server.upload('old.tar', detachedOld)).status).toBe(201);
      expect((await get(`${baseUrl}/distfiles/old.tar`)).body.equals(detachedOld)).toBe(true);
    } finally {
      await server.stop();
    }
  });

  it('keeps a blob a name was attached to after it was selected', async () => {
    const server = await startTestServer();
    try {
      const body = content('late-link', 777);
      await server.upload('late.tar', body);
      await detach(server.baseUrl, 'late.tar');
      const db = openDatabase(path.join(server.dataDir, 'index.sqlite'));
      try {
        const queries = new MaintenanceQueries(db);
        const cutoff = Date.now() + 1000;
        const selected = await gcCandidates(queries, cutoff);
        expect(selected.map((c) => c.sha512)).toEqual([sha512(body)]);
        // Between selection and deletion, someone links a name to it through the API.
        const link = await request(`${server.baseUrl}/api/v1/links`, {
          method: 'POST',
          headers: { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/json' },
          body: JSON.stringify({ filename: 'relinked.tar', sha512: sha512(body) }),
        });
        expect(link.statusCode).toBe(200);
        await link.body.dump();
        const result = await collect(new LocalBlobStorage(new BlobStore(server.dataDir)), queries, selected, cutoff);
        expect(result.removed).toHaveLength(0);
        expect(result.kept.map((c) => c.sha512)).toEqual([sha512(body)]);
      } finally {
        db.close();
      }
      const res = await get(`${server.baseUrl}/distfiles/relinked.tar`);
      expect(res.status).toBe(200);
      expect(res.body.equals(body)).toBe(true);
    } finally {
      await server.stop();
    }
  });
});

describe('gc against a concurrent re-upload', () => {
  it('puts the file back when a re-upload that deduplicated against it records its row meanwhile', async () => {
    const server = await startTestServer();
    try {
      const body = content('raced', 4321);
      const sha = sha512(body);
      await server.upload('raced.tar', body);
      await detach(server.baseUrl, 'raced.tar');
      const db = openDatabase(path.join(server.dataDir, 'index.sqlite'));
      try {
        const queries = new MaintenanceQueries(db);
        const cutoff = Date.now() + 1000;
        const running = collect(new LocalBlobStorage(new BlobStore(server.dataDir)), queries, await gcCandidates(queries, cutoff), cutoff, 3000);
        // The re-upload's link(2) saw the file (EEXIST) and skipped writing; it records its row only
        // now, after gc deleted the row and moved the file.
        while (existsSync(blobPath(server.dataDir, sha))) await new Promise((r) => setTimeout(r, 5));
        server.index.recordBlob(
          { sha512: sha, blake2b: sha, sha256: sha.slice(0, 64), size: body.length },
          { filename: 'raced.tar', by: 'racer' },
        );
        const result = await running;
        expect(result.removed.map((c) => c.sha512)).toEqual([sha]);
        expect(result.restored).toEqual([sha]);
      } finally {
        db.close();
      }
      const res = await get(`${server.baseUrl}/distfiles/raced.tar`);
      expect(res.status).toBe(200);
      expect(res.body.equals(body)).toBe(true);
      expect(readdirSync(path.join(server.dataDir, 'tmp'))).toEqual([]);
    } finally {
      await server.stop();
    }
  });
});

describe('high watermark', () => {
  it('refuses uploads with 507 before reading the body once stored bytes exceed it, and logs why', async () => {
    const dataDir = await makeDataDir();
    try {
      const seed = await startTestServer({ dataDir });
      const first = content('first', 20);
      expect((await seed.upload('first.tar', first)).status).toBe(201);
      await seed.close();

      const lines: any[] = [];
      const sink = new Writable({
        write(chunk: Buffer, _enc, done) {
          for (const line of chunk.toString().split('\n')) if (line) lines.push(JSON.parse(line));
          done();
        },
      });
      const config = loadConfig({ host: '127.0.0.1', port: 0, adminToken: ADMIN_TOKEN, dataDir, highWatermarkBytes: 10 }, {});
      const server = await startServer(config, { logger: pino({ level: 'warn' }, sink) });
      try {
        expect(storageState.aboveHighWatermark).toBe(true);
        expect(storageState.bytesStored).toBe(20);
        const second = content('second', 30);
        const put = await request(`${server.url}/api/v1/distfiles/second.tar`, {
          method: 'PUT',
          body: second,
          headers: { authorization: `Bearer ${ADMIN_TOKEN}` },
        });
        expect(put.statusCode).toBe(507);
        expect(((await put.body.json()) as any).error).toBe('INSUFFICIENT_STORAGE');
        const byHash = await request(`${server.url}/api/v1/blobs/${sha512(second)}`, {
          method: 'PUT',
          body: second,
          headers: { authorization: `Bearer ${ADMIN_TOKEN}` },
        });
        expect(byHash.statusCode).toBe(507);
        await byHash.body.dump();

        // A body that never ends still gets its answer: nothing waited for the bytes.
        const endless = new (await import('node:stream')).Readable({ read() {} });
        endless.push(Buffer.alloc(1024));
        const hang = await request(`${server.url}/api/v1/distfiles/endless.tar`, {
          method: 'PUT',
          body: endless,
          headers: { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-length': String(1024 ** 3) },
        });
        expect(hang.statusCode).toBe(507);
        await hang.body.dump();
        endless.destroy();

        // Nothing was stored: no row, no blob file, no temp left.
        expect((await get(`${server.url}/distfiles/second.tar`)).status).toBe(404);
        expect(existsSync(blobPath(dataDir, sha512(second)))).toBe(false);
        expect(readdirSync(path.join(dataDir, 'tmp'))).toEqual([]);
        expect(storageState.uploadsRefused).toBe(3);
        const warn = lines.find((l) => /high watermark/.test(l.msg));
        expect(warn).toMatchObject({ level: 40, bytesStored: 20, highWatermarkBytes: 10 });
        // Downloads keep working.
        expect((await get(`${server.url}/distfiles/first.tar`)).body.equals(first)).toBe(true);
      } finally {
        await server.close();
      }

      // Below the mark, uploads are accepted.
      const roomy = await startTestServer({ dataDir, highWatermarkBytes: 1000 });
      try {
        expect((await roomy.upload('second.tar', content('second', 30))).status).toBe(201);
        expect(storageState.aboveHighWatermark).toBe(false);
      } finally {
        await roomy.close();
      }
    } finally {
      await rm(dataDir, { recursive: true, force: true });
    }
  });

  it('sees bytes added by its own connection and freed by another process (gc) without a restart', async () => {
    const dataDir = await makeDataDir();
    const db = openDatabase(path.join(dataDir, 'index.sqlite'));
    const other = openIndex(dataDir);
    try {
      const guard = new StorageGuard(new UploadHolds(db), 100);
      expect(() => guard.assertAccepting()).not.toThrow();
      const insert = (conn: typeof db, body: Buffer) =>
        conn
          .prepare(`INSERT INTO blobs (sha512, blake2b, sha256, size, ingested_at) VALUES (?, ?, ?, ?, 0)`)
          .run(sha512(body), sha512(body), sha512(body).slice(0, 64), body.length);
      insert(db, content('own', 60));
      expect(() => guard.assertAccepting()).not.toThrow();
      insert(other, content('other', 60));
      expect(() => guard.assertAccepting()).toThrow(/high watermark/);
      expect(guard.bytesStored()).toBe(120);
      other.prepare('DELETE FROM blobs WHERE sha512 = ?').run(sha512(content('own', 60)));
      expect(() => guard.assertAccepting()).not.toThrow();
      expect(storageState.aboveHighWatermark).toBe(false);
    } finally {
      other.close();
      db.close();
      await rm(dataDir, { recursive: true, force: true });
    }
  });
});
