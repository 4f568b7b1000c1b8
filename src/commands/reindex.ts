import { reindex } from '../maintenance/reindex.js';
import { runCommand } from './args.js';
import { cliActor, formatBytes, openDataDir } from './context.js';
import { Progress } from './progress.js';

export const REINDEX_USAGE = `usage: fastpull reindex [--data-dir DIR]
  rebuilds the blob table from the files under blobs/ alone; exit 1 when some files did not match their
  name (quarantined). File names cannot be recovered from disk.`;

const NAMES_WARNING =
  'NOTE: reindex rebuilds the blob table from the files under blobs/ alone. File names cannot be ' +
  'recovered from disk: existing name rows are kept only where their blob still exists, and blobs ' +
  'that had no row come back with no name (pinned, so gc keeps them). Re-attach names with ' +
  'POST /api/v1/links or by re-uploading.';

export async function reindexCommand(args: string[]): Promise<number> {
  const spec = { name: 'reindex', usage: REINDEX_USAGE, options: { 'data-dir': { type: 'string' } } } as const;
  return runCommand(spec, args, async (values) => {
    const ctx = await openDataDir(values['data-dir'], { allowMissingDatabase: true });
    try {
      console.error(NAMES_WARNING);
      let progress: Progress | undefined;
      const report = await reindex(ctx.storage, ctx.queries, {
        onTotal: (files, bytes) => (progress = new Progress({ label: 'reindex', totalFiles: files, totalBytes: bytes })),
        onBlob: (_sha, size) => {
          progress?.read(size);
          progress?.fileDone();
        },
      });
      progress?.finish();
      const actor = cliActor();
      await ctx.audit.record({
        actor,
        action: 'reindex',
        detail: `${report.indexed} blobs indexed, ${report.added} new, ${report.quarantined.length} quarantined, ${report.dropped.length} rows dropped`,
      });
      for (const sha512 of report.quarantined) await ctx.audit.record({ actor, action: 'reindex.quarantine', sha512 });
      for (const sha512 of report.dropped) await ctx.audit.record({ actor, action: 'reindex.drop', sha512 });
      console.log(`indexed ${report.indexed} blobs (${formatBytes(report.bytes)}), ${report.added} of them new (pinned, no names)`);
      for (const sha of report.quarantined) console.log(`quarantined ${sha}: bytes do not match the name`);
      for (const sha of report.dropped) console.log(`dropped ${sha}: not on disk (its name rows went with it)`);
      console.log(`quarantined: ${report.quarantined.length}, dropped rows: ${report.dropped.length}`);
      console.log(NAMES_WARNING);
      return report.quarantined.length > 0 ? 1 : 0;
    } finally {
      await ctx.close();
    }
  });
}
