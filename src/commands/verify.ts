import type { Readable } from 'node:stream';
import { TokenBucket, throttled } from '../maintenance/throttle.js';
import { selectForVerify, verifyBlob, type VerifyOutcome } from '../maintenance/verify.js';
import { intOption, runCommand, UsageError } from './args.js';
import { cliActor, formatBytes, openDataDir, parseSince } from './context.js';
import { Progress } from './progress.js';

export const VERIFY_USAGE = `usage: fastpull verify [--sample N | --since DATE|AGE] [--data-dir DIR]
  re-hashes blobs; a damaged one is moved to <data>/quarantine/ (s3: PREFIX/trash/quarantine/), marked
  (recorded in the audit log, actor cli:<user>) and 404s until re-uploaded. Exit 0 all good, 1 damage or
  missing files (for cron). On s3 objects are re-read at FASTPULL_SCRUB_BYTES_PER_SECOND when it is set.
  (no option)       every blob
  --sample N        N blobs chosen at random
  --since AGE|DATE  only blobs NOT verified since then: never verified, or last verified before it.
                    AGE is a number and a unit s, m, h, d or w (7d: not verified in the last 7 days);
                    DATE is ISO 8601 (2026-01-31, 2026-01-31T12:00:00Z)`;

/** Re-hashes blobs. Exit codes: 0 all good; 1 corruption or missing files found (cron alerts on it); 2 usage error. */
export async function verifyCommand(args: string[]): Promise<number> {
  const spec = {
    name: 'verify',
    usage: VERIFY_USAGE,
    options: { sample: { type: 'string' }, since: { type: 'string' }, 'data-dir': { type: 'string' } },
  } as const;
  return runCommand(spec, args, async (values) => {
    if (values.sample !== undefined && values.since !== undefined) throw new UsageError('--sample and --since do not combine');
    const selection = {
      ...(values.sample !== undefined ? { sample: intOption(values.sample, 'sample', 1) } : {}),
      ...(values.since !== undefined ? { since: parseSince(values.since) } : {}),
    };
    const ctx = await openDataDir(values['data-dir']);
    try {
      const { total, refs } = await selectForVerify(ctx.queries, selection);
      const progress = new Progress({ label: 'verify', totalFiles: total.blobs, totalBytes: total.bytes });
      const started = Date.now();
      const counts = { ok: 0, corrupt: 0, missing: 0, skipped: 0, bytes: 0 };
      const problems: VerifyOutcome[] = [];
      const actor = cliActor();
      let readBytes = 0;
      // A bucket is re-read over the network and billed per byte: at the scrub's rate when one is set.
      const pace =
        ctx.storage.kind === 's3' && ctx.config.scrubBytesPerSecond > 0 ? throttled(new TokenBucket(ctx.config.scrubBytesPerSecond)) : undefined;
      const counting = (stream: Readable) =>
        (async function* () {
          for await (const chunk of pace ? pace(stream) : (stream as AsyncIterable<Buffer>)) {
            readBytes += chunk.length;
            progress.read(chunk.length);
            yield chunk;
          }
        })();
      for await (const ref of refs) {
        readBytes = 0;
        const outcome = await verifyBlob(ctx.storage, ctx.queries, ref, { wrap: counting });
        counts[outcome.status]++;
        if (outcome.status !== 'skipped') counts.bytes += ref.size;
        if (outcome.status === 'corrupt') {
          problems.push(outcome);
          await ctx.audit.record({ actor, action: 'verify.quarantine', sha512: ref.sha512, detail: `now hashes to ${outcome.actualSha512}` });
          progress.log(`CORRUPT ${ref.sha512} (${describeNames(outcome.names)}): quarantined`);
        } else if (outcome.status === 'missing') {
          problems.push(outcome);
          progress.log(`MISSING ${ref.sha512} (${describeNames(outcome.names)}): indexed but not on disk`);
        }
        // The bar counts the indexed size; a damaged file may have had another size.
        progress.fileDone(Math.max(0, ref.size - readBytes));
      }
      progress.finish();

      const seconds = ((Date.now() - started) / 1000).toFixed(1);
      console.log(`verified ${counts.ok + counts.corrupt} blobs (${formatBytes(counts.bytes)}) in ${seconds}s`);
      console.log(`ok: ${counts.ok}`);
      console.log(`corrupt: ${counts.corrupt}`);
      console.log(`missing: ${counts.missing}`);
      if (counts.skipped > 0) console.log(`skipped (removed or quarantined meanwhile): ${counts.skipped}`);
      for (const p of problems) {
        if (p.status === 'corrupt') {
          console.log(
            `corrupt ${p.sha512} size ${p.size} names ${describeNames(p.names)}; now hashes to ${p.actualSha512} ` +
              `(${p.actualSize} bytes); moved to ${p.quarantinedTo ?? '(already gone)'}; it 404s until re-uploaded`,
          );
        } else if (p.status === 'missing') {
          console.log(`missing ${p.sha512} size ${p.size} names ${describeNames(p.names)}; run fastpull fsck --repair`);
        }
      }
      return counts.corrupt + counts.missing > 0 ? 1 : 0;
    } finally {
      await ctx.close();
    }
  });
}

function describeNames(names: string[]): string {
  return names.length === 0 ? 'no attached name' : names.join(', ');
}
