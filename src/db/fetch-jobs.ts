import type { Statement } from 'better-sqlite3';
import type { Digests } from '../store/digests.js';
import type { DB } from './open.js';
import type { Awaitable } from './awaitable.js';

export type ItemState = 'queued' | 'downloading' | 'done' | 'failed';

export interface FetchItemRow {
  job_id: string;
  idx: number;
  url: string;
  mirrors: string;
  filename: string;
  expected_size: number | null;
  expected_sha512: string | null;
  expected_blake2b: string | null;
  state: ItemState;
  attempts: number;
  sha512: string | null;
  blake2b: string | null;
  sha256: string | null;
  size: number | null;
  source: string | null;
  reason: string | null;
  queued_at: number;
  started_at: number | null;
  finished_at: number | null;
  /** PostgreSQL: the replica downloading the item, and until when its claim holds unless renewed (migration 011). */
  claimed_by?: string | null;
  lease_until?: number | null;
}

export interface FetchJobRow {
  id: string;
  created_at: number;
  created_by: string | null;
}

export interface NewItem {
  url: string;
  mirrors: string[];
  filename: string;
  size?: number | undefined;
  sha512?: string | undefined;
  blake2b?: string | undefined;
}

/** The fetch_items row a new item starts as, by column name (both engines insert it as it is). */
export function queuedItemRow(jobId: string, idx: number, item: NewItem, at: number) {
  return {
    job_id: jobId,
    idx,
    url: item.url,
    mirrors: JSON.stringify(item.mirrors),
    filename: item.filename,
    expected_size: item.size ?? null,
    expected_sha512: item.sha512 ?? null,
    expected_blake2b: item.blake2b ?? null,
    state: 'queued' as const,
    queued_at: at,
  };
}

/**
 * The fetch queue, whichever engine holds it (`OriginIndex.jobs`): SQLite answers synchronously, PostgreSQL
 * asynchronously. Claims are exclusive on both: an item is downloaded by one runner at a time.
 */
export interface FetchJobQueue {
  create(id: string, items: NewItem[], by: string | null): Awaitable<void>;
  job(id: string): Awaitable<FetchJobRow | undefined>;
  items(jobId: string): Awaitable<FetchItemRow[]>;
  /** Marks up to `limit` queued items downloading, oldest first, and returns them: no other runner gets them. */
  claim(limit: number): Awaitable<FetchItemRow[]>;
  /** Keeps the claims of items this runner is still downloading from running out (PostgreSQL's leases). */
  renew(items: FetchItemRow[]): Awaitable<void>;
  requeue(item: FetchItemRow): Awaitable<void>;
  /**
   * Puts back in the queue what was being downloaded by a runner that is gone: at start on SQLite (one
   * machine: whatever was downloading was cut off), items whose lease ran out on PostgreSQL.
   */
  requeueInterrupted(): Awaitable<number>;
  done(item: FetchItemRow, digests: Digests, source: string): Awaitable<void>;
  fail(item: FetchItemRow, reason: string): Awaitable<void>;
  urlHash(url: string): Awaitable<string | undefined>;
  rememberUrl(url: string, sha512: string): Awaitable<void>;
  /**
   * Calls `onQueued` when any process sharing the index queues a job (PostgreSQL's LISTEN), so an idle
   * runner starts at once; absent where the process that queues also runs the jobs (SQLite).
   */
  watch?(onQueued: () => void): Promise<() => Promise<void>>;
  /** Where claims expire unless renewed (PostgreSQL): how often the runner renews them and looks for expired ones. */
  readonly renewEveryMs?: number;
}

/** Persistence of fetch jobs and of the URL → sha512 pairs learned by fetching. */
export class FetchJobStore implements FetchJobQueue {
  private readonly stmt: {
    insertJob: Statement<[Record<string, unknown>]>;
    insertItem: Statement<[Record<string, unknown>]>;
    job: Statement<[string], FetchJobRow>;
    items: Statement<[string], FetchItemRow>;
    nextQueued: Statement<[number], FetchItemRow>;
    start: Statement<[{ job_id: string; idx: number; at: number }]>;
    requeue: Statement<[{ job_id: string; idx: number }]>;
    requeueAll: Statement<[]>;
    done: Statement<[Record<string, unknown>]>;
    fail: Statement<[Record<string, unknown>]>;
    urlHash: Statement<[string], { sha512: string }>;
    rememberUrl: Statement<[Record<string, unknown>]>;
  };

  constructor(readonly db: DB) {
    this.stmt = {
      insertJob: db.prepare('INSERT INTO fetch_jobs (id, created_at, created_by) VALUES (@id, @at, @by)'),
      insertItem: db.prepare(
        `INSERT INTO fetch_items (job_id, idx, url, mirrors, filename, expected_size, expected_sha512, expected_blake2b,
                                  state, queued_at)
         VALUES (@job_id, @idx, @url, @mirrors, @filename, @expected_size, @expected_sha512, @expected_blake2b,
                 @state, @queued_at)`,
      ),
      job: db.prepare('SELECT * FROM fetch_jobs WHERE id = ?'),
      items: db.prepare('SELECT * FROM fetch_items WHERE job_id = ? ORDER BY idx'),
      nextQueued: db.prepare(
        `SELECT * FROM fetch_items WHERE state = 'queued' ORDER BY queued_at, job_id, idx LIMIT ?`,
      ),
      start: db.prepare(
        `UPDATE fetch_items SET state = 'downloading', started_at = @at, attempts = attempts + 1
         WHERE job_id = @job_id AND idx = @idx AND state = 'queued'`,
      ),
      requeue: db.prepare(
        `UPDATE fetch_items SET state = 'queued', started_at = NULL
         WHERE job_id = @job_id AND idx = @idx AND state = 'downloading'`,
      ),
      requeueAll: db.prepare(`UPDATE fetch_items SET state = 'queued', started_at = NULL WHERE state = 'downloading'`),
      done: db.prepare(
        `UPDATE fetch_items SET state = 'done', sha512 = @sha512, blake2b = @blake2b, sha256 = @sha256, size = @size,
                source = @source, reason = NULL, finished_at = @at
         WHERE job_id = @job_id AND idx = @idx`,
      ),
      fail: db.prepare(
        `UPDATE fetch_items SET state = 'failed', reason = @reason, finished_at = @at WHERE job_id = @job_id AND idx = @idx`,
      ),
      urlHash: db.prepare('SELECT sha512 FROM fetched_urls WHERE url = ?'),
      rememberUrl: db.prepare(
        `INSERT INTO fetched_urls (url, sha512, fetched_at) VALUES (@url, @sha512, @at)
         ON CONFLICT (url) DO UPDATE SET sha512 = excluded.sha512, fetched_at = excluded.fetched_at`,
      ),
    };
  }

