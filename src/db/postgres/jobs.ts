import type { Digests } from '../../store/digests.js';
import { queuedItemRow, type FetchItemRow, type FetchJobQueue, type FetchJobRow, type NewItem } from '../fetch-jobs.js';
import type { Sql } from '../postgres-index.js';
import { renewalPeriod, replicaId } from './replica.js';

/** Told to every listening replica when a job is queued (at commit). */
const QUEUED_CHANNEL = 'fastpull_jobs';
/** A claim lasts this long unless its runner renews it: long enough to ride out a slow database moment. */
export const DEFAULT_FETCH_LEASE_MS = 60_000;

/**
 * The fetch queue in PostgreSQL, shared by replicas. A claim takes queued items with FOR UPDATE SKIP LOCKED
 * (two replicas never take the same item) and stamps them with this replica and a lease; the runner renews
 * the lease while it downloads. An item whose lease ran out belonged to a replica that died: any replica's
 * requeueInterrupted puts it back, while items live replicas are downloading are left alone.
 */
export class PgFetchJobs implements FetchJobQueue {
  readonly renewEveryMs: number;

  constructor(
    private readonly sql: Sql,
    readonly owner = replicaId(),
    readonly leaseMs = DEFAULT_FETCH_LEASE_MS,
  ) {
    this.renewEveryMs = renewalPeriod(leaseMs);
  }

  async create(id: string, items: NewItem[], by: string | null): Promise<void> {
    const at = Date.now();
    const rows = items.map((item, idx) => queuedItemRow(id, idx, item, at));
    await this.sql.begin(async (tx) => {
      await tx`INSERT INTO fetch_jobs (id, created_at, created_by) VALUES (${id}, ${at}, ${by})`;
      await tx`INSERT INTO fetch_items ${tx(rows)}`;
      await tx`SELECT pg_notify(${QUEUED_CHANNEL}, ${id})`;
    });
  }

  async job(id: string): Promise<FetchJobRow | undefined> {
    const [row] = await this.sql<FetchJobRow[]>`SELECT * FROM fetch_jobs WHERE id = ${id}`;
    return row;
  }

  async items(jobId: string): Promise<FetchItemRow[]> {
    return [...(await this.sql<FetchItemRow[]>`SELECT * FROM fetch_items WHERE job_id = ${jobId} ORDER BY idx`)];
  }

  async claim(limit: number): Promise<FetchItemRow[]> {
    if (limit <= 0) return [];
    const now = Date.now();
    const rows = await this.sql<FetchItemRow[]>`
      UPDATE fetch_items SET state = 'downloading', started_at = ${now}, attempts = attempts + 1,
             claimed_by = ${this.owner}, lease_until = ${now + this.leaseMs}
      WHERE (job_id, idx) IN (
        SELECT job_id, idx FROM fetch_items WHERE state = 'queued'
        ORDER BY queued_at, job_id, idx LIMIT ${limit}
        FOR UPDATE SKIP LOCKED)
      RETURNING *`;
    // RETURNING follows no ORDER BY: restore the queue's order.
    return [...rows].sort((a, b) => a.queued_at - b.queued_at || (a.job_id < b.job_id ? -1 : a.job_id > b.job_id ? 1 : a.idx - b.idx));
  }

  async renew(items: FetchItemRow[]): Promise<void> {
    if (items.length === 0) return;
    await this.sql`
      UPDATE fetch_items SET lease_until = ${Date.now() + this.leaseMs}
      WHERE claimed_by = ${this.owner} AND state = 'downloading'`;
  }

  /** Handed back (this replica is stopping): told to the others at commit, so one of them resumes it now. */
  async requeue(item: FetchItemRow): Promise<void> {
    await this.sql`
      WITH back AS (
        UPDATE fetch_items SET state = 'queued', started_at = NULL, claimed_by = NULL, lease_until = NULL
        WHERE job_id = ${item.job_id} AND idx = ${item.idx} AND state = 'downloading' AND claimed_by = ${this.owner}
        RETURNING job_id)
      SELECT pg_notify(${QUEUED_CHANNEL}, job_id) FROM back`;
  }

  async requeueInterrupted(): Promise<number> {
    // A row without a lease was left downloading by a process that predates leases (or was copied from SQLite).
    const result = await this.sql`
      UPDATE fetch_items SET state = 'queued', started_at = NULL, claimed_by = NULL, lease_until = NULL
      WHERE state = 'downloading' AND coalesce(lease_until, 0) < ${Date.now()}`;
    return result.count;
  }

  async done(item: FetchItemRow, digests: Digests, source: string): Promise<void> {
    await this.sql`
      UPDATE fetch_items SET state = 'done', sha512 = ${digests.sha512}, blake2b = ${digests.blake2b}, sha256 = ${digests.sha256},
             size = ${digests.size}, source = ${source}, reason = NULL, finished_at = ${Date.now()}, claimed_by = NULL, lease_until = NULL
      WHERE job_id = ${item.job_id} AND idx = ${item.idx}`;
  }

  async fail(item: FetchItemRow, reason: string): Promise<void> {
    await this.sql`
      UPDATE fetch_items SET state = 'failed', reason = ${reason}, finished_at = ${Date.now()}, claimed_by = NULL, lease_until = NULL
      WHERE job_id = ${item.job_id} AND idx = ${item.idx}`;
  }

  async urlHash(url: string): Promise<string | undefined> {
    const [row] = await this.sql<{ sha512: string }[]>`SELECT sha512 FROM fetched_urls WHERE url = ${url}`;
    return row?.sha512;
  }

  async rememberUrl(url: string, sha512: string): Promise<void> {
    await this.sql`
      INSERT INTO fetched_urls (url, sha512, fetched_at) VALUES (${url}, ${sha512}, ${Date.now()})
      ON CONFLICT (url) DO UPDATE SET sha512 = excluded.sha512, fetched_at = excluded.fetched_at`;
  }

  async watch(onQueued: () => void): Promise<() => Promise<void>> {
    const { unlisten } = await this.sql.listen(QUEUED_CHANNEL, () => onQueued());
    return unlisten;
  }
}
