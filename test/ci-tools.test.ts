import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const TOOLS = fileURLToPath(new URL('./helpers/tools.ts', import.meta.url));

/** What a test file does at load time when its tool is absent, in and out of CI. */
function probe(ci: string | undefined) {
  const env: Record<string, string> = { PATH: process.env.PATH ?? '' };
  if (ci !== undefined) env.CI = ci;
  return spawnSync(
    process.execPath,
    ['--import', 'tsx', '-e', `import(${JSON.stringify(TOOLS)}).then((m) => console.log('have:', m.haveTool('/nonexistent/tool', 'tool-pkg')))`],
    { env, encoding: 'utf8' },
  );
}

describe('a missing test tool', () => {
  it('fails under CI=true, naming the Debian package', () => {
    const res = probe('true');
    expect(res.status).not.toBe(0);
    expect(res.stderr).toMatch(/CI=true: \/nonexistent\/tool is missing \(Debian package "tool-pkg"/);
  });

  it('is skipped, saying why, outside CI', () => {
    const res = probe(undefined);
    expect(res.status).toBe(0);
    expect(res.stdout).toBe('have: false\n');
    expect(res.stderr).toMatch(/^SKIPPED: \/nonexistent\/tool is missing \(Debian package "tool-pkg": apt-get install tool-pkg\)/);
  });
});