  create(id: string, items: NewItem[], by: string | null): void {
    const at = Date.now();
    this.db
      .transaction(() => {
        this.stmt.insertJob.run({ id, at, by });
        items.forEach((item, idx) => this.stmt.insertItem.run(queuedItemRow(id, idx, item, at)));
      })
      .immediate();
  }

  job(id: string): FetchJobRow | undefined {
    return this.stmt.job.get(id);
  }

  items(jobId: string): FetchItemRow[] {
    return this.stmt.items.all(jobId);
  }

  nextQueued(limit: number): FetchItemRow[] {
    return this.stmt.nextQueued.all(limit);
  }

  /** Claims a queued item; false if it is no longer queued. */
  start(item: FetchItemRow): boolean {
    return this.stmt.start.run({ job_id: item.job_id, idx: item.idx, at: Date.now() }).changes === 1;
  }

  claim(limit: number): FetchItemRow[] {
    // Each start re-checks the state under SQLite's write lock: another process's runner may have taken one.
    return this.nextQueued(limit).filter((item) => this.start(item));
  }

  /** One machine: a runner's claims end with its process, and requeueInterrupted at start takes them back. */
  renew(): void {}

  requeue(item: FetchItemRow): void {
    this.stmt.requeue.run({ job_id: item.job_id, idx: item.idx });
  }

  /** At startup nothing is downloading: whatever was, was cut off by a stop or a crash. */
  requeueInterrupted(): number {
    return this.stmt.requeueAll.run().changes;
  }

  done(item: FetchItemRow, digests: Digests, source: string): void {
    this.stmt.done.run({ job_id: item.job_id, idx: item.idx, ...digests, source, at: Date.now() });
  }

  fail(item: FetchItemRow, reason: string): void {
    this.stmt.fail.run({ job_id: item.job_id, idx: item.idx, reason, at: Date.now() });
  }

  urlHash(url: string): string | undefined {
    return this.stmt.urlHash.get(url)?.sha512;
  }

  rememberUrl(url: string, sha512: string): void {
    this.stmt.rememberUrl.run({ url, sha512, at: Date.now() });
  }
}

/**
 * The fetch queue seen by one client process (`fastpull sync-repo`): it runs, and after a crash
 * re-queues, only the jobs it owns, so a server sharing the data directory keeps its own jobs.
 */
export class ScopedFetchJobStore extends FetchJobStore {
  /** Job ids this process runs; grows as it creates or adopts jobs. */
  readonly scope = new Set<string>();
  private readonly scoped: {
    nextQueued: Statement<[{ jobs: string; limit: number }], FetchItemRow>;
    requeueAll: Statement<[{ jobs: string }]>;
    finished: Statement<[{ jobs: string }], FetchItemRow>;
    unfinishedBy: Statement<[string], FetchItemRow>;
  };

  constructor(db: DB) {
    super(db);
    this.scoped = {
      nextQueued: db.prepare(
        `SELECT * FROM fetch_items WHERE state = 'queued' AND job_id IN (SELECT value FROM json_each(@jobs))
         ORDER BY queued_at, job_id, idx LIMIT @limit`,
      ),
      requeueAll: db.prepare(
        `UPDATE fetch_items SET state = 'queued', started_at = NULL
         WHERE state = 'downloading' AND job_id IN (SELECT value FROM json_each(@jobs))`,
      ),
      finished: db.prepare(
        `SELECT * FROM fetch_items WHERE state IN ('done', 'failed') AND job_id IN (SELECT value FROM json_each(@jobs))`,
      ),
      unfinishedBy: db.prepare(
        `SELECT i.* FROM fetch_items i JOIN fetch_jobs j ON j.id = i.job_id
         WHERE j.created_by = ? AND i.state IN ('queued', 'downloading') ORDER BY i.job_id, i.idx`,
      ),
    };
  }

  private jobs(): string {
    return JSON.stringify([...this.scope]);
  }

  override nextQueued(limit: number): FetchItemRow[] {
    return this.scoped.nextQueued.all({ jobs: this.jobs(), limit });
  }

  override requeueInterrupted(): number {
    return this.scoped.requeueAll.run({ jobs: this.jobs() }).changes;
  }

  /** Items of the given jobs that are done or failed. */
  finishedOf(jobIds: string[]): FetchItemRow[] {
    return this.scoped.finished.all({ jobs: JSON.stringify(jobIds) });
  }

  /** Items an earlier run by `createdBy` left queued or downloading (it was killed, or stopped). */
  unfinishedBy(createdBy: string): FetchItemRow[] {
    return this.scoped.unfinishedBy.all(createdBy);
  }
}
