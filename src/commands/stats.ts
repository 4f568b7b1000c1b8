import { parseArgs } from 'node:util';
import { collectStats } from '../maintenance/stats.js';
import { formatBytes, openDataDir, parsePositiveInt, withUsage } from './context.js';

export const STATS_USAGE = 'usage: fastpull stats [--json] [--top N] [--data-dir DIR]';

export async function statsCommand(args: string[]): Promise<number> {
  return withUsage(async () => {
    const { values } = parseArgs({
      args,
      options: {
        json: { type: 'boolean' },
        top: { type: 'string' },
        'data-dir': { type: 'string' },
        help: { type: 'boolean', short: 'h' },
      },
    });
    if (values.help) {
      console.log(STATS_USAGE);
      return 0;
    }
    const top = values.top !== undefined ? parsePositiveInt(values.top, '--top') : 10;
    const ctx = openDataDir(values['data-dir']);
    try {
      const s = collectStats(ctx.db, top);
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
      ctx.close();
    }
  });
}
