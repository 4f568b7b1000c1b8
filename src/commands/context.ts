import { existsSync } from 'node:fs';
import { userInfo } from 'node:os';
import { loadConfig, type Config } from '../config.js';
import type { AuditArea } from '../db/audit.js';
import type { MaintenanceIndex } from '../db/maintenance.js';
import { databaseFile } from '../db/open.js';
import { openOriginIndex, type OriginIndex } from '../db/origin-index.js';
import { openStorage } from '../store/open-storage.js';
import type { BlobStorage } from '../store/storage.js';
import { UsageError } from './args.js';

export interface MaintenanceContext {
  config: Config;
  originIndex: OriginIndex;
  /** The index's maintenance area, announcing changes as cliActor(). */
  queries: MaintenanceIndex;
  /** Wherever FASTPULL_STORAGE says the blobs are (local disk or a bucket). */
  storage: BlobStorage;
  /** Every change a command makes is recorded here with actor cliActor(). */
  audit: AuditArea;
  close(): Promise<void>;
}

export { UsageError };

/** The audit actor of a command run by an operator: `cli:<login name>` (the uid when it has no name). */
export function cliActor(): string {
  try {
    return `cli:${userInfo().username}`;
  } catch {
    return `cli:uid${process.getuid?.() ?? '?'}`;
  }
}

/**
 * Opens an existing data directory for a maintenance command, with the index and the blob storage the
 * configuration names (SQLite and local disk by default; PostgreSQL and a bucket when set). A missing
 * directory is an error, not something to create: a typo in FASTPULL_DATA_DIR must not "verify" an empty
 * store and exit 0. The directory is needed on every driver (spool and temp files).
 */
export async function openDataDir(dataDirOverride: string | undefined, options: { allowMissingDatabase?: boolean } = {}): Promise<MaintenanceContext> {
  const config = loadConfig(dataDirOverride !== undefined ? { dataDir: dataDirOverride } : {});
  if (!existsSync(config.dataDir)) throw new UsageError(`data directory ${config.dataDir} does not exist`);
  if (config.databaseUrl === undefined) {
    const file = databaseFile(config.dataDir);
    if (!options.allowMissingDatabase && !existsSync(file)) {
      throw new UsageError(`no index at ${file} (run fastpull reindex to rebuild it from the blobs on disk)`);
    }
  }
  // The local store keeps its full-disk reserve, which gc gives back; a bucket is made ready (and checked) first.
  const storage = openStorage(config, { reserveBytes: config.reserveBytes });
  if (storage.kind === 's3') await storage.init();
  const originIndex = await openOriginIndex(config);
  return {
    config,
    originIndex,
    queries: originIndex.maintenance.as(cliActor()),
    storage,
    audit: originIndex.audit,
    close: () => originIndex.close(),
  };
}

export { formatBytes } from './progress.js';

/** Accepts an ISO date/time, or a relative age such as 7d, 12h, 30m. */
export function parseSince(value: string, now = Date.now()): number {
  const rel = /^(\d+)\s*([smhdw])$/.exec(value.trim());
  if (rel) {
    const unit = { s: 1, m: 60, h: 3600, d: 86_400, w: 604_800 }[rel[2] as 's' | 'm' | 'h' | 'd' | 'w'];
    return now - Number(rel[1]) * unit * 1000;
  }
  const ms = Date.parse(value);
  if (Number.isNaN(ms)) throw new UsageError(`--since: cannot read "${value}" as a date or an age (try 2026-01-31 or 7d)`);
  return ms;
}
