import type postgres from 'postgres';
import { targetStatus, type ClaimedDelivery, type EventRow, type EventType, type NewEvent, type Outbox, type TargetStatus } from '../events.js';
import type { Sql } from '../postgres-index.js';

/**
 * Ids come from an identity, handed out at insert but visible only at commit, so a later id can commit
 * before an earlier one: reading max(id) alone, materialize could step past an event still in flight and
 * never deliver it. Every transaction recording an event holds this lock shared until it ends (recorders
 * never wait for each other); materialize takes it exclusively, and only if free (never waits, so no
 * recorder ever queues behind it), and so reads max(id) when no lower id can still appear.
 */
const OUTBOX_LOCK = 0x66_70_65_76; // 'fpev'

/** Picks lost to other replicas before a claim gives up until the next poll. */
const CLAIM_ROUNDS = 3;

/** What recordEvent runs on: the transaction of the change (`sql.begin(tx => …)`), or a savepoint in it. */
export type TransactionSql = postgres.TransactionSql | Sql;

/**
 * The PostgreSQL twin of recordEvent (src/db/events.ts): the same row, read in one round trip. Size and,
 * unless given, the names come from the transaction itself, so they are what the change saw — call it
 * before a delete. The names column holds exactly what SQLite's JSON.stringify writes (to_json escapes as
 * it does; the "C" collation sorts like SQLite's BINARY), so migrate-index copies rows verbatim either way.
 */
export async function recordEvent(tx: TransactionSql, event: NewEvent): Promise<number> {
  // postgres.js gives only a transaction's handle `savepoint`: a pool handle here would commit the event
  // apart from its change, which a crash could lose, or which could announce a change rolled back.
  if (typeof (tx as Partial<postgres.TransactionSql>).savepoint !== 'function') {
    throw new Error(`event ${event.type} must be recorded inside the transaction of its change`);
  }
  const { sha512 } = event;
  const names =
    event.names !== undefined
      ? tx`${JSON.stringify(event.names)}::text`
      : event.type === 'blob.deleted'
        ? tx`(SELECT '[' || coalesce(string_agg(to_json(filename)::text, ',' ORDER BY filename COLLATE "C"), '') || ']'
              FROM (SELECT DISTINCT filename FROM names WHERE sha512 = ${sha512}) d)`
        : tx`(SELECT '[' || coalesce(string_agg(to_json(filename)::text, ',' ORDER BY seq DESC), '') || ']'
              FROM names WHERE sha512 = ${sha512} AND detached_at IS NULL)`;
  // The CTE is evaluated before the row it feeds, so the lock is held before the identity hands out an id.
  const [row] = await tx<{ id: number }[]>`
    WITH held AS MATERIALIZED (SELECT pg_advisory_xact_lock_shared(${OUTBOX_LOCK}))
    INSERT INTO events (at, type, sha512, size, names, previous_sha512, actor)
    SELECT ${event.at ?? Date.now()}, ${event.type}, ${sha512}, (SELECT size FROM blobs WHERE sha512 = ${sha512}),
           ${names}, ${event.previousSha512 ?? null}, ${event.actor ?? null}
    FROM held
    RETURNING id`;
  return row!.id;
}

/**
 * The outbox on PostgreSQL, shared by replicas. A claim leases the deliveries it picked (lease_until,
 * lease_owner) in one statement that locks them FOR UPDATE SKIP LOCKED, so two replicas never hold one
 * delivery; a replica that dies leaves a lease that expires, and another claims the delivery again.
 */
export class PostgresEventOutbox implements Outbox {
  constructor(private readonly sql: Sql) {}

  async after(after: number, limit: number): Promise<EventRow[]> {
    return [...(await this.sql<EventRow[]>`SELECT * FROM events WHERE id > ${after} ORDER BY id LIMIT ${limit}`)];
  }

  async lastId(): Promise<number> {
    const [row] = await this.sql<{ id: number }[]>`SELECT coalesce(max(id), 0) AS id FROM events`;
    return row!.id;
  }

  async addTarget(target: string): Promise<void> {
    await this.sql`
      INSERT INTO event_targets (target, through_id) VALUES (${target}, (SELECT coalesce(max(id), 0) FROM events))
      ON CONFLICT (target) DO NOTHING`;
  }

