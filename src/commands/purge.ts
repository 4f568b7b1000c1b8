import { existsSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { loadConfig } from '../config.js';
import { databaseFile } from '../db/open.js';
import { openOriginIndex } from '../db/origin-index.js';
import { backoffMs } from '../events/dispatcher.js';
import { createEventAgent } from '../events/http.js';
import { purgePathsFor } from '../events/paths.js';
import { buildCdnTarget } from '../events/targets.js';
import { isSha512Hex } from '../domain/hashes.js';
import { filenameProblem } from '../domain/names.js';
import { intOption, runCommand, UsageError } from './args.js';

export const PURGE_USAGE = `usage: fastpull purge [--dry-run] [--retries N] [--data-dir DIR] <name|sha512>...
  asks the configured CDN (FASTPULL_CDN) to purge what fastpull purges on its own: for a sha512 every
  hash path form and the paths of each name attached to it, for a name its flat and filename-hash paths
  --dry-run     print the paths and send nothing
  --retries N   attempts after the first failed one (default 4)`;

/**
 * Sends the CDN the same purge fastpull sends on its own: for a sha512 every hash path form plus the
 * paths of each name attached to it (read from the index when there is one), for a name its flat and
 * filename-hash paths as Portage requests them. Exit codes: 0 purged, 1 the CDN refused, 2 usage.
 */
export async function purgeCommand(args: string[]): Promise<number> {
  const spec = {
    name: 'purge',
    usage: PURGE_USAGE,
    options: { 'dry-run': { type: 'boolean' }, retries: { type: 'string' }, 'data-dir': { type: 'string' } },
    positionals: true,
  } as const;
  return runCommand(spec, args, async (values, positionals) => {
    if (positionals.length === 0) throw new UsageError('nothing to purge: name one or more file names or sha512s');
    const retries = values.retries === undefined ? 4 : intOption(values.retries, 'retries', 0);
    const config = loadConfig(values['data-dir'] !== undefined ? { dataDir: values['data-dir'] } : {});

    const dbFile = databaseFile(config.dataDir);
    // A data directory without an index (a fresh machine) still purges hash paths; none is created for it.
    const index = config.databaseUrl !== undefined || existsSync(dbFile) ? await openOriginIndex(config) : undefined;
    const paths: string[] = [];
    try {
      for (const subject of positionals) {
        if (isSha512Hex(subject)) {
          const names = index ? await index.events.attachedNames(subject) : [];
          paths.push(...purgePathsFor({ sha512: subject, names }));
        } else {
          const problem = filenameProblem(subject);
          if (problem) throw new UsageError(`"${subject}" is neither a sha512 (128 lower-case hex digits) nor a file name: ${problem}`);
          paths.push(...purgePathsFor({ filename: subject }));
        }
      }
    } finally {
      await index?.close();
    }
    const unique = [...new Set(paths)];
    for (const p of unique) console.log(p);
    if (!index) console.error(`no index at ${dbFile}: names attached to a sha512 are not known, only its hash paths are purged`);
    if (values['dry-run']) return 0;

    const agent = createEventAgent(config.eventTimeoutMs, config.fetchAllowCidrs);
    try {
      const cdn = buildCdnTarget(config, agent);
      if (!cdn) throw new UsageError('no CDN configured: set FASTPULL_CDN (cdn77 or generic) and its settings');
      const signal = new AbortController().signal;
      for (let attempt = 1; ; attempt++) {
        await cdn.ready(signal);
        const result = await cdn
          .sendPaths('purge', unique, { signal, renew: () => undefined })
          .catch((err: unknown) => ({ ok: false as const, error: (err as Error).message, retryAfterMs: undefined }));
        if (result.ok) {
          console.error(`purged ${unique.length} paths (${cdn.id})`);
          return 0;
        }
        if (attempt > retries) {
          console.error(`fastpull: purge failed: ${result.error}`);
          return 1;
        }
        const delay = Math.max(backoffMs(attempt, config.eventRetryBaseMs, config.eventRetryMaxMs), result.retryAfterMs ?? 0);
        console.error(`purge attempt ${attempt} failed (${result.error}); retrying in ${Math.round(delay / 100) / 10}s`);
        await sleep(delay);
      }
    } finally {
      await agent.destroy().catch(() => undefined);
    }
  });
}
