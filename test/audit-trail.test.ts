import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { userInfo, tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runCli } from './helpers/cli.js';
import { indexRows } from './helpers/backend.js';
import { content, detach, flipBit, putBlob, sha512, waitFor } from './helpers/integrity.js';
import { startTestServer, type TestServer } from './helpers/server.js';

interface AuditRow {
  actor: string;
  action: string;
  filename: string | null;
  sha512: string | null;
  detail: string | null;
}

const ME = `cli:${userInfo().username}`;

/** Every change to the store or the tokens leaves a record naming who made it, whichever way it was made. */
describe('audit trail of commands and the background scrub', () => {
  let server: TestServer;
  let work: string;
  const cli = (...args: string[]) => runCli(args, { FASTPULL_DATA_DIR: server.dataDir });
  const audit = (action: string): Promise<AuditRow[]> =>
    indexRows<AuditRow>(server, 'SELECT actor, action, filename, sha512, detail FROM audit_log WHERE action = ? ORDER BY id', [action]);

  beforeAll(async () => {
    server = await startTestServer();
    work = await mkdtemp(path.join(tmpdir(), 'fastpull-audit-'));
  });
  afterAll(async () => {
    await server?.stop();
    if (work) await rm(work, { recursive: true, force: true });
  });

  it('token create and revoke: actor cli:<user>', async () => {
    expect((await cli('token', 'create', '--name', 'spider', '--scope', 'upload')).code).toBe(0);
    expect((await cli('token', 'revoke', 'spider')).code).toBe(0);
    expect(await audit('token.create')).toEqual([expect.objectContaining({ actor: ME, detail: 'spider: upload' })]);
    expect(await audit('token.revoke')).toEqual([expect.objectContaining({ actor: ME, detail: 'spider' })]);
  });

  it('import: one record for the run, and the names it attached carry the same actor', async () => {
    const tree = path.join(work, 'distdir');
    await mkdir(tree);
    await writeFile(path.join(tree, 'imported-1.0.tar.gz'), content('imported', 3000));
    const res = await cli('import', tree);
    expect(res.code, res.stdout + res.stderr).toBe(0);
    const [row] = await audit('import');
    expect(row).toMatchObject({ actor: ME });
    expect(row!.detail).toContain(`${tree} (flat): 1 imported, 0 already present`);
    expect(await indexRows(server, 'SELECT attached_by FROM names WHERE filename = ?', ['imported-1.0.tar.gz'])).toEqual([{ attached_by: ME }]);
  });

  it('gc: one record per removed blob', { timeout: 30_000 }, async () => {
    const body = content('garbage', 100);
    expect((await server.upload('garbage.tar', body)).status).toBe(201);
    expect(await detach(server.baseUrl, 'garbage.tar')).toBe(200);
    const res = await cli('gc', '--grace', '0');
    expect(res.code, res.stdout + res.stderr).toBe(0);
    expect(res.stdout).toMatch(/removed 1 blobs/);
    expect(await audit('gc.remove')).toEqual([expect.objectContaining({ actor: ME, sha512: sha512(body) })]);
  });

  it('fsck --repair: one record per repair; a plain fsck records nothing', async () => {
    const stray = content('stray', 50);
    await putBlob(server.dataDir, sha512(stray), stray);
    expect((await cli('fsck')).code).toBe(1);
    expect(await audit('fsck.repair')).toEqual([]);
    const res = await cli('fsck', '--repair');
    expect(res.code, res.stdout + res.stderr).toBe(0);
    expect(await audit('fsck.repair')).toEqual([expect.objectContaining({ actor: ME, sha512: sha512(stray), detail: expect.stringMatching(/^unindexed-blob: /) })]);
  });

  it('verify: a quarantine is recorded', async () => {
    const body = content('victim', 4000);
    expect((await server.upload('victim.tar', body)).status).toBe(201);
    await flipBit(server.dataDir, sha512(body), 10);
    expect((await cli('verify')).code).toBe(1);
    expect(await audit('verify.quarantine')).toEqual([expect.objectContaining({ actor: ME, sha512: sha512(body) })]);
  });

  it('the background scrub records its quarantines as actor "scrub"', { timeout: 30_000 }, async () => {
    const scrubbing = await startTestServer({ dataDir: server.dataDir, scrubBytesPerSecond: 64 * 1024 * 1024, scrubPauseSeconds: 0 });
    try {
      const body = content('scrubbed', 5000);
      expect((await scrubbing.upload('scrubbed.tar', body)).status).toBe(201);
      await flipBit(server.dataDir, sha512(body), 100);
      expect(await waitFor(async () => (await audit('scrub.quarantine')).length > 0)).toBe(true);
      expect(await audit('scrub.quarantine')).toEqual([expect.objectContaining({ actor: 'scrub', sha512: sha512(body) })]);
    } finally {
      await scrubbing.close();
    }
  });

  it('fastpull audit --actor lists what one operator did', async () => {
    const res = await cli('audit', '--actor', ME, '--json', '--limit', '100');
    expect(res.code, res.stderr).toBe(0);
    const actions = (JSON.parse(res.stdout) as AuditRow[]).map((r) => r.action);
    expect(actions).toEqual(['token.create', 'token.revoke', 'import', 'gc.remove', 'fsck.repair', 'verify.quarantine']);
  });
});
