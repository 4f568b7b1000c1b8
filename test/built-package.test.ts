import { spawn, type ChildProcess } from 'node:child_process';
import { readFile, rm } from 'node:fs/promises';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildPackage, ROOT } from './helpers/built.js';
import { get } from './helpers/server.js';

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
    dir = await buildPackage();

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
    expect(status.totals).toMatchObject({ blobs: 0, bytes: 0, names: 0, dedupSavedBytes: 0 });
    // The status page reads the version from package.json beside dist/.
    expect(status.server.version).toBe(JSON.parse(await readFile(path.join(ROOT, 'package.json'), 'utf8')).version);
  });
});
