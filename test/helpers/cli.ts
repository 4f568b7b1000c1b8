import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { withBackendEnv } from './backend.js';

const CLI = fileURLToPath(new URL('../../src/cli.ts', import.meta.url));

export interface CliResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/**
 * Runs `fastpull <args>` from the sources (through tsx) as a real child process, with only the
 * environment given here plus PATH/HOME, so the caller's FASTPULL_* variables never leak in.
 * A FASTPULL_DATA_DIR of a test server brings that server's bucket prefix and database along (s3+postgres runs).
 */
export function runCli(args: string[], env: Record<string, string> = {}, input?: string): Promise<CliResult> {
  return runNode(['--import', 'tsx', CLI, ...args], withBackendEnv(env), { input: input ?? '' });
}

/**
 * Runs node with these arguments and only the given environment plus PATH/HOME, and collects what the
 * process wrote. Without `input`, stdin is closed from the start.
 */
export function runNode(args: string[], env: Record<string, string>, options: { cwd?: string; input?: string } = {}): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, args, {
      ...(options.cwd ? { cwd: options.cwd } : {}),
      env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '/tmp', ...env },
      stdio: [options.input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout!.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
    if (options.input !== undefined) child.stdin!.end(options.input);
  });
}
