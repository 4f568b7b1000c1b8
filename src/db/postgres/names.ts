import type postgres from 'postgres';
import type { Digests } from '../../store/digests.js';
import { attachEvent, type BlobRow, type NameIndex, type NameRow, type RecordOptions, type ServableBlob } from '../index.js';
import type { Awaitable } from '../awaitable.js';
import { listenBlobChanges, type Sql } from '../postgres-index.js';
import { recordEvent } from './events.js';
import { Lru } from './lru.js';

type Tx = postgres.TransactionSql;

export interface NameCacheOptions {
  /** Entries per cache (hash → blob, name → blob); 0 turns caching off. */
  maxEntries?: number;
  /**
   * How long a name → blob entry is trusted: a re-point on another replica is not announced, so this
   * bounds how long this replica may serve the name's previous hash. Callers pass min(nameMaxAge, 2 s).
   */
  nameTtlMs?: number;
  /**
   * How long a hash → blob entry is trusted. What a hash serves changes only by announced events (quarantine,
   * release, removal: LISTEN fastpull_blob); the expiry only refreshes the suggested filename, which follows
   * attachments that are not announced.
   */
  hashTtlMs?: number;
}

const DEFAULT_CACHE = { maxEntries: 10_000, nameTtlMs: 2_000, hashTtlMs: 60_000 };

/**
 * The names area on PostgreSQL: the same statements as DistfileIndex, the outbox events in the same
 * transactions, and per-process caches in front of the download lookups (a network round trip costs
 * ~30× an SQLite lookup). Only servable rows are cached: a miss or a quarantined blob is asked again, so
 * an upload through another replica is served here at once. A cache hit is answered without a promise.
 */
export class PostgresNameIndex implements NameIndex {
  private readonly byHash: Lru<string, ServableBlob>;
  private readonly byName: Lru<string, ServableBlob>;
  private readonly nameTtlMs: number;
  private readonly hashTtlMs: number;
  /**
   * Bumped by every invalidation: a lookup that started before one may have read the old row, so its
   * answer is returned but not cached.
   */
  private epoch = 0;

  constructor(
    readonly sql: Sql,
    cache: NameCacheOptions = {},
  ) {
    const options = { ...DEFAULT_CACHE, ...cache };
    this.byHash = new Lru(options.maxEntries);
    this.byName = new Lru(options.maxEntries);
    this.nameTtlMs = options.nameTtlMs;
    this.hashTtlMs = options.hashTtlMs;
  }

  /**
   * Drops cached entries whenever any replica changes what a blob serves (LISTEN fastpull_blob), and
   * everything after a reconnect of the listening connection (announcements may have been missed).
   */
  async listen(): Promise<() => Promise<void>> {
    return listenBlobChanges(
      this.sql,
      (sha512) => this.forgetBlob(sha512),
      () => this.forgetAll(),
    );
  }

  /** Forgets what this process holds about a blob (any name pointing at it included). */
  forgetBlob(sha512: string): void {
    this.epoch++;
    this.byHash.delete(sha512);
    this.byName.deleteWhere((blob) => blob.sha512 === sha512);
  }

  forgetAll(): void {
    this.epoch++;
    this.byHash.clear();
    this.byName.clear();
  }

  private forgetName(filename: string): void {
    this.epoch++;
    this.byName.delete(filename);
  }

  servableByHash(sha512: string): Awaitable<ServableBlob | undefined> {
    return this.byHash.get(sha512) ?? this.lookUpHash(sha512);
  }

  servableByName(filename: string): Awaitable<ServableBlob | undefined> {
    return this.byName.get(filename) ?? this.lookUpName(filename);
  }

  private async lookUpHash(sha512: string): Promise<ServableBlob | undefined> {
    const epoch = this.epoch;
    const [row] = await this.sql<ServableBlob[]>`
      SELECT b.sha512, b.blake2b, b.size, b.ingested_at AS modified_at, b.quarantined_at,
             b.ingested_at || '.' || b.generation AS version,
             (SELECT n.filename FROM names n WHERE n.sha512 = b.sha512 AND n.detached_at IS NULL
              ORDER BY n.seq DESC LIMIT 1) AS filename
      FROM blobs b WHERE b.sha512 = ${sha512}`;
    if (row && row.quarantined_at === null && epoch === this.epoch) this.byHash.set(sha512, row, this.hashTtlMs);
    return row;
  }

