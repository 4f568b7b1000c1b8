import { loadConfig } from '../config.js';
import { readManifests, type DistEntry } from '../ingest/manifest.js';
import { intOption, runCommand, UsageError } from './args.js';
import { ORIGIN_OPTIONS, ORIGIN_USAGE, originHas, originSettings, type RetryPolicy } from './origin-client.js';

const USAGE = `usage: fastpull coverage [--origin URL] [--concurrency N] [--retries N] [--retry-delay-ms MS] <Manifest...>
  prints one line per DIST entry the origin lacks (MISSING, WRONG-SIZE, UNCHECKED); exit 0 when it has
  every entry, 1 when some are missing, 2 when the check itself could not be completed
${ORIGIN_USAGE}
  --concurrency N       HEAD requests in flight at once (default 8)`;

export async function coverageCommand(args: string[]): Promise<number> {
  const spec = {
    name: 'coverage',
    usage: USAGE,
    options: { ...ORIGIN_OPTIONS, concurrency: { type: 'string' } },
    positionals: true,
  } as const;
  let setup: { origin: string; policy: RetryPolicy; concurrency: number; entries: DistEntry[] } | undefined;
  const code = await runCommand(spec, args, async (values, manifestFiles) => {
    if (manifestFiles.length === 0) throw new UsageError('no Manifest given');
    const concurrency = intOption(values.concurrency ?? '8', 'concurrency', 1, 1024);
    const { origin, policy } = originSettings(values, loadConfig().pushOrigin, (what, attempt, reason) =>
      console.error(`retry ${attempt}: ${what}: ${reason}`),
    );
    let manifests;
    try {
      manifests = await readManifests(manifestFiles);
    } catch (err) {
      throw new UsageError(`cannot read Manifest: ${(err as Error).message}`);
    }
    for (const warning of manifests.warnings) console.error(`manifest: ${warning}`);
    setup = { origin, policy, concurrency, entries: manifests.entries };
    return 0;
  });
  if (!setup) return code;
  const { origin, policy, concurrency, entries } = setup;

  // One HEAD per distinct hash: several names may share the same bytes.
  const hashes = [...new Set(entries.flatMap((e) => (e.sha512 ? [e.sha512] : [])))];
  let next = 0;
  const results = new Map<string, { present: boolean; size: number | undefined } | Error>();
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
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
