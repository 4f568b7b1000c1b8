import { fsck } from '../maintenance/fsck.js';
import { runCommand } from './args.js';
import { cliActor, openDataDir } from './context.js';

export const FSCK_USAGE = `usage: fastpull fsck [--repair] [--data-dir DIR]
  reconciles disk and index both ways: files without rows, rows without files, wrong sizes, misnamed
  files, stale temp files; exit 0 consistent (or everything repaired), 1 inconsistencies remain
  --repair   fix what is safe (new rows are pinned; rows without a file are quarantined, keeping name
             history); every repair is recorded in the audit log (actor cli:<user>)`;

export async function fsckCommand(args: string[]): Promise<number> {
  const spec = { name: 'fsck', usage: FSCK_USAGE, options: { repair: { type: 'boolean' }, 'data-dir': { type: 'string' } } } as const;
  return runCommand(spec, args, async (values) => {
    const repair = values.repair === true;
    const ctx = await openDataDir(values['data-dir']);
    try {
      const report = await fsck(ctx.storage, ctx.queries, { repair });
      const actor = cliActor();
      for (const issue of report.issues) {
        const what = issue.repaired ? `repaired: ${issue.action}` : repair ? 'NOT repaired' : `--repair would: ${issue.action}`;
        console.log(`${issue.kind} ${issue.subject}: ${issue.detail}; ${what}`);
        if (issue.repaired) {
          const sha512 = /^[0-9a-f]{128}$/.test(issue.subject) ? issue.subject : null;
          await ctx.audit.record({
            actor,
            action: 'fsck.repair',
            sha512,
            // Temp files are named by the subject, not by a distfile name: they go in the detail.
            detail: `${issue.kind}${sha512 ? '' : ` ${issue.subject}`}: ${issue.detail}; ${issue.action}`,
          });
        }
      }
      const remaining = report.issues.filter((i) => !i.repaired).length;
      console.log(
        `checked ${report.blobsOnDisk} blob files and ${report.rows} index rows; ` +
          `${report.tempsInFlight} temp files belong to uploads in flight`,
      );
      console.log(`issues: ${report.issues.length}, repaired: ${report.issues.length - remaining}, remaining: ${remaining}`);
      return remaining > 0 ? 1 : 0;
    } finally {
      await ctx.close();
    }
  });
}
