import type postgres from 'postgres';
import type { ClaimedDelivery, EventRow, EventType, NewEvent, Outbox, TargetStatus } from '../events.js';
import type { Sql } from '../postgres-index.js';

/**
 * Ids come from an identity, handed out at insert but visible only at commit, so a later id can commit
 * before an earlier one: reading max(id) alone, materialize could step past an event still in flight and
 * never deliver it. Every transaction recording an event holds this lock shared until it ends (recorders
 * never wait for each other); materialize takes it exclusively, and only if free (never waits, so no
 * recorder ever queues behind it), and so reads max(id) when no lower id can still appear.
 */
const OUTBOX_LOCK = 0x66_70_65_76; // 'fpev'

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
 * The outbox on PostgreSQL, shared by replicas. Claims lock candidate rows FOR UPDATE SKIP LOCKED and lease
 * them (lease_until, lease_owner) in one transaction, so two replicas never hold one delivery; a replica
 * that dies leaves a lease that expires, and another claims the delivery again.
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
    // Idle polls stay one read: a transaction is opened only when something is due.
    if ((await this.candidates(this.sql, target, Date.now(), 1, false)).length === 0) return [];
    return (await this.sql.begin(async (tx) => {
      const now = Date.now();
      const rows = await this.candidates(tx, target, now, limit, true);
      const chosen = pick(rows.map(({ attempts, ...event }) => ({ event: event as EventRow, attempts })));
      if (chosen.length === 0) return [];
      const leased = await tx<{ event_id: number }[]>`
        UPDATE event_deliveries SET lease_until = ${now + leaseMs}, lease_owner = ${owner}, attempts = attempts + 1
        WHERE target = ${target} AND event_id = ANY(${chosen.map((c) => c.event.id)}::bigint[]) AND state = 'pending'
        RETURNING event_id`;
      const ok = new Set(leased.map((r) => r.event_id));
      return chosen.filter((c) => {
        if (ok.has(c.event.id)) c.attempts++;
        return ok.has(c.event.id);
      });
    })) as ClaimedDelivery[];
  }

  /**
   * Due, not leased by a live claim, and no earlier delivery of the same blob still outstanding. Locked rows
   * belong to another replica's claim in progress: skipped, never waited for. An earlier delivery of the same
   * blob that is locked still counts as outstanding (NOT EXISTS reads, it does not lock), so order holds.
   */
  private candidates(sql: Sql | postgres.TransactionSql, target: string, now: number, limit: number, lock: boolean) {
    return sql<(EventRow & { attempts: number })[]>`
      SELECT e.*, d.attempts FROM event_deliveries d JOIN events e ON e.id = d.event_id
      WHERE d.target = ${target} AND d.state = 'pending' AND d.next_at <= ${now} AND coalesce(d.lease_until, 0) < ${now}
        AND NOT EXISTS (SELECT 1 FROM event_deliveries p
                        WHERE p.target = d.target AND p.sha512 = d.sha512 AND p.state = 'pending' AND p.event_id < d.event_id)
      ORDER BY d.event_id LIMIT ${limit}
      ${lock ? sql`FOR UPDATE OF d SKIP LOCKED` : sql``}`;
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
    return {
      target,
      pending: row?.pending ?? 0,
      failed: row?.failed ?? 0,
      oldestPendingAt: row?.oldestPendingAt ?? null,
      lastSuccessAt: row?.lastSuccessAt ?? null,
      lastFailureAt: row?.lastFailureAt ?? null,
      lastError: row?.lastError ?? null,
    };
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
