import { rm } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { scrubCounters } from '../src/maintenance/scrub.js';
import { runCli } from './helpers/cli.js';
import { backendOf, countRows, indexExec, indexRows, TEST_BACKEND } from './helpers/backend.js';
import { blobExists, blobInfo, content, flipBit, quarantined, removeBlob, sha512, waitFor } from './helpers/integrity.js';
import { get, makeDataDir, startTestServer, type TestServer } from './helpers/server.js';

// Sizes straddle the 1 MiB read chunk so flips land in first, middle and last chunks.
const FILES: Record<string, Buffer> = {
  'alpha-1.0.tar.gz': content('alpha', 1000),
  'beta-2.1.tar.xz': content('beta', 3 * 1024 * 1024 + 17),
  'gamma-0.9.zip': content('gamma', 64 * 1024),
  'delta-5.tar.bz2': content('delta', 1),
  'epsilon-3.tgz': content('epsilon', 2 * 1024 * 1024),
};
const SHA = Object.fromEntries(Object.entries(FILES).map(([n, b]) => [n, sha512(b)]));

describe('fastpull verify', () => {
  let server: TestServer;
  const cli = (...args: string[]) => runCli(['verify', ...args], { FASTPULL_DATA_DIR: server.dataDir });

  beforeAll(async () => {
    server = await startTestServer();
    for (const [name, body] of Object.entries(FILES)) expect((await server.upload(name, body)).status).toBe(201);
  });
  afterAll(async () => server.stop());

  it('exits 0 on a clean store and records when each blob was verified', async () => {
    expect((await blobInfo(server.baseUrl, SHA['alpha-1.0.tar.gz']!)).json.verifiedAt).toBeNull();
    const res = await cli();
    expect(res.code, res.stderr + res.stdout).toBe(0);
    expect(res.stdout).toMatch(/^verified 5 blobs/m);
    expect(res.stdout).toMatch(/^corrupt: 0$/m);
    expect(res.stdout).toMatch(/^missing: 0$/m);
    for (const sha of Object.values(SHA)) {
      const info = await blobInfo(server.baseUrl, sha);
      expect(info.json.verifiedAt).not.toBeNull();
      expect(info.json.quarantined).toBe(false);
    }
  });

  it('--sample N re-hashes exactly N blobs', async () => {
    await indexExec(server, 'UPDATE blobs SET verified_at = NULL');
    const res = await cli('--sample', '2');
    expect(res.code, res.stderr).toBe(0);
    expect(res.stdout).toMatch(/^verified 2 blobs/m);
    expect(await countRows(server, 'blobs', 'verified_at IS NOT NULL')).toBe(2);
  });

  it('--since only re-hashes blobs not verified since that date', async () => {
    const longAgo = Date.parse('2020-01-01T00:00:00Z');
    const recent = Date.now() - 60_000;
    await indexExec(server, 'UPDATE blobs SET verified_at = ?', [recent]);
    await indexExec(server, 'UPDATE blobs SET verified_at = ? WHERE sha512 IN (?, ?)', [longAgo, SHA['alpha-1.0.tar.gz'], SHA['gamma-0.9.zip']]);
    // Damage a recently verified blob: a --since run must not look at it, which proves the selection.
    await flipBit(server.dataDir, SHA['delta-5.tar.bz2']!, 0);
    const res = await cli('--since', '2021-06-01');
    expect(res.code, res.stdout).toBe(0);
    expect(res.stdout).toMatch(/^verified 2 blobs/m);
    const rows = await indexRows<{ sha512: string; verified_at: number }>(server, 'SELECT sha512, verified_at FROM blobs');
    for (const row of rows) {
      if (row.sha512 === SHA['alpha-1.0.tar.gz'] || row.sha512 === SHA['gamma-0.9.zip']) expect(row.verified_at).toBeGreaterThan(recent);
      else expect(row.verified_at).toBe(recent);
    }
    await flipBit(server.dataDir, SHA['delta-5.tar.bz2']!, 0); // undo
    // Relative ages work too: 30s ago selects the three verified a minute ago, not the two just done.
    const rel = await cli('--since', '30s');
    expect(rel.code).toBe(0);
    expect(rel.stdout).toMatch(/^verified 3 blobs/m);
  });

  it('finds every flipped bit, quarantines those blobs, 404s them by hash and name, and exits 1', async () => {
    const damaged = ['alpha-1.0.tar.gz', 'beta-2.1.tar.xz', 'epsilon-3.tgz'];
    await flipBit(server.dataDir, SHA['alpha-1.0.tar.gz']!, 0);
    await flipBit(server.dataDir, SHA['beta-2.1.tar.xz']!, 1024 * 1024 + 5); // second read chunk
    await flipBit(server.dataDir, SHA['epsilon-3.tgz']!, FILES['epsilon-3.tgz']!.length - 1);
    // Before verify, a small blob's damage already answers 404 (its bytes are hashed before the memory
    // cache takes them); a large one is still served: without FASTPULL_VERIFY_ON_SERVE nothing re-hashes it.
    // On S3 the read path hashes every body, so only the local store shows the difference.
    if (TEST_BACKEND === 'local') {
      expect((await get(`${server.baseUrl}/distfiles/alpha-1.0.tar.gz`)).status).toBe(404);
      expect((await get(`${server.baseUrl}/distfiles/epsilon-3.tgz`)).status).toBe(200);
    }

    const res = await cli();
    expect(res.code, res.stdout).toBe(1);
    expect(res.stdout).toMatch(/^corrupt: 3$/m);
    expect(res.stdout).toMatch(/^ok: 2$/m);
    for (const [name, sha] of Object.entries(SHA)) {
      const bad = damaged.includes(name);
      expect(res.stdout.includes(`corrupt ${sha}`), name).toBe(bad);
      expect(await blobExists(server.dataDir, sha), name).toBe(!bad);
      expect((await quarantined(server.dataDir, sha)).length, name).toBe(bad ? 1 : 0);
      const byHash = await get(`${server.baseUrl}/${sha}`);
      const byName = await get(`${server.baseUrl}/distfiles/${name}`);
      expect(byHash.status, name).toBe(bad ? 404 : 200);
      expect(byName.status, name).toBe(bad ? 404 : 200);
      if (!bad) expect(byName.body.equals(FILES[name]!)).toBe(true);
      expect((await blobInfo(server.baseUrl, sha)).json.quarantined).toBe(bad);
    }
    expect(res.stdout).toContain('alpha-1.0.tar.gz');

    // The damage has been dealt with: the next run finds nothing new.
    const again = await cli();
    expect(again.code, again.stdout).toBe(0);
    expect(again.stdout).toMatch(/^verified 2 blobs/m);
  });

  it('re-uploading good bytes makes a quarantined blob servable again', async () => {
    const name = 'beta-2.1.tar.xz';
    const up = await server.upload(name, FILES[name]!);
    expect(up.status).toBe(201);
    for (const url of [`/${SHA[name]}`, `/distfiles/${name}`]) {
      const res = await get(server.baseUrl + url);
      expect(res.status, url).toBe(200);
      expect(res.body.equals(FILES[name]!)).toBe(true);
    }
    expect((await blobInfo(server.baseUrl, SHA[name]!)).json.quarantined).toBe(false);
    const res = await cli();
    expect(res.code, res.stdout).toBe(0);
    expect(res.stdout).toMatch(/^verified 3 blobs/m);
  });

  it('reports an indexed blob whose file is gone and exits 1', async () => {
    const sha = SHA['gamma-0.9.zip']!;
    await removeBlob(server.dataDir, sha);
    const res = await cli();
    expect(res.code).toBe(1);
    expect(res.stdout).toMatch(/^missing: 1$/m);
    expect(res.stdout).toContain(`missing ${sha}`);
    expect(res.stdout).toContain('gamma-0.9.zip');
    expect(res.stderr).toContain(`MISSING ${sha}`);
  });

  it('refuses bad options and a data directory that does not exist', async () => {
    expect((await cli('--sample', '0')).code).toBe(2);
    expect((await cli('--since', 'not a date')).code).toBe(2);
    expect((await cli('--bogus')).code).toBe(2);
    const gone = await runCli(['verify'], { FASTPULL_DATA_DIR: `${server.dataDir}/nope` });
    expect(gone.code).toBe(2);
    expect(gone.stderr).toMatch(/does not exist/);
  });
});

