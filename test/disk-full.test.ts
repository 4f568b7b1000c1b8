import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync, statfsSync } from 'node:fs';
import { mkdtemp, open, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { request } from 'undici';
import { describe, expect, it } from 'vitest';
import { runCli } from './helpers/cli.js';
import { AUTH, filesUnder } from './helpers/core.js';
import { blobPath, content, openIndex, sha512 } from './helpers/integrity.js';
import { startServeProcess, type ServeProcess } from './helpers/serve-process.js';
import { ADMIN_TOKEN, startTestServer } from './helpers/server.js';

const MiB = 1024 * 1024;

/** Mounts a real tmpfs of `size`; undefined (with the reason) where mounting is not allowed. */
function mountTmpfs(mountPoint: string, size: string): string | undefined {
  const mounted = spawnSync('mount', ['-t', 'tmpfs', '-o', `size=${size}`, 'tmpfs', mountPoint], { encoding: 'utf8' });
  if (mounted.status === 0) return undefined;
  return `cannot mount a tmpfs here (needs root/CAP_SYS_ADMIN): ${(mounted.stderr || String(mounted.error)).trim()}`;
}

/** Writes into `file` until the filesystem refuses even one more byte: the disk is then 100 % full. */
async function fillUp(file: string): Promise<void> {
  const handle = await open(file, 'a');
  try {
    for (const size of [MiB, 64 * 1024, 4096, 1]) {
      const block = Buffer.alloc(size, 0x5a);
      for (;;) {
        try {
          const { bytesWritten } = await handle.write(block);
          if (bytesWritten < size) break;
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code !== 'ENOSPC') throw err;
          break;
        }
      }
    }
  } finally {
    await handle.close();
  }
}

async function api(base: string, method: 'PUT' | 'POST' | 'DELETE' | 'GET', p: string, body?: Buffer | string) {
  const res = await request(`${base}/api/v1${p}`, {
    method,
    headers: { ...AUTH, ...(method === 'POST' ? { 'content-type': 'application/json' } : {}) },
    ...(body !== undefined ? { body } : {}),
  });
  const text = await res.body.text();
  return { status: res.statusCode, json: text ? JSON.parse(text) : undefined };
}

async function download(base: string, p: string) {
  const res = await request(`${base}${p}`);
  return { status: res.statusCode, body: Buffer.from(await res.body.arrayBuffer()) };
}

async function stop(server: ServeProcess): Promise<void> {
  server.child.kill('SIGTERM');
  await server.exited;
}

