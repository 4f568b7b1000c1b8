import type { FetchItemRow } from './fetch-jobs.js';
import type { Sql } from './postgres-index.js';
import { PgFetchJobs } from './postgres/jobs.js';

/**
 * Work that must run once across replicas sharing one PostgreSQL database (draft, not wired yet):
 * cluster-wide locks for singleton jobs (gc, scrub), and claiming queued fetch items without two
 * replicas taking the same one.
 */

/**
 * Runs `fn` while holding the advisory lock `name`; `{ ran: false }` at once when another replica holds it.
 * The lock is session-level on one reserved connection: if the process dies, the server drops the
 * connection and with it the lock, so a crashed gc never blocks the next.
 */
export async function withClusterLock<T>(sql: Sql, name: string, fn: () => Promise<T>): Promise<{ ran: true; value: T } | { ran: false }> {
  const key = `fastpull:${name}`;
  const conn = await sql.reserve();
  try {
    const [row] = await conn<{ locked: boolean }[]>`SELECT pg_try_advisory_lock(hashtext(${key})) AS locked`;
    if (!row?.locked) return { ran: false };
    try {
      return { ran: true, value: await fn() };
    } finally {
      await conn`SELECT pg_advisory_unlock(hashtext(${key}))`;
    }
  } finally {
    conn.release();
  }
}

/**
 * Claims up to `limit` queued fetch items, oldest first, marking them downloading: rows another replica is
 * claiming at the same moment are skipped (FOR UPDATE SKIP LOCKED), never waited for nor taken twice.
 */
export function claimFetchItems(sql: Sql, limit: number): Promise<FetchItemRow[]> {
  return new PgFetchJobs(sql).claim(limit);
}