  private async lookUpName(filename: string): Promise<ServableBlob | undefined> {
    const epoch = this.epoch;
    const [row] = await this.sql<ServableBlob[]>`
      SELECT b.sha512, b.blake2b, b.size, n.attached_at AS modified_at, b.quarantined_at, n.filename,
             b.ingested_at || '.' || b.generation AS version
      FROM names n JOIN blobs b ON b.sha512 = n.sha512
      WHERE n.filename = ${filename} AND n.detached_at IS NULL
      ORDER BY n.seq DESC LIMIT 1`;
    if (row && row.quarantined_at === null && epoch === this.epoch) this.byName.set(filename, row, this.nameTtlMs);
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

  async recordBlob(digests: Digests, opts: RecordOptions = {}): Promise<boolean> {
    const at = opts.at ?? Date.now();
    try {
      return await this.sql.begin(async (tx) => {
        const created = (
          await tx`
            INSERT INTO blobs (sha512, blake2b, sha256, size, ingested_at, pinned)
            VALUES (${digests.sha512}, ${digests.blake2b}, ${digests.sha256}, ${digests.size}, ${at}, ${opts.pinned ? 1 : 0})
            ON CONFLICT (sha512) DO NOTHING`
        ).count === 1;
        // Only a real release touches quarantined_at: each update of it bumps the row's generation.
        const restored = (await tx`UPDATE blobs SET quarantined_at = NULL WHERE sha512 = ${digests.sha512} AND quarantined_at IS NOT NULL`).count === 1;
        if (created || restored) {
          await recordEvent(tx, {
            type: created ? 'blob.stored' : 'blob.restored',
            sha512: digests.sha512,
            ...(created ? { names: opts.filename !== undefined ? [opts.filename] : [] } : {}),
            actor: opts.by,
            at,
          });
        }
        if (opts.pinned) await tx`UPDATE blobs SET pinned = 1 WHERE sha512 = ${digests.sha512} AND pinned = 0`;
        if (opts.filename !== undefined) await attachInTx(tx, opts.filename, digests.sha512, opts.by ?? null, at);
        return created || restored;
      });
    } finally {
      // The suggested filename of the hash changes with a new name; this replica sees its own write at once.
      this.forgetBlob(digests.sha512);
      if (opts.filename !== undefined) this.forgetName(opts.filename);
    }
  }

  async attach(filename: string, sha512: string, by: string | null): Promise<boolean> {
    try {
      return await this.sql.begin((tx) => attachInTx(tx, filename, sha512, by, Date.now()));
    } finally {
      this.forgetName(filename);
      this.forgetBlob(sha512);
    }
  }

  async detach(filename: string, by: string | null): Promise<number> {
    const detached = await this.sql.begin(async (tx) => {
      const at = Date.now();
      const current = await lockName(tx, filename);
      const rows = await tx<{ sha512: string }[]>`
        UPDATE names SET detached_at = ${at}, detached_by = ${by}
        WHERE filename = ${filename} AND detached_at IS NULL RETURNING sha512`;
      if (current !== undefined && rows.length > 0) {
        await recordEvent(tx, { type: 'name.detached', sha512: current, names: [filename], actor: by, at });
      }
      return rows.map((r) => r.sha512);
    });
    this.forgetName(filename);
    for (const sha512 of detached) this.forgetBlob(sha512);
    return detached.length;
  }
}

/**
 * Serialises changes to one name across replicas for the rest of the transaction, and returns the hash the
 * name serves now: which event a change announces (attached, re-pointed) depends on it.
 */
async function lockName(tx: Tx, filename: string): Promise<string | undefined> {
  await tx`SELECT pg_advisory_xact_lock(hashtext(${`fastpull:name:${filename}`}))`;
  const [row] = await tx<{ sha512: string }[]>`
    SELECT sha512 FROM names WHERE filename = ${filename} AND detached_at IS NULL ORDER BY seq DESC LIMIT 1`;
  return row?.sha512;
}

/**
 * Attaches in one statement: the row is only inserted when the blob exists (false otherwise), and the
 * sequence orders attachments across replicas without a shared max(seq) read.
 */
async function attachInTx(tx: Tx, filename: string, sha512: string, by: string | null, at: number): Promise<boolean> {
  const previous = await lockName(tx, filename);
  const result = await tx`
    INSERT INTO names (filename, sha512, seq, first_attached_at, attached_at, attached_by)
    SELECT ${filename}, sha512, nextval('names_seq'), ${at}, ${at}, ${by} FROM blobs WHERE sha512 = ${sha512}
    ON CONFLICT (filename, sha512) DO UPDATE SET
      seq = excluded.seq, attached_at = excluded.attached_at, attached_by = excluded.attached_by,
      detached_at = NULL, detached_by = NULL`;
  if (result.count === 0) return false;
  const event = attachEvent(filename, sha512, previous, by, at);
  if (event) await recordEvent(tx, event);
  return true;
}
