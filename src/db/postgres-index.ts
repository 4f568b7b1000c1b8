import { fileURLToPath } from 'node:url';
import postgres from 'postgres';
import type { Digests } from '../store/digests.js';
import type { IndexDriver, RecordOptions } from './index-driver.js';
import type { BlobRow, NameRow, ServableBlob } from './index.js';
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

/** The PostgreSQL index driver: the same statements as DistfileIndex, one round trip each where it can. */
export class PostgresIndexDriver implements IndexDriver {
  readonly kind = 'postgres';

  constructor(readonly sql: Sql) {}

  async servableByHash(sha512: string): Promise<ServableBlob | undefined> {
    const [row] = await this.sql<ServableBlob[]>`
      SELECT b.sha512, b.blake2b, b.size, b.ingested_at AS modified_at, b.quarantined_at,
             (SELECT n.filename FROM names n WHERE n.sha512 = b.sha512 AND n.detached_at IS NULL
              ORDER BY n.seq DESC LIMIT 1) AS filename
      FROM blobs b WHERE b.sha512 = ${sha512}`;
    return row;
  }

  async servableByName(filename: string): Promise<ServableBlob | undefined> {
    const [row] = await this.sql<ServableBlob[]>`
      SELECT b.sha512, b.blake2b, b.size, n.attached_at AS modified_at, b.quarantined_at, n.filename
      FROM names n JOIN blobs b ON b.sha512 = n.sha512
      WHERE n.filename = ${filename} AND n.detached_at IS NULL
      ORDER BY n.seq DESC LIMIT 1`;
    return row;
  }

  async blob(sha512: string): Promise<BlobRow | undefined> {
    const [row] = await this.sql<BlobRow[]>`SELECT * FROM blobs WHERE sha512 = ${sha512}`;
    return row;
  }

  async history(filename: string): Promise<NameRow[]> {
    return [...(await this.sql<NameRow[]>`SELECT * FROM names WHERE filename = ${filename} ORDER BY seq DESC`)];
  }

  async namesOfBlob(sha512: string): Promise<NameRow[]> {
    return [...(await this.sql<NameRow[]>`SELECT * FROM names WHERE sha512 = ${sha512} ORDER BY seq DESC`)];
  }

  async recordBlob(digests: Digests, opts: RecordOptions = {}): Promise<void> {
    const at = opts.at ?? Date.now();
    const pinned = opts.pinned ? 1 : 0;
    await this.sql.begin(async (tx) => {
      await tx`
        INSERT INTO blobs (sha512, blake2b, sha256, size, ingested_at, pinned)
        VALUES (${digests.sha512}, ${digests.blake2b}, ${digests.sha256}, ${digests.size}, ${at}, ${pinned})
        ON CONFLICT (sha512) DO UPDATE SET quarantined_at = NULL, pinned = greatest(blobs.pinned, excluded.pinned)`;
      if (opts.filename !== undefined) await attachStatement(tx as unknown as Sql, opts.filename, digests.sha512, opts.by ?? null, at);
    });
  }

  async attach(filename: string, sha512: string, by: string | null): Promise<boolean> {
    return (await attachStatement(this.sql, filename, sha512, by, Date.now())) > 0;
  }

  async detach(filename: string, by: string | null): Promise<number> {
    const result = await this.sql`
      UPDATE names SET detached_at = ${Date.now()}, detached_by = ${by}
      WHERE filename = ${filename} AND detached_at IS NULL`;
    return result.count;
  }

  async close(): Promise<void> {
    await this.sql.end({ timeout: 5 });
  }
}

/**
 * Attaches in one statement: the row is only inserted when the blob exists (0 rows otherwise), and the
 * sequence orders attachments across replicas without a shared max(seq) read.
 */
async function attachStatement(sql: Sql, filename: string, sha512: string, by: string | null, at: number): Promise<number> {
  const result = await sql`
    INSERT INTO names (filename, sha512, seq, first_attached_at, attached_at, attached_by)
    SELECT ${filename}, sha512, nextval('names_seq'), ${at}, ${at}, ${by} FROM blobs WHERE sha512 = ${sha512}
    ON CONFLICT (filename, sha512) DO UPDATE SET
      seq = excluded.seq, attached_at = excluded.attached_at, attached_by = excluded.attached_by,
      detached_at = NULL, detached_by = NULL`;
  return result.count;
}
