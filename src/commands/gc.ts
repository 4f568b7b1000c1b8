import { parseArgs } from 'node:util';
import { collect, GC_SETTLE_MS, gcCandidates, orphanCandidates } from '../maintenance/gc.js';
import { formatBytes, openDataDir, parsePositiveInt, withUsage } from './context.js';

export const GC_USAGE = 'usage: fastpull gc [--dry-run] [--grace SECONDS] [--data-dir DIR]';

export async function gcCommand(args: string[]): Promise<number> {
  return withUsage(async () => {
    const { values } = parseArgs({
      args,
      options: {
        'dry-run': { type: 'boolean' },
        grace: { type: 'string' },
        'data-dir': { type: 'string' },
        help: { type: 'boolean', short: 'h' },
      },
    });
    if (values.help) {
      console.log(GC_USAGE);
      return 0;
    }
    const ctx = openDataDir(values['data-dir']);
    try {
      const grace = values.grace !== undefined ? parsePositiveInt(values.grace, '--grace', 0) : ctx.config.gcGraceSeconds;
      const cutoff = Date.now() - grace * 1000;
      const candidates = [...gcCandidates(ctx.queries, cutoff), ...(await orphanCandidates(ctx.store, ctx.queries, cutoff))];
      const total = candidates.reduce((s, c) => s + c.size, 0);
      const describe = (c: (typeof candidates)[number]) =>
        `${c.sha512} ${c.size} bytes (${formatBytes(c.size)}), ${c.orphan ? 'written' : 'ingested'} ${new Date(c.ingestedAt).toISOString()}${c.quarantined ? ', quarantined' : ''}${c.orphan ? ', no index row' : ''}`;
      if (values['dry-run']) {
        for (const c of candidates) console.log(`would remove ${describe(c)}`);
        console.log(`dry run: ${candidates.length} blobs, ${total} bytes (${formatBytes(total)}) would be removed (grace ${grace}s)`);
        return 0;
      }
      if (candidates.length > 0) {
        console.error(`removing ${candidates.length} blobs; waiting ${GC_SETTLE_MS / 1000}s for uploads in flight to settle`);
      }
      const result = await collect(ctx.store, ctx.db, ctx.queries, candidates, cutoff);
      for (const c of result.removed) console.log(`removed ${describe(c)}`);
      for (const c of result.kept) console.log(`kept ${c.sha512}: referenced again since selection`);
      for (const sha of result.restored) console.log(`restored ${sha}: re-uploaded while being removed`);
      const bytes = result.removed.reduce((s, c) => s + c.size, 0);
      console.log(`removed ${result.removed.length} blobs, ${bytes} bytes (${formatBytes(bytes)}) (grace ${grace}s)`);
      return 0;
    } finally {
      ctx.close();
    }
  });
}
