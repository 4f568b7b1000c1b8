import { fileURLToPath } from 'node:url';
import postgres from 'postgres';
import { listMigrations } from './migrate.js';

/** migrations/postgres/ sits two levels above both src/db and dist/db. */
export const POSTGRES_MIGRATIONS_DIR = fileURLToPath(new URL('../../migrations/postgres/', import.meta.url));

/** Held (per transaction) while migrating, so replicas starting together apply each migration once. */
const MIGRATION_LOCK = 0x66_70_6d_67; // 'fpmg'

export type Sql = postgres.Sql;

export interface PostgresOptions {
  /** Connections at most (the pool is bounded): point lookups pipeline well over a few. */
  max?: number;
  /** Seconds before an idle connection is closed. */
  idleTimeout?: number;
  connectTimeout?: number;
}

/**
 * Opens a bounded pool with prepared statements (postgres.js prepares every parameterised query per
 * connection). Epoch milliseconds and sizes are bigint columns that fit a double: read as numbers.
 */
export function connectPostgres(url: string, options: PostgresOptions = {}): Sql {
  return postgres(url, {
    max: options.max ?? 4,
    idle_timeout: options.idleTimeout ?? 60,
    connect_timeout: options.connectTimeout ?? 10,
    prepare: true,
    onnotice: () => undefined,
    types: {
      bigint: { to: 20, from: [20], serialize: (n: number) => String(n), parse: (s: string) => Number(s) },
    },
  }) as unknown as Sql;
}

/** Applies pending migrations from migrations/postgres/ in one transaction under an advisory lock. */
export async function migratePostgres(sql: Sql, dir = POSTGRES_MIGRATIONS_DIR): Promise<{ applied: string[]; version: number }> {
  const migrations = listMigrations(dir);
  return sql.begin(async (tx) => {
    await tx`SELECT pg_advisory_xact_lock(${MIGRATION_LOCK})`;
    await tx`CREATE TABLE IF NOT EXISTS schema_migrations (version integer PRIMARY KEY, name text NOT NULL, applied_at bigint NOT NULL)`;
    const done = new Set((await tx<{ version: number }[]>`SELECT version FROM schema_migrations`).map((r) => r.version));
    const applied: string[] = [];
    for (const m of migrations) {
      if (done.has(m.version)) continue;
      await tx.unsafe(m.sql);
      await tx`INSERT INTO schema_migrations (version, name, applied_at) VALUES (${m.version}, ${m.name}, ${Date.now()})`;
      applied.push(m.name);
    }
    const [row] = await tx<{ version: number }[]>`SELECT coalesce(max(version), 0) AS version FROM schema_migrations`;
    return { applied, version: row!.version };
  }) as Promise<{ applied: string[]; version: number }>;
}

/**
 * Calls `onChange(sha512)` whenever any process changes what a blob serves (quarantine, release, repair)
 * or removes it (gc): the cue for a replica to drop its cached metadata. Uses one dedicated connection
 * (postgres.js re-listens after a reconnect, calling `onListen` each time: announcements made while it was
 * away are lost, so a cache must start over then); the returned function stops listening.
 */
export async function listenBlobChanges(sql: Sql, onChange: (sha512: string) => void, onListen?: () => void): Promise<() => Promise<void>> {
  const { unlisten } = await sql.listen('fastpull_blob', onChange, onListen);
  return unlisten;
}
