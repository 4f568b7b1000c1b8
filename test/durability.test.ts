import { spawn } from 'node:child_process';
import { readFile, rm } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { request } from 'undici';
import { describe, expect, it } from 'vitest';
import { sha512 } from './helpers/core.js';
import { ADMIN_TOKEN, makeDataDir } from './helpers/server.js';
import { haveTool, skipOrFail } from './helpers/tools.js';

const CLI = fileURLToPath(new URL('../src/cli.ts', import.meta.url));
const STRACE = '/usr/bin/strace';

/**
 * The write recipe's ordering can only be seen from the system calls: a crash test would need a
 * power cut. The real server runs as a child under strace (Debian package "strace"), which
 * prints each fsync'd descriptor's path (-y).
 */
describe.skipIf(!haveTool(STRACE, 'strace'))('write recipe, as seen by strace', () => {
  it('fsyncs the temp file before linking it, then the new blob directory and every parent it created', async (ctx) => {
    const dataDir = await makeDataDir();
    const trace = path.join(dataDir, 'strace.out');
    const child = spawn(
      STRACE,
      ['-f', '-y', '-qq', '-e', 'trace=fsync,fdatasync,link,linkat', '-o', trace, process.execPath, '--import', 'tsx', CLI, 'serve'],
      {
        env: {
          PATH: process.env.PATH ?? '',
          HOME: process.env.HOME ?? '/tmp',
          FASTPULL_DATA_DIR: dataDir,
          FASTPULL_HOST: '127.0.0.1',
          FASTPULL_PORT: '0',
          FASTPULL_ADMIN_TOKEN: ADMIN_TOKEN,
        },
        stdio: ['ignore', 'pipe', 'pipe'],
      },
    );
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const exited = new Promise<number | null>((resolve) => child.on('close', resolve));
    let serverPid: number | undefined;
    try {
      const started = new Promise<string>((resolve, reject) => {
        let out = '';
        child.stdout.on('data', (d: Buffer) => {
          out += d.toString();
          for (const line of out.split('\n')) {
            if (!line.includes('fastpull origin listening')) continue;
            const json = JSON.parse(line);
            serverPid = json.pid;
            resolve(json.address);
          }
        });
        child.on('close', () => reject(new Error(`server did not start: ${stderr}`)));
      });
      let address: string;
      try {
        address = await started;
      } catch (err) {
        // Containers without CAP_SYS_PTRACE (or with a seccomp filter) cannot run strace at all.
        if (/ptrace|Operation not permitted/i.test(stderr)) return skipOrFail(ctx, `strace cannot trace here: ${stderr.trim()}`);
        throw err;
      }

      const body = 'durable bytes';
      const res = await request(`${address}/api/v1/distfiles/durable-1.0.tar.gz`, {
        method: 'PUT',
        headers: { authorization: `Bearer ${ADMIN_TOKEN}` },
        body,
      });
      expect(res.statusCode).toBe(201);
      await res.body.dump();
      process.kill(serverPid!, 'SIGTERM');
      expect(await exited).toBe(0);

      const h = sha512(body);
      const blobs = path.join(dataDir, 'blobs');
      const leaf = path.join(blobs, h.slice(0, 2), h.slice(2, 4), h.slice(4, 6));
      const calls = (await readFile(trace, 'utf8')).split('\n').filter((l) => / (f(data)?sync|link(at)?)\(/.test(l));
      const index = (re: RegExp) => calls.findIndex((l) => re.test(l));
      const esc = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
      const tmpSync = index(new RegExp(`fsync\\(\\d+<${esc(path.join(dataDir, 'tmp'))}/[^>]+\\.tmp>\\)`));
      const linked = index(new RegExp(`link(at)?\\(.*${esc(path.join(leaf, h))}`));
      expect(tmpSync, calls.join('\n')).toBeGreaterThanOrEqual(0);
      expect(linked, calls.join('\n')).toBeGreaterThan(tmpSync);
      for (const dir of [leaf, path.dirname(leaf), path.dirname(path.dirname(leaf)), blobs]) {
        const synced = index(new RegExp(`fsync\\(\\d+<${esc(dir)}>\\)`));
        expect(synced, `fsync of ${dir}\n${calls.join('\n')}`).toBeGreaterThan(linked);
      }
    } finally {
      if (serverPid !== undefined) {
        try {
          process.kill(serverPid, 'SIGKILL');
        } catch {
          // already gone
        }
      }
      child.kill('SIGKILL');
      await exited;
      await rm(dataDir, { recursive: true, force: true });
    }
  });
});
