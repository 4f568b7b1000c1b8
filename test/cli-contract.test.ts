import { spawn } from 'node:child_process';
import { chmod, mkdir, mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildPackage, runBuilt, type Run } from './helpers/built.js';
import { get } from './helpers/server.js';

/**
 * One malformed value per command. A command missing here fails the test below: every command must
 * show that it rejects bad values the same way (exit 2, `fastpull <command>: …` on stderr).
 */
const BAD_VALUE: Record<string, { args: string[]; says: RegExp }> = {
  serve: { args: ['--port', 'abc'], says: /--port: expected an integer from 0 to 65535, got "abc"/ },
  migrate: { args: ['--data-dir'], says: /--data-dir needs a value/ },
  'migrate-index': { args: ['--to', 'mysql://db/x'], says: /--to: expected a postgres:\/\/ URL, got "mysql:\/\/db\/x"/ },
  'migrate-storage': { args: ['--to', 's3://x', '--jobs', '0'], says: /--to: expected s3:\/\/BUCKET\[\/PREFIX\] or local, got "s3:\/\/x"/ },
  import: { args: ['--jobs', '0', '.'], says: /--jobs: expected an integer/ },
  push: { args: ['--origin', '127.0.0.1:8080', '--token', 't', 'file'], says: /--origin "127\.0\.0\.1:8080" has no scheme: write http:\/\/127\.0\.0\.1:8080/ },
  coverage: { args: ['--concurrency', 'many', 'Manifest'], says: /--concurrency: expected an integer/ },
  drain: { args: ['--off=yes'], says: /--off takes no value/ },
  token: { args: ['create', '--name', 'x', '--scope', 'everything'], says: /unknown scope "everything"/ },
  audit: { args: ['--limit', '-1'], says: /--limit/ },
  verify: { args: ['--since', 'last tuesday'], says: /--since: cannot read "last tuesday"/ },
  fsck: { args: ['--repair=please'], says: /--repair takes no value/ },
  reindex: { args: ['extra'], says: /unexpected argument extra/ },
  gc: { args: ['--grace', '1e3'], says: /--grace: expected an integer/ },
  stats: { args: ['--top', '0'], says: /--top: expected an integer >= 1/ },
  purge: { args: ['--retries', 'x', 'foo-1.0.tar.gz'], says: /--retries: expected an integer >= 0, got "x"/ },
  'sync-repo': { args: ['--jobs', '0', '.'], says: /--jobs: expected an integer from 1 to 1024, got "0"/ },
};

