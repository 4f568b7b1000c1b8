import { existsSync } from 'node:fs';
import { loadConfig, parseStorageLocation, type ConfigError, type StorageLocation } from '../config.js';
import { DistfileIndex } from '../db/index.js';
import { databaseFile, openDatabase } from '../db/open.js';
import { copyBlobs, type CopyItem } from '../store/copy-storage.js';
import type { ExpectedDigests } from '../store/digests.js';
import { openStorage } from '../store/open-storage.js';
import { intOption, runCommand, UsageError } from './args.js';
import { formatBytes, Progress } from './progress.js';

const USAGE = `usage: fastpull migrate-storage --to s3://BUCKET[/PREFIX] | --to local [--jobs N] [--data-dir DIR]
  copies every blob of the storage FASTPULL_STORAGE names (unset: <dataDir>/blobs) to another one:
  --to s3://BUCKET/PREFIX from the local store, --to local (into <dataDir>/blobs) from an s3 store.
  Each blob goes through the target's verified write with the digests the index holds for it, so a
  damaged blob is reported and not copied. Blobs the target already has (same size) are skipped, so an
  interrupted run resumes where it stopped. Shows a progress bar on stderr and a summary on stdout;
  exits 1 if any blob failed. S3 credentials, region and endpoint come from AWS_ACCESS_KEY_ID,
  AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_ENDPOINT_URL_S3 and FASTPULL_S3_FORCE_PATH_STYLE.

  --to WHERE    s3://BUCKET[/PREFIX] or local
  --jobs N      blobs copied at once (default 4, 1 to 64)`;

function targetOf(to: string): StorageLocation {
  if (to === 'local') return { kind: 'local' };
  try {
    return parseStorageLocation(to, '--to');
  } catch (err) {
    throw new UsageError(`--to: expected s3://BUCKET[/PREFIX] or local, got "${to}" (${(err as ConfigError).message.replace(/^invalid configuration --to: /, '')})`);
  }
}

const describe = (l: StorageLocation) => (l.kind === 'local' ? 'local' : `s3://${l.bucket}/${l.prefix}`);

export async function migrateStorageCommand(args: string[]): Promise<number> {
  const spec = {
    name: 'migrate-storage',
    usage: USAGE,
    options: { to: { type: 'string' }, jobs: { type: 'string' }, 'data-dir': { type: 'string' } },
  } as const;
  return runCommand(spec, args, async (values) => {
    if (values.to === undefined) throw new UsageError('--to s3://BUCKET/PREFIX or --to local is required');
    const to = targetOf(values.to);
    const jobs = values.jobs !== undefined ? intOption(values.jobs, 'jobs', 1, 64) : 4;
    const config = loadConfig(values['data-dir'] !== undefined ? { dataDir: values['data-dir'] } : {});
    if (describe(to) === describe(config.storage)) {
      throw new UsageError(`--to ${values.to} is where the blobs already are (FASTPULL_STORAGE${config.storage.kind === 'local' ? ' unset' : ''})`);
    }
    if (!existsSync(config.dataDir)) throw new UsageError(`data directory ${config.dataDir} does not exist`);

    const source = openStorage(config);
    const target = openStorage({ ...config, storage: to });
    await source.init();
    await target.init();
    // The index declares what each blob must hash to; read-only, so a running server is not disturbed.
    const file = databaseFile(config.dataDir);
    const db = existsSync(file) ? openDatabase(file, { readonly: true, migrate: false }) : undefined;
    try {
      const index = db && new DistfileIndex(db);
      const declared = (sha512: string): ExpectedDigests | undefined => {
        const row = index?.blob(sha512);
        return row && { size: row.size, sha512: row.sha512, blake2b: row.blake2b, sha256: row.sha256 };
      };
      const items: CopyItem[] = [];
      let totalBytes = 0;
      for await (const sha512 of source.list()) {
        const size = declared(sha512)?.size ?? (await source.stat(sha512))?.size;
        if (size === undefined) continue;
        items.push({ sha512, size });
        totalBytes += size;
      }
      console.log(`copying ${items.length} blobs (${formatBytes(totalBytes)}) from ${source.location} to ${target.location}`);
      const progress = new Progress({ label: 'migrate-storage', totalFiles: items.length, totalBytes });
      const report = await copyBlobs(source, target, items, jobs, {
        declared,
        onBytes: (n) => progress.read(n),
        onDone: (item, outcome, unread) => {
          if (outcome.kind === 'failed') progress.log(`FAILED ${item.sha512}: ${outcome.reason}`);
          progress.fileDone(unread);
        },
      });
      progress.finish();
      console.log(
        `copied ${report.copied} blobs (${formatBytes(report.copiedBytes)}), ${report.present} already there (${formatBytes(report.presentBytes)}), ` +
          `${report.failed.length} failed`,
      );
      for (const f of report.failed) console.log(`failed ${f.sha512}: ${f.reason}`);
      return report.failed.length > 0 ? 1 : 0;
    } finally {
      db?.close();
    }
  });
}
