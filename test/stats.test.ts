import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runCli } from './helpers/cli.js';
import { content, detach, flipBit, sha512, uploadBlob } from './helpers/integrity.js';
import { startTestServer, type TestServer } from './helpers/server.js';

describe('fastpull stats', () => {
  let server: TestServer;
  const shared = content('shared', 100);
  const big = content('big', 1000);
  const pinned = content('pinned', 50);
  const dropped = content('dropped', 10);
  const damaged = content('damaged', 30);

  beforeAll(async () => {
    server = await startTestServer();
    // One blob under two names (dedup), a larger one, a pinned blob with no name,
    // a blob whose only name was detached, and one that verify will quarantine.
    expect((await server.upload('shared-a.tar', shared)).status).toBe(201);
    expect((await server.upload('shared-b.tar', shared)).status).toBe(200);
    expect((await server.upload('big.tar', big)).status).toBe(201);
    expect(await uploadBlob(server.baseUrl, pinned)).toBe(201);
    expect((await server.upload('dropped.tar', dropped)).status).toBe(201);
    expect(await detach(server.baseUrl, 'dropped.tar')).toBe(200);
    expect((await server.upload('damaged.tar', damaged)).status).toBe(201);
    await flipBit(server.dataDir, sha512(damaged), 0);
    expect((await runCli(['verify'], { FASTPULL_DATA_DIR: server.dataDir })).code).toBe(1);
  });
  afterAll(async () => server.stop());

  it('--json gives the counts, bytes, dedup savings and largest names', async () => {
    const res = await runCli(['stats', '--json'], { FASTPULL_DATA_DIR: server.dataDir });
    expect(res.code, res.stderr).toBe(0);
    const s = JSON.parse(res.stdout);
    expect(s).toMatchObject({
      blobs: 5,
      names: 5,
      attachedNames: 4,
      attachedPairs: 4,
      quarantined: 1,
      pinned: 1,
      bytesStored: 100 + 1000 + 50 + 10,
      quarantinedBytes: 30,
      // pinned (50) and the detached one (10) have no attached name.
      unreferencedBlobs: 2,
      unreferencedBytes: 60,
      // shared is stored once for two names: one copy (100 bytes) saved.
      dedupSavedBytes: 100,
      sharedBlobs: 1,
    });
    expect(s.largest.map((l: any) => [l.filename, l.size])).toEqual([
      ['big.tar', 1000],
      ['shared-a.tar', 100],
      ['shared-b.tar', 100],
      ['damaged.tar', 30],
    ]);
    expect(s.largest[0].sha512).toBe(sha512(big));
  });

  it('prints the same numbers for people, and --top limits the list', async () => {
    const res = await runCli(['stats', '--top', '2'], { FASTPULL_DATA_DIR: server.dataDir });
    expect(res.code, res.stderr).toBe(0);
    expect(res.stdout).toMatch(/^blobs: +5$/m);
    expect(res.stdout).toMatch(/^bytes stored: +1160 bytes \(1\.1 KiB\)$/m);
    expect(res.stdout).toMatch(/^names: +5 \(attached: 4, attached name\/hash pairs: 4\)$/m);
    expect(res.stdout).toMatch(/^quarantined blobs: +1 \(30 bytes/m);
    expect(res.stdout).toMatch(/^pinned blobs: +1$/m);
    expect(res.stdout).toMatch(/^dedup saved: +100 bytes/m);
    expect(res.stdout).toMatch(/^ +1000 +1000 B +big\.tar$/m);
    expect(res.stdout).toMatch(/shared-a\.tar/);
    expect(res.stdout).not.toMatch(/shared-b\.tar/);
  });
});
