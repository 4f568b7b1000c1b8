import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { backendEnv, rememberTarget, targetFor, type BackendTarget } from './backend.js';

const CLI = fileURLToPath(new URL('../../src/cli.ts', import.meta.url));

export interface ServeProcess {
  child: ChildProcess;
  baseUrl: string;
  /** FASTPULL_DATA_DIR as given (undefined: the process's default). */
  dataDir: string | undefined;
  /** Its bucket prefix and database (s3+postgres), for the assertion helpers in backend.ts. */
  backend: BackendTarget | undefined;
  /** Everything the process wrote to stdout and stderr so far (its JSON logs). */
  output(): string;
  /** Resolves with the exit code (or the signal name) once the process has exited. */
  exited: Promise<number | string>;
}

/**
 * Starts `fastpull serve` from the sources as a real child process on 127.0.0.1:<random port>,
 * with only the given environment (plus PATH/HOME), and waits until it logs its address.
 * Under FASTPULL_TEST_BACKEND=s3+postgres a process over FASTPULL_DATA_DIR gets that data dir's bucket prefix
 * and database (fresh the first time), unless `env` names storage or a database; `options.backend` puts it on a
 * given target instead (a replica of another process).
 */
export async function startServeProcess(
  env: Record<string, string>,
  args: string[] = [],
  options: { backend?: BackendTarget } = {},
): Promise<ServeProcess> {
  const dataDir = env.FASTPULL_DATA_DIR;
  const explicit = env.FASTPULL_STORAGE !== undefined || env.FASTPULL_DATABASE_URL !== undefined;
  let backend: BackendTarget | undefined;
  if (!explicit) {
    if (options.backend) {
      backend = options.backend;
      if (dataDir !== undefined) rememberTarget(dataDir, backend);
    } else if (dataDir !== undefined) backend = await targetFor(dataDir);
  }
  const child = spawn(process.execPath, ['--import', 'tsx', CLI, 'serve', ...args], {
    env: {
      PATH: process.env.PATH ?? '',
      HOME: process.env.HOME ?? '/tmp',
      FASTPULL_HOST: '127.0.0.1',
      FASTPULL_PORT: '0',
      FASTPULL_LOG_LEVEL: 'info',
      ...(backend ? backendEnv(backend) : {}),
      ...env,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  const exited = new Promise<number | string>((resolve) => {
    child.on('exit', (code, signal) => resolve(code ?? signal ?? 'unknown'));
  });
  const baseUrl = await new Promise<string>((resolve, reject) => {
    const onData = (d: Buffer) => {
      out += d.toString();
      const m = /"address":"(http:\/\/127\.0\.0\.1:\d+)"[^\n]*fastpull origin listening/.exec(out);
      if (m) resolve(m[1]!);
    };
    child.stdout!.on('data', onData);
    child.stderr!.on('data', (d: Buffer) => (out += d.toString()));
    child.on('exit', (code) => reject(new Error(`fastpull serve exited (${code}) before listening:\n${out}`)));
  });
  return { child, baseUrl, dataDir, backend, output: () => out, exited };
}