describe('the built CLI: every command behaves alike', () => {
  let dir: string;
  let dataDir: string;
  let commands: string[];
  const run = (args: string[], env: Record<string, string> = {}): Promise<Run> =>
    runBuilt(dir, args, { FASTPULL_DATA_DIR: dataDir, ...env });

  beforeAll(async () => {
    dir = await buildPackage();
    dataDir = path.join(dir, 'data');
    const help = await run(['--help']);
    expect(help.code, help.stderr).toBe(0);
    commands = [...help.stdout.split('commands:\n')[1]!.matchAll(/^ {2}([a-z-]+) /gm)].map((m) => m[1]!);
  }, 180_000);
  afterAll(async () => {
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it('lists its commands and prints its version', async () => {
    expect(commands).toEqual(expect.arrayContaining(Object.keys(BAD_VALUE)));
    const version = await run(['--version']);
    const pkg = JSON.parse(await readFile(path.join(dir, 'package.json'), 'utf8')) as { version: string };
    expect(version).toMatchObject({ code: 0, stderr: '' });
    expect(version.stdout).toBe(`fastpull ${pkg.version} (node ${process.version})\n`);
    const unknown = await run(['frobnicate']);
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).toMatch(/^fastpull: unknown command "frobnicate"/);
  });

  it('answers -h and --help on every command with its usage on stdout, exit 0', { timeout: 120_000 }, async () => {
    for (const command of commands) {
      for (const flag of ['-h', '--help']) {
        const res = await run([command, flag]);
        expect(res.code, `${command} ${flag}: ${res.stderr}`).toBe(0);
        expect(res.stdout, `${command} ${flag}`).toMatch(new RegExp(`^usage: fastpull ${command}\\b`));
        expect(res.stderr, `${command} ${flag}`).toBe('');
      }
    }
  });

  it('refuses an unknown option on every command: exit 2, `fastpull <command>: unknown option`', { timeout: 120_000 }, async () => {
    for (const command of commands) {
      const res = await run([command, '--no-such-option']);
      expect(res.code, `${command}: ${res.stdout}${res.stderr}`).toBe(2);
      expect(res.stderr, command).toMatch(new RegExp(`^fastpull ${command}: unknown option --no-such-option\\n`));
      expect(res.stdout, command).toBe('');
    }
  });

  it('refuses a malformed value on every command: exit 2 and a message naming it', { timeout: 120_000 }, async () => {
    for (const command of commands) {
      const bad = BAD_VALUE[command];
      expect(bad, `BAD_VALUE has no case for "${command}"`).toBeDefined();
      const res = await run([command, ...bad!.args]);
      expect(res.code, `${command} ${bad!.args.join(' ')}: ${res.stdout}${res.stderr}`).toBe(2);
      expect(res.stderr, command).toMatch(new RegExp(`^fastpull ${command}( \\w+)?: `));
      expect(res.stderr, command).toMatch(bad!.says);
      // No Node internals (stack frames, "NaN", ERR_ codes) reach the operator.
      expect(res.stderr, command).not.toMatch(/NaN|ERR_|\n\s+at /);
    }
  });

  it('reports a bad setting in the environment the same way, naming the variable', async () => {
    const port = await run(['serve'], { FASTPULL_PORT: 'abc' });
    expect(port.code).toBe(2);
    expect(port.stderr).toMatch(/^fastpull serve: invalid configuration FASTPULL_PORT: expected an integer/);
    const upstreams = await run(['serve'], { FASTPULL_UPSTREAMS: '[{"kind": "gentoo", "url": ' });
    expect(upstreams.code).toBe(2);
    expect(upstreams.stderr).toMatch(/^fastpull serve: invalid configuration FASTPULL_UPSTREAMS: not valid JSON/);
  });

  it('says "not verified in the last 7 days" for verify --since 7d', async () => {
    const res = await run(['verify', '--help']);
    expect(res.stdout).toMatch(/--since AGE\|DATE {2}only blobs NOT verified since then/);
    expect(res.stdout).toMatch(/7d: not verified in the last 7 days/);
  });

  it('serve refuses a data directory it cannot write, saying who must own it', { timeout: 60_000 }, async () => {
    const locked = await mkdtemp(path.join(tmpdir(), 'fastpull-locked-'));
    await chmod(locked, 0o755);
    const isRoot = process.getuid?.() === 0;
    // root writes everywhere: run the server as nobody, the way the image runs as uid 1000 over a root-owned volume.
    const res = isRoot
      ? await new Promise<Run>((resolve, reject) => {
          const child = spawn(process.execPath, [path.join(dir, 'bin', 'fastpull.js'), 'serve', '--host', '127.0.0.1', '--port', '0'], {
            cwd: dir,
            uid: 65534,
            gid: 65534,
            env: { PATH: process.env.PATH ?? '', FASTPULL_DATA_DIR: path.join(locked, 'data') },
            stdio: ['ignore', 'pipe', 'pipe'],
          });
          let stdout = '';
          let stderr = '';
          child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
          child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
          child.on('error', reject);
          child.on('close', (code) => resolve({ code, stdout, stderr }));
        })
      : await (async () => {
          await mkdir(path.join(locked, 'data'));
          await chmod(path.join(locked, 'data'), 0o555);
          return run(['serve', '--host', '127.0.0.1', '--port', '0'], { FASTPULL_DATA_DIR: path.join(locked, 'data') });
        })();
    await chmod(locked, 0o755).catch(() => undefined);
    await rm(locked, { recursive: true, force: true });
    expect(res.code, res.stdout + res.stderr).toBe(1);
    expect(res.stderr).toMatch(/^fastpull: the data directory \S+ is not writable by this process \(uid \d+\): EACCES on /);
    expect(res.stderr).toMatch(/the Docker image runs as uid 1000/);
    expect(res.stderr).not.toMatch(/\n\s+at /);
  });

  it('npm start is the server itself: SIGTERM to npm stops the server', { timeout: 60_000 }, async () => {
    const pkg = JSON.parse(await readFile(path.join(dir, 'package.json'), 'utf8')) as { scripts: Record<string, string> };
    // npm runs a script through sh -c, which forwards no signal: without exec, SIGTERM to npm kills sh and orphans the server.
    expect(pkg.scripts.start).toBe('exec node bin/fastpull.js serve');
    const child = spawn('npm', ['start', '--silent'], {
      cwd: dir,
      env: {
        PATH: process.env.PATH ?? '',
        HOME: process.env.HOME ?? '/tmp',
        FASTPULL_HOST: '127.0.0.1',
        FASTPULL_PORT: '0',
        FASTPULL_DATA_DIR: path.join(dir, 'npm-start-data'),
      },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
    const { baseUrl, pid } = await new Promise<{ baseUrl: string; pid: number }>((resolve, reject) => {
      child.once('exit', (code) => reject(new Error(`npm start exited (${code}) before the server listened`)));
      createInterface({ input: child.stdout! }).on('line', (line) => {
        if (!line.startsWith('{')) return;
        const entry = JSON.parse(line) as { address?: string; pid?: number };
        if (entry.address?.startsWith('http://127.0.0.1:') && entry.pid) resolve({ baseUrl: entry.address, pid: entry.pid });
      });
    });
    expect((await get(`${baseUrl}/healthz`)).status).toBe(200);
    child.kill('SIGTERM');
    expect(await exited).toBe(0);
    // The server process is gone, not orphaned and still listening.
    expect(() => process.kill(pid, 0)).toThrow(/ESRCH/);
    await expect(get(`${baseUrl}/healthz`)).rejects.toThrow();
  });
});
