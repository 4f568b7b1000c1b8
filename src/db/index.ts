import type { Statement } from 'better-sqlite3';
import type { Digests } from '../store/digests.js';
import { recordEvent, type NewEvent } from './events.js';
import type { DB } from './open.js';
import type { Awaitable } from './awaitable.js';

export interface BlobRow {
  sha512: string;
  blake2b: string;
  sha256: string;
  size: number;
  ingested_at: number;
  verified_at: number | null;
  quarantined_at: number | null;
  pinned: number;
}

/** What the download path needs, fetched with one indexed statement. */
export interface ServableBlob {
  sha512: string;
  blake2b: string;
  size: number;
  /** The name to suggest in Content-Disposition, when one is known. */
  filename: string | null;
  /** Last-Modified: when the blob was ingested (hash paths) or the name last attached (name paths). */
  modified_at: number;
  quarantined_at: number | null;
  /**
   * Identity of the row's current meaning (ingested_at and its generation, bumped by every quarantine,
   * release or repair, from any process): what a per-process cache of the blob's bytes or descriptor
   * is keyed by, so a changed row never matches a stale entry.
   */
  version: string;
}

export interface NameRow {
  filename: string;
  sha512: string;
  seq: number;
  first_attached_at: number;
  attached_at: number;
  attached_by: string | null;
  detached_at: number | null;
  detached_by: string | null;
}

export interface RecordOptions {
  filename?: string;
  by?: string | null;
  pinned?: boolean;
  at?: number;
}

/**
 * Blobs, names and their history: the `names` area of the index. SQLite (DistfileIndex) answers
 * synchronously; PostgreSQL (db/postgres/names.ts) with promises, except for what its caches hold.
 */
export interface NameIndex {
  /** The blob a hash path serves (quarantined ones included: the caller decides). */
  servableByHash(sha512: string): Awaitable<ServableBlob | undefined>;
  /** The blob a name path serves: the name's latest attachment. */
  servableByName(filename: string): Awaitable<ServableBlob | undefined>;
  blob(sha512: string): Awaitable<BlobRow | undefined>;
  /** Every hash a name has pointed at, newest attachment first. */
  history(filename: string): Awaitable<NameRow[]>;
  namesOfBlob(sha512: string): Awaitable<NameRow[]>;
  /**
   * Records a stored blob (lifting a quarantine) and optionally attaches a name, with its outbox events, atomically.
   * True when this call made the blob servable (a new row, or a quarantine lifted): of concurrent uploads of the
   * same bytes, exactly one gets true.
   */
  recordBlob(digests: Digests, opts?: RecordOptions): Awaitable<boolean>;
  /** Points a name at a stored blob; false when the blob is unknown. */
  attach(filename: string, sha512: string, by: string | null): Awaitable<boolean>;
  /** Detaches every hash from a name; returns how many pairs were detached. */
  detach(filename: string, by: string | null): Awaitable<number>;
}

/** Prepared statements over the index. Hot-path reads are single indexed point lookups. */
export class DistfileIndex implements NameIndex {
  private readonly stmt: {
    servableByHash: Statement<[string], ServableBlob>;
    servableByName: Statement<[string], ServableBlob>;
    blob: Statement<[string], BlobRow>;
    insertBlob: Statement<[Record<string, unknown>]>;
    unquarantine: Statement<[string]>;
    pin: Statement<[string]>;
    nextSeq: Statement<[], { seq: number }>;
    attach: Statement<[Record<string, unknown>]>;
    detach: Statement<[{ filename: string; at: number; by: string | null }]>;
    history: Statement<[string], NameRow>;
    namesOfBlob: Statement<[string], NameRow>;
    currentOf: Statement<[string], { sha512: string }>;
  };

