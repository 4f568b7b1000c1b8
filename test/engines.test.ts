import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const require = createRequire(import.meta.url);
const semver = require('semver') as { satisfies(version: string, range: string): boolean };
const read = (file: string) => JSON.parse(readFileSync(fileURLToPath(new URL(`../${file}`, import.meta.url)), 'utf8'));

/** The first release of each line `engines` claims: anything a dependency needs beyond that breaks someone. */
const SUPPORTED = ['20.18.1', '22.0.0', '24.0.0'];
/**
 * The tools that lint and test (eslint 10, vite under vitest 4) need Node 20.19 / 22.13 or later; they are not
 * installed in the image (npm ci --omit=dev) and the README says developing needs these versions.
 */
const DEVELOPMENT = ['20.19.0', '22.13.0', '24.0.0'];

describe('supported Node versions', () => {
  const pkg = read('package.json') as { engines: { node: string } };
  const lock = read('package-lock.json') as { packages: Record<string, { dev?: boolean; engines?: { node?: string } | string[] }> };

  it('package.json claims Node 20.18.1 and later, and the lockfile agrees', () => {
    expect(pkg.engines.node).toBe('>=20.18.1');
    expect((lock.packages[''] as { engines: { node: string } }).engines.node).toBe(pkg.engines.node);
    for (const version of SUPPORTED) expect(semver.satisfies(version, pkg.engines.node), version).toBe(true);
  });

  it('every package the server installs runs on each supported line (npm ci would warn EBADENGINE otherwise)', () => {
    const refusing: string[] = [];
    for (const [where, entry] of Object.entries(lock.packages)) {
      const range = !where || Array.isArray(entry.engines) ? undefined : entry.engines?.node;
      if (!range) continue;
      for (const version of entry.dev ? DEVELOPMENT : SUPPORTED) {
        if (!semver.satisfies(version, range)) refusing.push(`${where} (${entry.dev ? 'dev' : 'runtime'}) needs node ${range}, not ${version}`);
      }
    }
    expect(refusing).toEqual([]);
  });
});
