import { spawn, type ChildProcess } from 'node:child_process';
import { accessSync, constants, createWriteStream } from 'node:fs';
import { createServer, connect } from 'node:net';
import path from 'node:path';

/**
 * Shared by the harnesses that start real services (Swift, PostgreSQL) for a test file: finding their
 * binaries, free loopback ports, starting and stopping processes we own.
 */

/** The first of `names` missing from PATH (or given as absolute paths), as a reason to skip; undefined when all exist. */
export function missingBinaries(names: string[], packages: string): string | undefined {
  const dirs = (process.env.PATH ?? '').split(path.delimiter);
  const missing = names.filter((name) => {
    const candidates = path.isAbsolute(name) ? [name] : dirs.map((d) => path.join(d, name));
    return !candidates.some((file) => {
      try {
        accessSync(file, constants.X_OK);
        return true;
      } catch {
        return false;
      }
    });
  });
  return missing.length === 0 ? undefined : `${missing.join(', ')} not installed (Debian: apt-get install ${packages})`;
}

/**
 * Decides for a test file whether a service can run: under CI=true a missing package fails the file;
 * otherwise the tests skip and the reason is printed. Returns true when the tests should skip.
 */
export function skipWithoutService(service: string, missing: string | undefined): boolean {
  if (missing === undefined) return false;
  if (process.env.CI === 'true') throw new Error(`${service} is required under CI: ${missing}`);
  console.warn(`skipping ${service} tests: ${missing}`);
  return true;
}

export async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as { port: number };
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

export async function portOpen(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ port, host: '127.0.0.1' });
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
}

/** Polls `probe` every 200 ms until it answers true, or fails after `timeoutMs` naming `what`. */
export async function waitFor(what: string, probe: () => Promise<boolean>, timeoutMs = 60_000, logFile?: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await probe().catch(() => false))) {
    if (Date.now() > deadline) throw new Error(`${what} did not come up within ${timeoutMs} ms${logFile ? ` (log: ${logFile})` : ''}`);
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
}

/** A long-running process with its output in `logFile`; exits early are reported by `exited`. */
export class Service {
  readonly child: ChildProcess;
  exited: { code: number | null; signal: NodeJS.Signals | null } | undefined;

  constructor(
    readonly name: string,
    command: string,
    args: string[],
    readonly logFile: string,
    env: NodeJS.ProcessEnv = process.env,
  ) {
    const log = createWriteStream(logFile, { flags: 'a' });
    this.child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'], env });
    this.child.stdout!.pipe(log);
    this.child.stderr!.pipe(log);
    this.child.once('exit', (code, signal) => (this.exited = { code, signal }));
  }

  /** SIGTERM, then SIGKILL if it has not exited after `graceMs`. */
  async stop(graceMs = 5000): Promise<void> {
    if (this.exited || this.child.pid === undefined) return;
    const gone = new Promise<void>((resolve) => this.child.once('exit', () => resolve()));
    this.child.kill('SIGTERM');
    const timer = setTimeout(() => this.child.kill('SIGKILL'), graceMs);
    await gone;
    clearTimeout(timer);
  }
}

/** Runs a command to completion; rejects with its output when it fails. */
export function run(command: string, args: string[], options: { cwd?: string } = {}): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'], ...options });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (out += d.toString()));
    child.once('error', reject);
    child.once('exit', (code) => (code === 0 ? resolve(out) : reject(new Error(`${command} ${args.join(' ')} exited ${code}:\n${out}`))));
  });
}