  constructor(readonly db: DB) {
    this.stmt = {
      servableByHash: db.prepare(
        `SELECT b.sha512, b.blake2b, b.size, b.ingested_at AS modified_at, b.quarantined_at,
                b.ingested_at || '.' || b.generation AS version,
                (SELECT n.filename FROM names n WHERE n.sha512 = b.sha512 AND n.detached_at IS NULL
                 ORDER BY n.seq DESC LIMIT 1) AS filename
         FROM blobs b WHERE b.sha512 = ?`,
      ),
      servableByName: db.prepare(
        `SELECT b.sha512, b.blake2b, b.size, n.attached_at AS modified_at, b.quarantined_at, n.filename,
                b.ingested_at || '.' || b.generation AS version
         FROM names n JOIN blobs b ON b.sha512 = n.sha512
         WHERE n.filename = ? AND n.detached_at IS NULL
         ORDER BY n.seq DESC LIMIT 1`,
      ),
      blob: db.prepare('SELECT * FROM blobs WHERE sha512 = ?'),
      insertBlob: db.prepare(
        `INSERT INTO blobs (sha512, blake2b, sha256, size, ingested_at, pinned)
         VALUES (@sha512, @blake2b, @sha256, @size, @at, @pinned)
         ON CONFLICT (sha512) DO NOTHING`,
      ),
      unquarantine: db.prepare('UPDATE blobs SET quarantined_at = NULL WHERE sha512 = ? AND quarantined_at IS NOT NULL'),
      pin: db.prepare('UPDATE blobs SET pinned = 1 WHERE sha512 = ?'),
      nextSeq: db.prepare('SELECT coalesce(max(seq), 0) + 1 AS seq FROM names'),
      attach: db.prepare(
        `INSERT INTO names (filename, sha512, seq, first_attached_at, attached_at, attached_by)
         VALUES (@filename, @sha512, @seq, @at, @at, @by)
         ON CONFLICT (filename, sha512) DO UPDATE SET
           seq = excluded.seq, attached_at = excluded.attached_at, attached_by = excluded.attached_by,
           detached_at = NULL, detached_by = NULL`,
      ),
      detach: db.prepare(
        `UPDATE names SET detached_at = @at, detached_by = @by
         WHERE filename = @filename AND detached_at IS NULL`,
      ),
      history: db.prepare('SELECT * FROM names WHERE filename = ? ORDER BY seq DESC'),
      namesOfBlob: db.prepare('SELECT * FROM names WHERE sha512 = ? ORDER BY seq DESC'),
      currentOf: db.prepare(
        'SELECT sha512 FROM names WHERE filename = ? AND detached_at IS NULL ORDER BY seq DESC LIMIT 1',
      ),
    };
  }

  servableByHash(sha512: string): ServableBlob | undefined {
    return this.stmt.servableByHash.get(sha512);
  }

  servableByName(filename: string): ServableBlob | undefined {
    return this.stmt.servableByName.get(filename);
  }

  blob(sha512: string): BlobRow | undefined {
    return this.stmt.blob.get(sha512);
  }

  history(filename: string): NameRow[] {
    return this.stmt.history.all(filename);
  }

  namesOfBlob(sha512: string): NameRow[] {
    return this.stmt.namesOfBlob.all(sha512);
  }

  /**
   * Records a stored blob and optionally attaches a name, in one transaction.
   * A blob that was quarantined and has just been re-written with good bytes is servable again.
   * Each change is announced in the outbox within the same transaction.
   */
  recordBlob(digests: Digests, opts: RecordOptions = {}): boolean {
    const at = opts.at ?? Date.now();
    return this.db.transaction(() => {
      const created = this.stmt.insertBlob.run({ ...digests, at, pinned: opts.pinned ? 1 : 0 }).changes === 1;
      const restored = this.stmt.unquarantine.run(digests.sha512).changes === 1;
      if (created || restored) {
        recordEvent(this.db, {
          type: created ? 'blob.stored' : 'blob.restored',
          sha512: digests.sha512,
          ...(created ? { names: opts.filename !== undefined ? [opts.filename] : [] } : {}),
          actor: opts.by,
          at,
        });
      }
      if (opts.pinned) this.stmt.pin.run(digests.sha512);
      if (opts.filename !== undefined) this.attachInTx(opts.filename, digests.sha512, opts.by ?? null, at);
      return created || restored;
    }).immediate();
  }

  /** Points a name at a stored blob (making it the name's current hash). False if the blob is unknown. */
  attach(filename: string, sha512: string, by: string | null): boolean {
    return this.db
      .transaction(() => {
        if (!this.stmt.blob.get(sha512)) return false;
        this.attachInTx(filename, sha512, by, Date.now());
        return true;
      })
      .immediate();
  }

  private attachInTx(filename: string, sha512: string, by: string | null, at: number): void {
    const previous = this.stmt.currentOf.get(filename)?.sha512;
    const { seq } = this.stmt.nextSeq.get()!;
    this.stmt.attach.run({ filename, sha512, seq, at, by });
    const event = attachEvent(filename, sha512, previous, by, at);
    if (event) recordEvent(this.db, event);
  }

  /** Detaches every hash from a name; the blobs stay. Returns how many pairs were detached. */
  detach(filename: string, by: string | null): number {
    return this.db
      .transaction(() => {
        const at = Date.now();
        const current = this.stmt.currentOf.get(filename)?.sha512;
        const detached = this.stmt.detach.run({ filename, at, by }).changes;
        if (current !== undefined && detached > 0) {
          recordEvent(this.db, { type: 'name.detached', sha512: current, names: [filename], actor: by, at });
        }
        return detached;
      })
      .immediate();
  }
}

/**
 * What attaching `sha512` to a name that served `previous` announces (both engines): nothing when it is the
 * hash the name already serves, which changes nothing anyone can observe.
 */
export function attachEvent(filename: string, sha512: string, previous: string | undefined, by: string | null, at: number): NewEvent | undefined {
  if (previous === sha512) return undefined;
  return {
    type: previous === undefined ? 'name.attached' : 'name.repointed',
    sha512,
    names: [filename],
    previousSha512: previous ?? null,
    actor: by,
    at,
  };
}
