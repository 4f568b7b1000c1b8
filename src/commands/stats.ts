import { intOption, runCommand } from './args.js';
import { formatBytes, openDataDir } from './context.js';

export const STATS_USAGE = `usage: fastpull stats [--json] [--top N] [--data-dir DIR]
  counts, bytes stored, the N largest names (default 10) and bytes saved by dedup`;

export async function statsCommand(args: string[]): Promise<number> {
  const spec = {
    name: 'stats',
    usage: STATS_USAGE,
    options: { json: { type: 'boolean' }, top: { type: 'string' }, 'data-dir': { type: 'string' } },
  } as const;
  return runCommand(spec, args, async (values) => {
    const top = values.top !== undefined ? intOption(values.top, 'top', 1) : 10;
    const ctx = await openDataDir(values['data-dir']);
    try {
      const s = await ctx.queries.stats(top);
      if (values.json) {
        console.log(JSON.stringify(s, null, 2));
        return 0;
      }
      const b = (n: number) => `${n} bytes (${formatBytes(n)})`;
      console.log(`blobs:              ${s.blobs}`);
      console.log(`bytes stored:       ${b(s.bytesStored)}`);
      console.log(`names:              ${s.names} (attached: ${s.attachedNames}, attached name/hash pairs: ${s.attachedPairs})`);
      console.log(`pinned blobs:       ${s.pinned}`);
      console.log(`quarantined blobs:  ${s.quarantined} (${b(s.quarantinedBytes)})`);
      console.log(`unreferenced blobs: ${s.unreferencedBlobs} (${b(s.unreferencedBytes)})`);
      console.log(`dedup saved:        ${b(s.dedupSavedBytes)} across ${s.sharedBlobs} blobs shared by several names`);
      console.log(`  (bytes that one copy per attached name would need beyond what is stored)`);
      if (s.largest.length > 0) {
        console.log(`largest names:`);
        for (const l of s.largest) console.log(`  ${String(l.size).padStart(14)}  ${formatBytes(l.size).padStart(10)}  ${l.filename}`);
      }
      return 0;
    } finally {
      await ctx.close();
    }
  });
}
