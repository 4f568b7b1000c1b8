import { collect, GC_SETTLE_MS, gcCandidates, orphanCandidates, type GcCandidate } from '../maintenance/gc.js';
import { intOption, runCommand } from './args.js';
import { cliActor, formatBytes, openDataDir } from './context.js';

/** sysexits' EX_TEMPFAIL: nothing wrong, try again later (cron wrappers can tell it from a failure). */
export const GC_BUSY_EXIT = 75;

export const GC_USAGE = `usage: fastpull gc [--dry-run] [--grace SECONDS] [--data-dir DIR]
  removes blobs no attached name references, not pinned, ingested more than --grace seconds ago
  (default FASTPULL_GC_GRACE_SECONDS, one day); uploads in flight are never touched
  --dry-run   list what would be removed, with sizes, and change nothing
  every removal is recorded in the audit log (actor cli:<user>)
  one gc at a time across every process sharing the index: while another runs, this one prints
  "another gc is running" and exits ${GC_BUSY_EXIT} (try again later)`;

export async function gcCommand(args: string[]): Promise<number> {
  const spec = {
    name: 'gc',
    usage: GC_USAGE,
    options: { 'dry-run': { type: 'boolean' }, grace: { type: 'string' }, 'data-dir': { type: 'string' } },
  } as const;
  return runCommand(spec, args, async (values) => {
    const grace = values.grace !== undefined ? intOption(values.grace, 'grace', 0) : undefined;
    const ctx = await openDataDir(values['data-dir']);
    try {
      const graceSeconds = grace ?? ctx.config.gcGraceSeconds;
      const select = async () => {
        const cutoff = Date.now() - graceSeconds * 1000;
        const candidates = [...(await gcCandidates(ctx.queries, cutoff)), ...(await orphanCandidates(ctx.storage, ctx.queries, cutoff))];
        return { cutoff, candidates };
      };
      if (values['dry-run']) {
        const { candidates } = await select();
        const total = candidates.reduce((s, c) => s + c.size, 0);
        for (const c of candidates) console.log(`would remove ${describe(c)}`);
        console.log(`dry run: ${candidates.length} blobs, ${total} bytes (${formatBytes(total)}) would be removed (grace ${graceSeconds}s)`);
        return 0;
      }
      // Selection and removal both under the lock: two runs would otherwise pick and remove the same blobs.
      const held = await ctx.originIndex.locks.run('gc', async () => {
        const { cutoff, candidates } = await select();
        if (candidates.length > 0) {
          console.error(`removing ${candidates.length} blobs; waiting ${GC_SETTLE_MS / 1000}s for uploads in flight to settle`);
        }
        return collect(ctx.storage, ctx.queries, candidates, cutoff);
      });
      if (!held.ran) {
        console.error(`fastpull gc: another gc is running (on this index, ${ctx.originIndex.location}); nothing removed`);
        return GC_BUSY_EXIT;
      }
      const result = held.value;
      const actor = cliActor();
      for (const c of result.removed) {
        console.log(`removed ${describe(c)}`);
        // A blob re-uploaded while being removed is back under the same hash: nothing changed for it.
        if (!result.restored.includes(c.sha512)) {
          await ctx.audit.record({ actor, action: 'gc.remove', sha512: c.sha512, detail: `${c.size} bytes, unreferenced for over ${graceSeconds}s` });
        }
      }
      for (const c of result.kept) console.log(`kept ${c.sha512}: referenced again since selection`);
      for (const sha of result.restored) console.log(`restored ${sha}: re-uploaded while being removed`);
      const bytes = result.removed.reduce((s, c) => s + c.size, 0);
      console.log(`removed ${result.removed.length} blobs, ${bytes} bytes (${formatBytes(bytes)}) (grace ${graceSeconds}s)`);
      return 0;
    } finally {
      await ctx.close();
    }
  });
}

function describe(c: GcCandidate): string {
  return (
    `${c.sha512} ${c.size} bytes (${formatBytes(c.size)}), ${c.orphan ? 'written' : 'ingested'} ${new Date(c.ingestedAt).toISOString()}` +
    `${c.quarantined ? ', quarantined' : ''}${c.orphan ? ', no index row' : ''}`
  );
}
