import { spawnSync } from 'node:child_process';
import { chmod, copyFile, mkdir, mkdtemp, symlink } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { runNode, type CliResult } from './cli.js';

export const ROOT = fileURLToPath(new URL('../..', import.meta.url));

/**
 * Compiles the sources into a fresh directory laid out like the Docker image (dist/, bin/, package.json,
 * migrations/, public/, node_modules/), so a test runs the CLI users run, not the sources through tsx.
 */
export async function buildPackage(): Promise<string> {
  const dir = await mkdtemp(path.join(tmpdir(), 'fastpull-built-'));
  // Readable by every user: a test may run it under another uid, as the image runs as uid 1000.
  await chmod(dir, 0o755);
  for (const entry of ['node_modules', 'public', 'migrations']) await symlink(path.join(ROOT, entry), path.join(dir, entry));
  await copyFile(path.join(ROOT, 'package.json'), path.join(dir, 'package.json'));
  // Copied, not linked: Node resolves imports from a module's real path, and bin/ must reach this dist/.
  await mkdir(path.join(dir, 'bin'));
  await copyFile(path.join(ROOT, 'bin', 'fastpull.js'), path.join(dir, 'bin', 'fastpull.js'));
  const tsc = spawnSync(
    process.execPath,
    [path.join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', path.join(ROOT, 'tsconfig.build.json'), '--outDir', path.join(dir, 'dist')],
    { encoding: 'utf8', timeout: 170_000 },
  );
  if (tsc.status !== 0) throw new Error(`tsc failed:\n${tsc.stdout}${tsc.stderr}`);
  return dir;
}

export type Run = CliResult;

/** Runs `node <dir>/bin/fastpull.js <args>` with only PATH, HOME and `env`. */
export function runBuilt(dir: string, args: string[], env: Record<string, string> = {}): Promise<Run> {
  return runNode([path.join(dir, 'bin', 'fastpull.js'), ...args], env, { cwd: dir });
}
