import { loadConfig } from '../config.js';
import { readManifests, type DistEntry } from '../ingest/manifest.js';
import { normalizeOrigin, originHas, parseOriginArgs, type RetryPolicy } from './origin-client.js';

const USAGE = `usage: fastpull coverage [--origin URL] [--concurrency N] [--retries N] <Manifest...>
  prints one line per DIST entry the origin lacks; exit 0 when it has every entry, 1 when some are missing,
  2 when the check itself could not be completed`;

export async function coverageCommand(args: string[]): Promise<number> {
  if (args.includes('--help') || args.includes('-h')) {
    console.log(USAGE);
    return 0;
  }
  const parsed = parseOriginArgs(args, { concurrency: { type: 'string', default: '8' } }, [], 'no Manifest given');
  if ('error' in parsed || !/^[1-9]\d*$/.test(parsed.values.concurrency!)) {
    const message = 'error' in parsed ? parsed.error : '--concurrency must be a positive integer';
    console.error(`fastpull coverage: ${message}\n${USAGE}`);
    return 2;
  }
  const { values, positionals: manifestFiles } = parsed;
  const originText = values.origin ?? loadConfig().pushOrigin;
  if (!originText) {
    console.error(`fastpull coverage: no origin (--origin or FASTPULL_ORIGIN)\n${USAGE}`);
    return 2;
  }
  let origin: string;
  let entries: DistEntry[];
  try {
    origin = normalizeOrigin(originText);
    const manifests = await readManifests(manifestFiles);
    for (const warning of manifests.warnings) console.error(`manifest: ${warning}`);
    entries = manifests.entries;
  } catch (err) {
    console.error(`fastpull coverage: ${(err as Error).message}`);
    return 2;
  }

  const policy: RetryPolicy = {
    retries: Number(values.retries),
    baseDelayMs: Number(values['retry-delay-ms']),
    onRetry: (what, attempt, reason) => console.error(`retry ${attempt}: ${what}: ${reason}`),
  };
  // One HEAD per distinct hash: several names may share the same bytes.
  const hashes = [...new Set(entries.flatMap((e) => (e.sha512 ? [e.sha512] : [])))];
  let next = 0;
  const results = new Map<string, { present: boolean; size: number | undefined } | Error>();
  await Promise.all(
    Array.from({ length: Number(values.concurrency) }, async () => {
      while (next < hashes.length) {
        const sha512 = hashes[next++]!;
        results.set(sha512, await originHas(origin, sha512, policy).catch((err: Error) => err));
      }
    }),
  );

  let present = 0;
  let missing = 0;
  let errors = 0;
  for (const entry of entries) {
    const result = entry.sha512 ? results.get(entry.sha512) : undefined;
    if (!entry.sha512) {
      missing++;
      console.log(`UNCHECKED ${entry.filename} ${entry.size} (no SHA512 in ${entry.source})`);
    } else if (result instanceof Error) {
      errors++;
      console.error(`error ${entry.filename}: ${result.message}`);
    } else if (!result?.present) {
      missing++;
      console.log(`MISSING ${entry.filename} ${entry.size} ${entry.sha512}`);
    } else if (result.size !== entry.size) {
      // Same hash, other length: the origin's copy is damaged (or a cache truncated it).
      missing++;
      console.log(`WRONG-SIZE ${entry.filename} ${entry.size} ${entry.sha512} (origin has ${result.size} bytes)`);
    } else present++;
  }
  console.error(
    `coverage: ${present} of ${entries.length} DIST entries present on ${origin}, ${missing} missing` +
      (errors > 0 ? `, ${errors} could not be checked` : ''),
  );
  if (errors > 0) return 2;
  return missing > 0 ? 1 : 0;
}
