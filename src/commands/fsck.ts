import { parseArgs } from 'node:util';
import { fsck } from '../maintenance/fsck.js';
import { openDataDir, withUsage } from './context.js';

export const FSCK_USAGE = 'usage: fastpull fsck [--repair] [--data-dir DIR]';

/** Exit codes: 0 consistent (or everything repaired); 1 inconsistencies remain; 2 usage error. */
export async function fsckCommand(args: string[]): Promise<number> {
  return withUsage(async () => {
    const { values } = parseArgs({
      args,
      options: { repair: { type: 'boolean' }, 'data-dir': { type: 'string' }, help: { type: 'boolean', short: 'h' } },
    });
    if (values.help) {
      console.log(FSCK_USAGE);
      return 0;
    }
    const repair = values.repair === true;
    const ctx = openDataDir(values['data-dir']);
    try {
      const report = await fsck(ctx.store, ctx.db, ctx.queries, { repair });
      for (const issue of report.issues) {
        const what = issue.repaired ? `repaired: ${issue.action}` : repair ? 'NOT repaired' : `--repair would: ${issue.action}`;
        console.log(`${issue.kind} ${issue.subject}: ${issue.detail}; ${what}`);
      }
      const remaining = report.issues.filter((i) => !i.repaired).length;
      console.log(
        `checked ${report.blobsOnDisk} blob files and ${report.rows} index rows; ` +
          `${report.tempsInFlight} temp files belong to uploads in flight`,
      );
      console.log(`issues: ${report.issues.length}, repaired: ${report.issues.length - remaining}, remaining: ${remaining}`);
      return remaining > 0 ? 1 : 0;
    } finally {
      ctx.close();
    }
  });
}