  async materialize(target: string, types: readonly EventType[]): Promise<void> {
    const [seen] = await this.sql<{ through: number | null; top: number }[]>`
      SELECT (SELECT through_id FROM event_targets WHERE target = ${target}) AS through,
             (SELECT coalesce(max(id), 0) FROM events) AS top`;
    if (seen!.through !== null && seen!.through >= seen!.top) return;
    await this.sql.begin(async (tx) => {
      const [lock] = await tx<{ locked: boolean }[]>`SELECT pg_try_advisory_xact_lock(${OUTBOX_LOCK}) AS locked`;
      // An event is being recorded (or another replica is materializing): the next poll will do it.
      if (!lock!.locked) return;
      await tx`
        INSERT INTO event_targets (target, through_id) VALUES (${target}, (SELECT coalesce(max(id), 0) FROM events))
        ON CONFLICT (target) DO NOTHING`;
      const [row] = await tx<{ through: number; top: number }[]>`
        SELECT through_id AS through, (SELECT coalesce(max(id), 0) FROM events) AS top
        FROM event_targets WHERE target = ${target}`;
      const { through, top } = row!;
      if (through >= top) return;
      await tx`
        INSERT INTO event_deliveries (target, event_id, sha512, state, next_at)
        SELECT ${target}, id, sha512, 'pending', ${Date.now()} FROM events
        WHERE id > ${through} AND id <= ${top} AND type = ANY(${[...types]}::text[])
        ON CONFLICT (target, event_id) DO NOTHING`;
      await tx`UPDATE event_targets SET through_id = ${top} WHERE target = ${target} AND through_id < ${top}`;
    });
  }

  async claim(
    target: string,
    owner: string,
    leaseMs: number,
    pick: (candidates: ClaimedDelivery[]) => ClaimedDelivery[],
    limit = 100,
  ): Promise<ClaimedDelivery[]> {
    // Replicas polling together read the same candidates and pick alike (oldest first): the one that loses
    // a pick tries again without it, rather than idling a poll while others deliver.
    const lost = new Set<number>();
    for (let round = 0; round < CLAIM_ROUNDS; round++) {
      const now = Date.now();
      const rows = (await this.candidates(target, now, limit + lost.size)).filter((r) => !lost.has(r.id));
      if (rows.length === 0) return [];
      const chosen = pick(rows.map(({ attempts, ...event }) => ({ event: event as EventRow, attempts })));
      if (chosen.length === 0) return [];
      // Only the chosen rows are locked, and never waited for: a row another replica is leasing right now is
      // skipped; one it has leased and committed fails the lease check (re-read under the lock).
      const leased = await this.sql<{ event_id: number }[]>`
        UPDATE event_deliveries SET lease_until = ${now + leaseMs}, lease_owner = ${owner}, attempts = attempts + 1
        WHERE target = ${target} AND event_id IN (
          SELECT event_id FROM event_deliveries
          WHERE target = ${target} AND event_id = ANY(${chosen.map((c) => c.event.id)}::bigint[])
            AND state = 'pending' AND coalesce(lease_until, 0) < ${now}
          FOR UPDATE SKIP LOCKED)
        RETURNING event_id`;
      const ok = new Set(leased.map((r) => r.event_id));
      if (ok.size > 0) {
        return chosen.filter((c) => {
          if (ok.has(c.event.id)) c.attempts++;
          return ok.has(c.event.id);
        });
      }
      for (const c of chosen) lost.add(c.event.id);
    }
    return [];
  }

  /**
   * Due, not leased by a live claim, and the oldest delivery of its blob still outstanding (so a blob's events
   * go out in order, whichever replica holds the earlier one). The oldest is a per-row index probe on purpose:
   * written as NOT EXISTS, the planner may pick an anti join scanning every pending row per row (seconds for a
   * backlog of thousands) while the table's statistics lag behind its churn.
   */
  private candidates(target: string, now: number, limit: number) {
    return this.sql<(EventRow & { attempts: number })[]>`
      SELECT e.*, d.attempts FROM event_deliveries d JOIN events e ON e.id = d.event_id
      WHERE d.target = ${target} AND d.state = 'pending' AND d.next_at <= ${now} AND coalesce(d.lease_until, 0) < ${now}
        AND d.event_id = (SELECT min(p.event_id) FROM event_deliveries p
                          WHERE p.target = d.target AND p.sha512 = d.sha512 AND p.state = 'pending')
      ORDER BY d.event_id LIMIT ${limit}`;
  }

