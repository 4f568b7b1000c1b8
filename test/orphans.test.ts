import { existsSync } from 'node:fs';
import { mkdir, rm, utimes, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { request } from 'undici';
import { describe, expect, it } from 'vitest';
import { runCli } from './helpers/cli.js';
import { AUTH } from './helpers/core.js';
import { blobPath, content, openIndex, sha512, uploadBlob, waitFor } from './helpers/integrity.js';
import { startServeProcess } from './helpers/serve-process.js';
import { ADMIN_TOKEN, get, makeDataDir, startTestServer } from './helpers/server.js';

const cli = (dataDir: string, ...args: string[]) => runCli(args, { FASTPULL_DATA_DIR: dataDir });
const DAY = 86_400;

/** A blob file at its place under blobs/ with no index row, last written `ageSeconds` ago. */
async function placeOrphan(dataDir: string, bytes: Buffer, ageSeconds: number): Promise<string> {
  const file = blobPath(dataDir, sha512(bytes));
  await mkdir(path.dirname(file), { recursive: true });
  await writeFile(file, bytes, { mode: 0o444 });
  const when = new Date(Date.now() - ageSeconds * 1000);
  await utimes(file, when, when);
  return file;
}

function row(dataDir: string, sha: string): { pinned: number } | undefined {
  const db = openIndex(dataDir);
  try {
    return db.prepare('SELECT pinned FROM blobs WHERE sha512 = ?').get(sha) as { pinned: number } | undefined;
  } finally {
    db.close();
  }
}

describe('orphan blob files (on disk, no index row)', () => {
  it('are left by a kill -9 between placing the file and recording its row, and gc reclaims them after the grace period', async () => {
    const dataDir = await makeDataDir();
    const env = { FASTPULL_DATA_DIR: dataDir, FASTPULL_ADMIN_TOKEN: ADMIN_TOKEN };
    const server = await startServeProcess(env);
    const lock = openIndex(dataDir);
    try {
      const body = content('killed-mid-upload', 300_000);
      const file = blobPath(dataDir, sha512(body));
      // Another writer holds the index: the upload places its file, then waits for the lock to record the row.
      lock.prepare('BEGIN IMMEDIATE').run();
      const upload = request(`${server.baseUrl}/api/v1/distfiles/killed.bin`, { method: 'PUT', headers: AUTH, body }).catch(
        (err: unknown) => err,
      );
      expect(await waitFor(async () => existsSync(file))).toBe(true);
      server.child.kill('SIGKILL');
      expect(await server.exited).toBe('SIGKILL');
      await upload;
      lock.prepare('ROLLBACK').run();
      expect(row(dataDir, sha512(body))).toBeUndefined();

      // Young: gc leaves it alone (it could be an upload about to record its row) and says nothing of it.
      const young = await cli(dataDir, 'gc');
      expect(young.code, young.stderr).toBe(0);
      expect(young.stdout).toMatch(/removed 0 blobs/);
      expect(existsSync(file)).toBe(true);

      // Past the grace period it is reclaimed, without any repair step first.
      const dry = await cli(dataDir, 'gc', '--grace', '0', '--dry-run');
      expect(dry.stdout).toMatch(new RegExp(`would remove ${sha512(body)} 300000 bytes.*no index row`));
      const gc = await cli(dataDir, 'gc', '--grace', '0');
      expect(gc.code, gc.stderr).toBe(0);
      expect(gc.stdout).toMatch(/removed 1 blobs, 300000 bytes/);
      expect(existsSync(file)).toBe(false);
      // Disk and index agree again (the killed upload's temp file is another matter: the next start removes it).
      const fsck = await cli(dataDir, 'fsck');
      expect(fsck.stdout).not.toMatch(/unindexed-blob|missing-blob/);
    } finally {
      lock.close();
      if (server.child.exitCode === null && server.child.signalCode === null) server.child.kill('SIGKILL');
      await rm(dataDir, { recursive: true, force: true });
    }
  }, 60_000);

  it('stay only when a name or a hash upload claims them, whether gc finds them on disk or fsck --repair indexed them', async () => {
    const server = await startTestServer();
    const { dataDir, baseUrl } = server;
    try {
      const orphans = {
        unclaimed: content('unclaimed', 1000),
        byName: content('by-name', 1100),
        byHash: content('by-hash', 1200),
        young: content('young', 1300),
        repaired: content('repaired', 1400),
        repairedLinked: content('repaired-linked', 1500),
      };
      for (const [kind, bytes] of Object.entries(orphans)) await placeOrphan(dataDir, bytes, kind === 'young' ? 0 : 2 * DAY);

      // fsck --repair indexes what it finds, as orphans gc may reclaim: not pinned, aged from the file.
      const repair = await cli(dataDir, 'fsck', '--repair');
      expect(repair.code, repair.stdout).toBe(0);
      expect(repair.stdout).toMatch(new RegExp(`^unindexed-blob ${sha512(orphans.repaired)}.*not pinned`, 'm'));
      for (const bytes of Object.values(orphans)) expect(row(dataDir, sha512(bytes))).toEqual({ pinned: 0 });
      // ... which the test then undoes for the three that gc must find on disk by itself.
      const db = openIndex(dataDir);
      try {
        for (const bytes of [orphans.unclaimed, orphans.byName, orphans.byHash]) db.prepare('DELETE FROM blobs WHERE sha512 = ?').run(sha512(bytes));
      } finally {
        db.close();
      }

      // Claims: the same bytes uploaded under a name, or by hash; a name linked to a repaired row.
      expect((await server.upload('claimed.bin', orphans.byName)).status).toBe(200);
      expect(await uploadBlob(baseUrl, orphans.byHash)).toBe(200);
      const link = await request(`${baseUrl}/api/v1/links`, {
        method: 'POST',
        headers: { ...AUTH, 'content-type': 'application/json' },
        body: JSON.stringify({ filename: 'linked.bin', sha512: sha512(orphans.repairedLinked) }),
      });
      expect(link.statusCode).toBe(200);
      await link.body.dump();

      const gc = await cli(dataDir, 'gc');
      expect(gc.code, gc.stderr).toBe(0);
      expect(gc.stdout).toMatch(/removed 2 blobs, 2400 bytes/);
      const gone = [orphans.unclaimed, orphans.repaired];
      const kept = [orphans.byName, orphans.byHash, orphans.young, orphans.repairedLinked];
      for (const bytes of gone) {
        expect(existsSync(blobPath(dataDir, sha512(bytes)))).toBe(false);
        expect(row(dataDir, sha512(bytes))).toBeUndefined();
      }
      for (const bytes of kept) expect((await get(`${baseUrl}/${sha512(bytes)}`)).body.equals(bytes)).toBe(true);
      expect((await get(`${baseUrl}/distfiles/claimed.bin`)).status).toBe(200);
      expect((await get(`${baseUrl}/distfiles/linked.bin`)).status).toBe(200);
    } finally {
      await server.stop();
    }
  }, 60_000);
});
