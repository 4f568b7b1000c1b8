import { existsSync } from 'node:fs';

/** CI (`CI=true`, set by .ci/run) must run every test: a missing tool there is a failure, not a skip. */
export const IN_CI = process.env.CI === 'true';

/**
 * Whether `file` (from Debian package `pkg`) exists. Outside CI a missing tool makes the caller skip and
 * says why on stderr; under CI=true it throws, failing the test file instead of skipping it silently.
 */
export function haveTool(file: string, pkg: string): boolean {
  if (existsSync(file)) return true;
  const why = `${file} is missing (Debian package "${pkg}": apt-get install ${pkg})`;
  if (IN_CI) throw new Error(`CI=true: ${why}; .ci/run installs it`);
  console.error(`SKIPPED: ${why}`);
  return false;
}

/** For a test that finds at run time that it cannot run here (no tmpfs mount, no ptrace): skip, or fail under CI. */
export function skipOrFail(ctx: { skip(note?: string): void }, why: string): void {
  if (IN_CI) throw new Error(`CI=true: ${why}`);
  ctx.skip(why);
}