  async renew(target: string, ids: number[], owner: string, leaseMs: number): Promise<void> {
    await this.sql`
      UPDATE event_deliveries SET lease_until = ${Date.now() + leaseMs}
      WHERE target = ${target} AND event_id = ANY(${ids}::bigint[]) AND state = 'pending' AND lease_owner = ${owner}`;
  }

  async delivered(target: string, ids: number[]): Promise<void> {
    const now = Date.now();
    await this.sql.begin(async (tx) => {
      await tx`
        UPDATE event_deliveries SET state = 'delivered', done_at = ${now}, lease_until = NULL, last_error = NULL
        WHERE target = ${target} AND event_id = ANY(${ids}::bigint[]) AND state = 'pending'`;
      await tx`UPDATE event_targets SET last_success_at = ${now} WHERE target = ${target}`;
    });
  }

  async failed(target: string, deliveries: ClaimedDelivery[], next: number, error: string, maxAttempts: number): Promise<number[]> {
    const now = Date.now();
    const message = error.slice(0, 500);
    const ids = deliveries.map((d) => d.event.id);
    await this.sql.begin(async (tx) => {
      await tx`
        UPDATE event_deliveries SET next_at = ${next}, lease_until = NULL, lease_owner = NULL, last_error = ${message},
          state = CASE WHEN ${maxAttempts}::integer > 0 AND attempts >= ${maxAttempts}::integer THEN 'failed' ELSE 'pending' END,
          done_at = CASE WHEN ${maxAttempts}::integer > 0 AND attempts >= ${maxAttempts}::integer THEN ${now}::bigint END
        WHERE target = ${target} AND event_id = ANY(${ids}::bigint[]) AND state = 'pending'`;
      await tx`UPDATE event_targets SET last_failure_at = ${now}, last_error = ${message} WHERE target = ${target}`;
    });
    return deliveries.filter((d) => maxAttempts > 0 && d.attempts >= maxAttempts).map((d) => d.event.id);
  }

  async release(target: string, ids: number[], owner: string): Promise<void> {
    // An attempt cut short by our own shutdown is not the target's failure: it does not count.
    await this.sql`
      UPDATE event_deliveries SET lease_until = NULL, lease_owner = NULL, attempts = greatest(0, attempts - 1)
      WHERE target = ${target} AND event_id = ANY(${ids}::bigint[]) AND state = 'pending' AND lease_owner = ${owner}`;
  }

  async status(target: string): Promise<TargetStatus> {
    const [row] = await this.sql<Omit<TargetStatus, 'target'>[]>`
      SELECT (SELECT count(*) FROM event_deliveries WHERE target = t.target AND state = 'pending') AS "pending",
             (SELECT count(*) FROM event_deliveries WHERE target = t.target AND state = 'failed') AS "failed",
             (SELECT min(e.at) FROM event_deliveries d JOIN events e ON e.id = d.event_id
               WHERE d.target = t.target AND d.state = 'pending') AS "oldestPendingAt",
             t.last_success_at AS "lastSuccessAt", t.last_failure_at AS "lastFailureAt", t.last_error AS "lastError"
      FROM event_targets t WHERE t.target = ${target}`;
    return targetStatus(target, row);
  }

  async attachedNames(sha512: string): Promise<string[]> {
    const rows = await this.sql<{ filename: string }[]>`
      SELECT filename FROM names WHERE sha512 = ${sha512} AND detached_at IS NULL ORDER BY seq DESC`;
    return rows.map((r) => r.filename);
  }

  async prune(cutoff: number, targets: string[]): Promise<number> {
    // Deliveries pending for a target no longer configured do not hold events forever.
    const result = await this.sql`
      DELETE FROM events WHERE at < ${cutoff}
        AND NOT EXISTS (SELECT 1 FROM event_deliveries d
                        WHERE d.event_id = events.id AND d.state = 'pending' AND d.target = ANY(${targets}::text[]))`;
    return result.count;
  }
}
