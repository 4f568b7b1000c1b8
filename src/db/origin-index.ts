import type { Config } from '../config.js';
import { DistfileIndex, type NameIndex } from './index.js';
import { FetchJobStore, type FetchJobQueue } from './fetch-jobs.js';
import { AuditLog, type AuditArea } from './audit.js';
import { IndexCounters, type CounterArea } from './counters.js';
import { databaseFile, openDatabase, type DB } from './open.js';
import { PostgresAuditLog } from './postgres/audit.js';
import { PostgresCounters } from './postgres/counters.js';
import { PostgresStatus } from './postgres/status.js';
import { PostgresTokens } from './postgres/tokens.js';
import { EventOutbox, type Outbox } from './events.js';
import { PostgresEventOutbox } from './postgres/events.js';
import { localLocks, type ClusterLocks } from './locks.js';
import { MaintenanceQueries, type MaintenanceIndex } from './maintenance.js';
import { PostgresLocks } from './postgres/locks.js';
import { PostgresMaintenance } from './postgres/maintenance.js';
import { connectPostgres, migratePostgres, type Sql } from './postgres-index.js';
import { PostgresNameIndex } from './postgres/names.js';
import { PgUploadHolds } from './postgres/holds.js';
import { PgFetchJobs } from './postgres/jobs.js';
import { UploadHolds, type UploadHoldArea } from './upload-holds.js';
import { StatusQueries, type StatusArea } from './status-queries.js';
import { SqliteTokens, type TokenArea } from './tokens.js';

/**
 * The whole index, whichever engine holds it: one area per concept (blobs and names, fetch jobs, tokens, …),
 * each an interface with a SQLite and a PostgreSQL implementation. All SQL lives under src/db/.
 */
export interface OriginIndex {
  readonly kind: 'sqlite' | 'postgres';
  /** The SQLite handle (embedded default); undefined on PostgreSQL. For SQLite-only tools (migrate-index's source). */
  readonly sqlite: DB | undefined;
  /** The PostgreSQL pool; undefined on SQLite. */
  readonly postgres: Sql | undefined;
  /** Where the index is, for logs and status (a file, or the URL without its password). */
  readonly location: string;
  /** Blobs, names and their history. */
  readonly names: NameIndex;
  /** Fetch jobs and the URL → sha512 pairs learned by fetching; claims are exclusive across processes and replicas. */
  readonly jobs: FetchJobQueue;
  /** Space uploads in flight hold against the high watermark, in every process and replica. */
  readonly holds: UploadHoldArea;
  /** API tokens (no per-process cache: a revocation holds on every replica at the next request). */
  readonly tokens: TokenArea;
  /** Who changed what. */
  readonly audit: AuditArea;
  /** The status page's totals, recent names and search; readiness's probe. */
  readonly status: StatusArea;
  /** The index counters kept by triggers (metrics, totals). */
  readonly counters: CounterArea;
  /** The outbox: events to deliver, and delivery bookkeeping per target. */
  readonly events: Outbox;
  /** Whole-table scans and repairs of verify, scrub, fsck, reindex, gc, stats (announced with no actor; see `as`). */
  readonly maintenance: MaintenanceIndex;
  /** Singleton work (gc, scrub) across processes sharing this index. */
  readonly locks: ClusterLocks;
  close(): Promise<void>;
}

export type IndexConfig = Pick<Config, 'dataDir' | 'databaseUrl' | 'databasePoolSize'> & Partial<Pick<Config, 'nameMaxAge'>>;

/** A re-point through another replica is honoured here within this long at most (or the name's max-age, if shorter). */
const NAME_CACHE_MAX_MS = 2_000;

/** Opens the index FASTPULL_DATABASE_URL names (or SQLite in the data directory) and applies pending migrations. */
export async function openOriginIndex(config: IndexConfig): Promise<OriginIndex> {
  if (config.databaseUrl === undefined) {
    const file = databaseFile(config.dataDir);
    const db = openDatabase(file);
    return {
      kind: 'sqlite',
      sqlite: db,
      postgres: undefined,
      location: file,
      names: new DistfileIndex(db),
      jobs: new FetchJobStore(db),
      holds: new UploadHolds(db),
      tokens: new SqliteTokens(db),
      audit: new AuditLog(db),
      status: new StatusQueries(db),
      counters: new IndexCounters(db),
      events: new EventOutbox(db),
      maintenance: new MaintenanceQueries(db),
      locks: localLocks,
      async close() {
        db.close();
      },
    };
  }
  const sql = connectPostgres(config.databaseUrl, { max: config.databasePoolSize });
  try {
    await migratePostgres(sql);
  } catch (err) {
    await sql.end({ timeout: 1 }).catch(() => undefined);
    throw err;
  }
  const names = new PostgresNameIndex(sql, {
    nameTtlMs: Math.min((config.nameMaxAge ?? Infinity) * 1000, NAME_CACHE_MAX_MS),
  });
  let unlisten: () => Promise<void>;
  try {
    unlisten = await names.listen();
  } catch (err) {
    await sql.end({ timeout: 1 }).catch(() => undefined);
    throw err;
  }
  return {
    kind: 'postgres',
    sqlite: undefined,
    postgres: sql,
    location: redactPassword(config.databaseUrl),
    names,
    jobs: new PgFetchJobs(sql),
    holds: new PgUploadHolds(sql),
    tokens: new PostgresTokens(sql),
    audit: new PostgresAuditLog(sql),
    status: new PostgresStatus(sql),
    counters: new PostgresCounters(sql),
    events: new PostgresEventOutbox(sql),
    maintenance: new PostgresMaintenance(sql),
    locks: new PostgresLocks(sql),
    async close() {
      await unlisten().catch(() => undefined);
      await sql.end({ timeout: 5 });
    },
  };
}

/** postgres://user:secret@host/db → postgres://user:***@host/db, for logs. */
export function redactPassword(url: string): string {
  return url.replace(/^(postgres(?:ql)?:\/\/[^:/@]*:)[^@]*@/, '$1***@');
}
