import { existsSync } from 'node:fs';
import { userInfo } from 'node:os';
import { loadConfig, type Config } from '../config.js';
import { AuditLog } from '../db/audit.js';
import { DistfileIndex } from '../db/index.js';
import { databaseFile, openDatabase, type DB } from '../db/open.js';
import { MaintenanceQueries } from '../maintenance/queries.js';
import type { BlobStore } from '../store/blob-store.js';
import { localBlobStore } from '../store/open-storage.js';
import { UsageError } from './args.js';

export interface MaintenanceContext {
  config: Config;
  db: DB;
  index: DistfileIndex;
  queries: MaintenanceQueries;
  store: BlobStore;
  /** Every change a command makes is recorded here with actor cliActor(). */
  audit: AuditLog;
  close(): void;
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
 * Opens an existing data directory for a maintenance command. A missing directory is an error,
 * not something to create: a typo in FASTPULL_DATA_DIR must not "verify" an empty store and exit 0.
 */
export function openDataDir(dataDirOverride: string | undefined, options: { allowMissingDatabase?: boolean } = {}): MaintenanceContext {
  const config = loadConfig(dataDirOverride !== undefined ? { dataDir: dataDirOverride } : {});
  if (!existsSync(config.dataDir)) throw new UsageError(`data directory ${config.dataDir} does not exist`);
  const file = databaseFile(config.dataDir);
  if (!options.allowMissingDatabase && !existsSync(file)) {
    throw new UsageError(`no index at ${file} (run fastpull reindex to rebuild it from the blobs on disk)`);
  }
  const db = openDatabase(file);
  const store = localBlobStore(config);
  return {
    config,
    db,
    index: new DistfileIndex(db),
    queries: new MaintenanceQueries(db, { actor: cliActor() }),
    store,
    audit: new AuditLog(db),
    close: () => db.close(),
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
