import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { copyFile, mkdir, mkdtemp, rm, symlink } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { get } from './helpers/server.js';

const ROOT = fileURLToPath(new URL('..', import.meta.url));

/**
 * The Docker image's final stage holds dist/, bin/, migrations/, public/, package.json and node_modules, and
 * nothing else. Rebuilding into such a tree and running bin/fastpull.js proves the compiled server finds its
 * page files, migrations and package.json there, not only when run from src/ with tsx.
 */
describe('the built package, laid out like the Docker image', () => {
  let dir: string;
  let child: ChildProcess | undefined;
  let baseUrl: string;

  beforeAll(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'fastpull-image-'));
    for (const entry of ['node_modules', 'public', 'migrations']) {
      await symlink(path.join(ROOT, entry), path.join(dir, entry));
    }
    await copyFile(path.join(ROOT, 'package.json'), path.join(dir, 'package.json'));
    // Copied, not linked: Node resolves imports from a module's real path, and bin/ must reach this dist/.
    await mkdir(path.join(dir, 'bin'));
    await copyFile(path.join(ROOT, 'bin', 'fastpull.js'), path.join(dir, 'bin', 'fastpull.js'));
    const tsc = spawnSync(
      process.execPath,
      [path.join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', path.join(ROOT, 'tsconfig.build.json'), '--outDir', path.join(dir, 'dist')],
      { encoding: 'utf8', timeout: 120_000 },
    );
    expect(tsc.status, tsc.stdout + tsc.stderr).toBe(0);

    child = spawn(process.execPath, [path.join(dir, 'bin', 'fastpull.js'), 'serve', '--host', '127.0.0.1', '--port', '0'], {
      cwd: dir,
      env: { PATH: process.env.PATH ?? '', FASTPULL_DATA_DIR: path.join(dir, 'data'), FASTPULL_LOG_LEVEL: 'info' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stderr = '';
    child.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    baseUrl = await new Promise<string>((resolve, reject) => {
      child!.once('exit', (code) => reject(new Error(`server exited (${code}): ${stderr}`)));
      createInterface({ input: child!.stdout! }).on('line', (line) => {
        const entry = JSON.parse(line) as { msg?: string; address?: string };
        if (entry.msg === 'fastpull origin listening' && entry.address) resolve(entry.address);
      });
    });
  }, 180_000);

  afterAll(async () => {
    if (child && child.exitCode === null) {
      const exited = new Promise((resolve) => child!.once('exit', resolve));
      child.kill('SIGTERM');
      await exited;
    }
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it('serves the status page, its assets and the JSON behind it', async () => {
    for (const [url, type] of [
      ['/', 'text/html'],
      ['/ui/status.js', 'text/javascript'],
      ['/ui/status.css', 'text/css'],
      ['/api/v1/status', 'application/json'],
    ]) {
      const res = await get(baseUrl + url);
      expect(res.status, url).toBe(200);
      expect(res.headers['content-type'], url).toMatch(new RegExp(`^${type}`));
    }
  });

  it('serves the OpenAPI document with the package version', async () => {
    const res = await get(`${baseUrl}/api/v1/openapi.json`);
    const doc = JSON.parse(res.body.toString());
    expect(doc.info.version).toBe((await import('../package.json', { with: { type: 'json' } })).default.version);
  });

  it('applied the migrations to a fresh data directory', async () => {
    const res = await get(`${baseUrl}/distfiles/layout.conf`);
    expect(res.status).toBe(200);
    expect(res.body.toString()).toContain('0=content-hash SHA512 8:8:8');
    const status = JSON.parse((await get(`${baseUrl}/api/v1/status`)).body.toString());
    expect(status.totals).toMatchObject({ blobs: 0, bytes: 0, names: 0 });
  });
});