describe('a 100 % full disk (real tmpfs)', () => {
  it('keeps serving, answers 507 for uploads, and recovers through DELETE + gc', async (ctx) => {
    const mountPoint = await mkdtemp(path.join(tmpdir(), 'fastpull-full-'));
    const reason = mountTmpfs(mountPoint, '30m');
    if (reason !== undefined) {
      await rm(mountPoint, { recursive: true, force: true });
      if (process.env.CI === 'true') throw new Error(reason);
      console.warn(`skipped: ${reason}`);
      ctx.skip(reason);
      return;
    }
    const dataDir = path.join(mountPoint, 'data');
    const env = { FASTPULL_DATA_DIR: dataDir, FASTPULL_ADMIN_TOKEN: ADMIN_TOKEN, FASTPULL_MIN_FREE_BYTES: '0' };
    let server: ServeProcess | undefined;
    try {
      server = await startServeProcess(env);
      const files = ['a', 'b', 'c', 'd', 'e'].map((n) => ({ name: `${n}.bin`, bytes: content(`full-${n}`, 4 * MiB) }));
      for (const f of files) expect((await api(server.baseUrl, 'PUT', `/distfiles/${f.name}`, f.bytes)).status).toBe(201);

      // Something else on the disk takes every last byte.
      await fillUp(path.join(mountPoint, 'filler'));
      expect(statfsSync(mountPoint).bavail).toBe(0);

      // Reads never stop.
      const a = files[0]!;
      const got = await download(server.baseUrl, `/distfiles/${a.name}`);
      expect(got.status).toBe(200);
      expect(got.body.equals(a.bytes)).toBe(true);

      // An upload is refused with 507 and leaves nothing behind: no temp, no blob file without a row.
      const late = content('full-late', MiB);
      const refused = await api(server.baseUrl, 'PUT', '/distfiles/late.bin', late);
      expect(refused.status).toBe(507);
      expect(refused.json.error).toBe('INSUFFICIENT_STORAGE');
      expect(existsSync(blobPath(dataDir, sha512(late)))).toBe(false);
      expect(readdirSync(path.join(dataDir, 'tmp'))).toEqual([]);

      // Index-only writes never answer 500: a link either fits or is a clean 507.
      const link = await api(server.baseUrl, 'POST', '/links', JSON.stringify({ filename: 'alias.bin', sha512: sha512(a.bytes) }));
      expect([200, 507]).toContain(link.status);

      // Detaching names always has room, also after a restart on the full disk.
      expect((await api(server.baseUrl, 'DELETE', '/distfiles/a.bin')).status).toBe(200);
      await stop(server);
      server = await startServeProcess(env);
      expect((await download(server.baseUrl, '/distfiles/c.bin')).status).toBe(200);
      expect((await api(server.baseUrl, 'DELETE', '/distfiles/b.bin')).status).toBe(200);
      if (link.status === 200) expect((await api(server.baseUrl, 'DELETE', '/distfiles/alias.bin')).status).toBe(200);
      expect((await api(server.baseUrl, 'PUT', '/distfiles/late.bin', late)).status).toBe(507);

      // gc, run beside the server on the full disk, frees the detached blobs.
      const gc = await runCli(['gc', '--grace', '0'], { FASTPULL_DATA_DIR: dataDir });
      expect(gc.stderr).not.toMatch(/Error|full/);
      expect(gc.code).toBe(0);
      expect(gc.stdout).toMatch(/removed 2 blobs/);
      expect(existsSync(blobPath(dataDir, sha512(a.bytes)))).toBe(false);

      // ... and uploads succeed again, while everything still stored is served.
      const stored = await api(server.baseUrl, 'PUT', '/distfiles/late.bin', late);
      expect(stored.status).toBe(201);
      expect((await download(server.baseUrl, '/distfiles/late.bin')).body.equals(late)).toBe(true);
      for (const f of files.slice(2)) expect((await download(server.baseUrl, `/distfiles/${f.name}`)).body.equals(f.bytes)).toBe(true);
      expect((await download(server.baseUrl, '/distfiles/a.bin')).status).toBe(404);

      // Disk and index agree: every blob file has its row.
      await stop(server);
      server = undefined;
      const db = openIndex(dataDir);
      try {
        const rows = (db.prepare('SELECT sha512 FROM blobs ORDER BY sha512').all() as { sha512: string }[]).map((r) => r.sha512);
        const onDisk = (await filesUnder(path.join(dataDir, 'blobs'))).map((f) => path.basename(f)).sort();
        expect(onDisk).toEqual(rows);
      } finally {
        db.close();
      }
    } finally {
      if (server) await stop(server);
      spawnSync('umount', [mountPoint]);
      await rm(mountPoint, { recursive: true, force: true });
    }
  }, 60_000);
});

describe('an index write that fails after the blob was placed', () => {
  it('answers 507 and takes back the blob file it placed, but never one that was there before', async () => {
    const server = await startTestServer();
    try {
      // SQLite's own "database or disk is full": the index may not grow by one more page.
      const pages = server.db!.pragma('page_count', { simple: true }) as number;
      server.db!.pragma(`max_page_count = ${pages}`);
      const accepted: Buffer[] = [];
      let refused: { bytes: Buffer; json: any } | undefined;
      for (let i = 0; i < 500 && refused === undefined; i++) {
        const bytes = content(`page-${i}`, 2000);
        const res = await api(server.baseUrl, 'PUT', `/distfiles/page-${i}.bin`, bytes);
        if (res.status === 201) accepted.push(bytes);
        else {
          expect(res.status).toBe(507);
          refused = { bytes, json: res.json };
        }
      }
      expect(refused).toBeDefined();
      expect(refused!.json.error).toBe('INSUFFICIENT_STORAGE');
      expect(JSON.stringify(refused!.json)).not.toMatch(/SQLITE|sqlite|disk is full/);
      expect(existsSync(blobPath(server.dataDir, sha512(refused!.bytes)))).toBe(false);
      expect(readdirSync(path.join(server.dataDir, 'tmp'))).toEqual([]);

      // The same bytes again under new names: deduplicated against the stored file, which must stay.
      const kept = accepted[0]!;
      let dedupRefused = false;
      for (let i = 0; i < 500 && !dedupRefused; i++) {
        const res = await api(server.baseUrl, 'PUT', `/distfiles/again-${i}-${'x'.repeat(200)}.bin`, kept);
        if (res.status !== 200) {
          expect(res.status).toBe(507);
          dedupRefused = true;
        }
      }
      expect(dedupRefused).toBe(true);
      for (const bytes of accepted) {
        expect(existsSync(blobPath(server.dataDir, sha512(bytes)))).toBe(true);
        expect((await download(server.baseUrl, `/${sha512(bytes)}`)).body.equals(bytes)).toBe(true);
      }
      const rows = server.db!.prepare('SELECT count(*) AS n FROM blobs').get() as { n: number };
      expect(rows.n).toBe(accepted.length);
      expect((await filesUnder(path.join(server.dataDir, 'blobs'))).length).toBe(accepted.length);
    } finally {
      await server.stop();
    }
  });
});