describe('background scrub', () => {
  it('finds a blob damaged while the server runs and stops serving it', async () => {
    const server = await startTestServer({ scrubBytesPerSecond: 64 * 1024 * 1024, scrubPauseSeconds: 0 });
    try {
      const files = { 'one.tar': content('one', 5000), 'two.tar': content('two', 1024 * 1024 + 3), 'three.tar': content('three', 10) };
      for (const [name, body] of Object.entries(files)) expect((await server.upload(name, body)).status).toBe(201);
      const shas = Object.values(files).map(sha512);
      const allVerified = await waitFor(async () => {
        for (const sha of shas) if ((await blobInfo(server.baseUrl, sha)).json.verifiedAt === null) return false;
        return true;
      });
      expect(allVerified).toBe(true);

      await flipBit(server.dataDir, shas[1]!, 1024 * 1024 + 1);
      // A read may also be cut short on the damaged bytes (S3's read path hashes every body): not yet 404.
      const gone = await waitFor(async () => (await get(`${server.baseUrl}/${shas[1]}`).then((r) => r.status, () => 0)) === 404);
      expect(gone).toBe(true);
      expect((await get(`${server.baseUrl}/distfiles/two.tar`)).status).toBe(404);
      // The index row is quarantined first (reads 404 from then on) and the file moves after it.
      expect(await waitFor(async () => (await quarantined(server.dataDir, shas[1]!)).length === 1)).toBe(true);
      // On S3 the move is a copy then a delete: the original goes a moment after the copy appears.
      expect(await waitFor(async () => !(await blobExists(server.dataDir, shas[1]!)))).toBe(true);
      expect(await waitFor(async () => scrubCounters.corruptFound >= 1)).toBe(true);
      for (const name of ['one.tar', 'three.tar']) {
        const res = await get(`${server.baseUrl}/distfiles/${name}`);
        expect(res.status).toBe(200);
        expect(res.body.equals(files[name as keyof typeof files])).toBe(true);
      }
    } finally {
      await server.stop();
    }
  });

  it('stops promptly on close even in the middle of a slow, throttled blob', async () => {
    const dataDir = await makeDataDir();
    try {
      const seed = await startTestServer({ dataDir });
      const body = content('slow', 2 * 1024 * 1024);
      expect((await seed.upload('slow.tar', body)).status).toBe(201);
      await seed.stop();

      // One byte per second: a pass over 2 MiB would take weeks, so close() must interrupt it.
      const server = await startTestServer({ dataDir, scrubBytesPerSecond: 1 });
      expect(await waitFor(async () => scrubCounters.running)).toBe(true);
      const res = await get(`${server.baseUrl}/distfiles/slow.tar`);
      expect(res.status).toBe(200);
      expect(res.body.equals(body)).toBe(true);
      await server.stop();
      expect(scrubCounters.running).toBe(false);
      expect(await indexRows(backendOf(dataDir), 'SELECT verified_at, quarantined_at FROM blobs')).toEqual([{ verified_at: null, quarantined_at: null }]);
    } finally {
      await rm(dataDir, { recursive: true, force: true });
    }
  });
});
