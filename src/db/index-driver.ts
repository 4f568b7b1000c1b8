import type { Digests } from '../store/digests.js';
import type { BlobRow, DistfileIndex, NameRow, ServableBlob } from './index.js';

/**
 * Draft of the index interface both drivers implement: SQLite (embedded default) and PostgreSQL (several
 * replicas). Asynchronous because a network database is; SQLite answers at once behind the same shape.
 * This round it covers blobs and names (DistfileIndex); fetch jobs, tokens and audit follow the same way.
 * The running server still calls DistfileIndex synchronously (see README, Scaling out).
 */
export interface IndexDriver {
  readonly kind: 'sqlite' | 'postgres';
  servableByHash(sha512: string): Promise<ServableBlob | undefined>;
  servableByName(filename: string): Promise<ServableBlob | undefined>;
  blob(sha512: string): Promise<BlobRow | undefined>;
  /** Every hash a name has pointed at, newest attachment first. */
  history(filename: string): Promise<NameRow[]>;
  namesOfBlob(sha512: string): Promise<NameRow[]>;
  /** Records a stored blob (un-quarantining it) and optionally attaches a name, atomically. */
  recordBlob(digests: Digests, opts?: RecordOptions): Promise<void>;
  /** Points a name at a stored blob; false when the blob is unknown. */
  attach(filename: string, sha512: string, by: string | null): Promise<boolean>;
  /** Detaches every hash from a name; returns how many pairs were detached. */
  detach(filename: string, by: string | null): Promise<number>;
  close(): Promise<void>;
}

export interface RecordOptions {
  filename?: string;
  by?: string | null;
  pinned?: boolean;
  at?: number;
}

/** The SQLite driver: today's DistfileIndex behind the asynchronous interface. */
export class SqliteIndexDriver implements IndexDriver {
  readonly kind = 'sqlite';

  constructor(readonly index: DistfileIndex) {}

  async servableByHash(sha512: string): Promise<ServableBlob | undefined> {
    return this.index.servableByHash(sha512);
  }
  async servableByName(filename: string): Promise<ServableBlob | undefined> {
    return this.index.servableByName(filename);
  }
  async blob(sha512: string): Promise<BlobRow | undefined> {
    return this.index.blob(sha512);
  }
  async history(filename: string): Promise<NameRow[]> {
    return this.index.history(filename);
  }
  async namesOfBlob(sha512: string): Promise<NameRow[]> {
    return this.index.namesOfBlob(sha512);
  }
  async recordBlob(digests: Digests, opts: RecordOptions = {}): Promise<void> {
    this.index.recordBlob(digests, opts);
  }
  async attach(filename: string, sha512: string, by: string | null): Promise<boolean> {
    return this.index.attach(filename, sha512, by);
  }
  async detach(filename: string, by: string | null): Promise<number> {
    return this.index.detach(filename, by);
  }
  async close(): Promise<void> {
    this.index.db.close();
  }
}
