import type { Statement } from 'better-sqlite3';
import type { DB } from './open.js';
import type { Awaitable } from './awaitable.js';

export const EVENT_TYPES = [
  'blob.stored',
  'blob.restored',
  'blob.quarantined',
  'blob.deleted',
  'name.attached',
  'name.repointed',
  'name.detached',
] as const;
export type EventType = (typeof EVENT_TYPES)[number];

export interface EventRow {
  id: number;
  at: number;
  type: EventType;
  sha512: string;
  size: number | null;
  /** JSON array of file names. */
  names: string;
  previous_sha512: string | null;
  actor: string | null;
}

/** The event as announced (webhook body, GET /api/v1/events). */
export interface EventView {
  id: number;
  type: EventType;
  at: string;
  sha512: string;
  size: number | null;
  names: string[];
  previousSha512?: string;
  actor: string | null;
}

export function eventView(row: EventRow): EventView {
  return {
    id: row.id,
    type: row.type,
    at: new Date(row.at).toISOString(),
    sha512: row.sha512,
    size: row.size,
    names: JSON.parse(row.names) as string[],
    ...(row.previous_sha512 !== null ? { previousSha512: row.previous_sha512 } : {}),
    actor: row.actor,
  };
}

interface EventStatements {
  insert: Statement<[Record<string, unknown>]>;
  size: Statement<[string], { size: number }>;
  attachedNames: Statement<[string], { filename: string }>;
  allNames: Statement<[string], { filename: string }>;
}

const statements = new WeakMap<DB, EventStatements>();

function prepared(db: DB): EventStatements {
  let s = statements.get(db);
  if (!s) {
    s = {
      insert: db.prepare(
        `INSERT INTO events (at, type, sha512, size, names, previous_sha512, actor)
         VALUES (@at, @type, @sha512, @size, @names, @previous, @actor)`,
      ),
      size: db.prepare('SELECT size FROM blobs WHERE sha512 = ?'),
      attachedNames: db.prepare('SELECT filename FROM names WHERE sha512 = ? AND detached_at IS NULL ORDER BY seq DESC'),
      allNames: db.prepare('SELECT DISTINCT filename FROM names WHERE sha512 = ? ORDER BY filename'),
    };
    statements.set(db, s);
  }
  return s;
}

export interface NewEvent {
  type: EventType;
  sha512: string;
  /** File names involved; for blob events, omitted means "every name attached to the blob now". */
  names?: string[];
  previousSha512?: string | null;
  actor?: string | null | undefined;
  at?: number;
}

/**
 * Writes one event to the outbox. Refuses to run outside a transaction: an event committed apart
 * from its change could be lost (crash after the change) or announce something that never happened.
 * Size and, unless given, the attached names are read here, in the same transaction, so they are
 * what the change saw — call it before a delete.
 */
export function recordEvent(db: DB, event: NewEvent): number {
  if (!db.inTransaction) throw new Error(`event ${event.type} must be recorded inside the transaction of its change`);
  const s = prepared(db);
  const names =
    event.names ??
    (event.type === 'blob.deleted' ? s.allNames.all(event.sha512) : s.attachedNames.all(event.sha512)).map((r) => r.filename);
  const result = s.insert.run({
    at: event.at ?? Date.now(),
    type: event.type,
    sha512: event.sha512,
    size: s.size.get(event.sha512)?.size ?? null,
    names: JSON.stringify(names),
    previous: event.previousSha512 ?? null,
    actor: event.actor ?? null,
  });
  return Number(result.lastInsertRowid);
}

export interface TargetStatus {
  target: string;
  pending: number;
  failed: number;
  oldestPendingAt: number | null;
  lastSuccessAt: number | null;
  lastFailureAt: number | null;
  lastError: string | null;
}

export interface ClaimedDelivery {
  event: EventRow;
  attempts: number;
}

/**
 * The `events` area of the index: the outbox's reading side and the delivery bookkeeping (which target has
 * seen which event, leases, retries). SQLite (EventOutbox) answers synchronously; PostgreSQL
 * (db/postgres/events.ts) with promises. Events themselves are written by recordEvent inside each change.
 */
export interface Outbox {
  /** Events after `after`, oldest first (the polling API). */
  after(after: number, limit: number): Awaitable<EventRow[]>;
  lastId(): Awaitable<number>;
  /** Registers a target (starting at the newest event) if it is new. */
  addTarget(target: string): Awaitable<void>;
  /** Creates the target's deliveries for the events of `types` it has not considered yet. */
  materialize(target: string, types: readonly EventType[]): Awaitable<void>;
  /**
   * Leases the deliveries `pick` chooses among the due candidates (deliveries of one blob in event order),
   * so that however many processes share the index, a delivery is attempted by one of them at a time.
   */
  claim(
    target: string,
    owner: string,
    leaseMs: number,
    pick: (candidates: ClaimedDelivery[]) => ClaimedDelivery[],
    limit?: number,
  ): Awaitable<ClaimedDelivery[]>;
  renew(target: string, ids: number[], owner: string, leaseMs: number): Awaitable<void>;
  delivered(target: string, ids: number[]): Awaitable<void>;
  /** Schedules a retry at `next` (ms), or gives up once `maxAttempts` (0: never) is reached. Returns ids given up. */
  failed(target: string, deliveries: ClaimedDelivery[], next: number, error: string, maxAttempts: number): Awaitable<number[]>;
  /** Hands leased deliveries back uncounted (our own shutdown cut the attempt short). */
  release(target: string, ids: number[], owner: string): Awaitable<void>;
  status(target: string): Awaitable<TargetStatus>;
  /** Deletes events older than `cutoff` (ms) that none of `targets` still has to deliver. */
  prune(cutoff: number, targets: string[]): Awaitable<number>;
  /** The names an event about this blob would carry now (attached ones, newest first): what `fastpull purge` purges. */
  attachedNames(sha512: string): Awaitable<string[]>;
}

/** The outbox on SQLite: synchronous; claims are exclusive through SQLite's single writer. */
export class EventOutbox implements Outbox {
  private readonly stmt: {
    after: Statement<[{ after: number; limit: number }], EventRow>;
    maxId: Statement<[], { id: number | null }>;
    target: Statement<[string], { through_id: number }>;
    addTarget: Statement<[{ target: string }]>;
    materialize: Statement<[{ target: string; through: number; upto: number; types: string; now: number }]>;
    advance: Statement<[{ target: string; upto: number }]>;
    candidates: Statement<[{ target: string; now: number; limit: number }], EventRow & { attempts: number }>;
    lease: Statement<[{ target: string; id: number; until: number; owner: string; now: number }]>;
    renew: Statement<[{ target: string; id: number; until: number; owner: string }]>;
    delivered: Statement<[{ target: string; id: number; now: number }]>;
    failed: Statement<[{ target: string; id: number; next: number; error: string; maxAttempts: number; now: number }]>;
    release: Statement<[{ target: string; id: number; owner: string }]>;
    targetSuccess: Statement<[{ target: string; now: number }]>;
    targetFailure: Statement<[{ target: string; now: number; error: string }]>;
    status: Statement<[string], Omit<TargetStatus, 'target'> & { pending: number }>;
    prune: Statement<[{ cutoff: number; targets: string }]>;
  };

  constructor(readonly db: DB) {
    this.stmt = {
      after: db.prepare('SELECT * FROM events WHERE id > @after ORDER BY id LIMIT @limit'),
      maxId: db.prepare('SELECT max(id) AS id FROM events'),
      target: db.prepare('SELECT through_id FROM event_targets WHERE target = ?'),
      addTarget: db.prepare(
        `INSERT INTO event_targets (target, through_id) VALUES (@target, (SELECT coalesce(max(id), 0) FROM events))
         ON CONFLICT (target) DO NOTHING`,
      ),
      materialize: db.prepare(
        `INSERT INTO event_deliveries (target, event_id, sha512, state, next_at)
         SELECT @target, id, sha512, 'pending', @now FROM events
         WHERE id > @through AND id <= @upto AND type IN (SELECT value FROM json_each(@types))
         ON CONFLICT (target, event_id) DO NOTHING`,
      ),
      advance: db.prepare('UPDATE event_targets SET through_id = @upto WHERE target = @target AND through_id < @upto'),
      // Due, not leased by a live claim, and no earlier delivery of the same blob still outstanding.
      candidates: db.prepare(
        `SELECT e.*, d.attempts FROM event_deliveries d JOIN events e ON e.id = d.event_id
         WHERE d.target = @target AND d.state = 'pending' AND d.next_at <= @now AND coalesce(d.lease_until, 0) < @now
           AND NOT EXISTS (SELECT 1 FROM event_deliveries p
                           WHERE p.target = d.target AND p.sha512 = d.sha512 AND p.state = 'pending' AND p.event_id < d.event_id)
         ORDER BY d.event_id LIMIT @limit`,
      ),
      lease: db.prepare(
        `UPDATE event_deliveries SET lease_until = @until, lease_owner = @owner, attempts = attempts + 1
         WHERE target = @target AND event_id = @id AND state = 'pending' AND coalesce(lease_until, 0) < @now`,
      ),
      renew: db.prepare(
        `UPDATE event_deliveries SET lease_until = @until
         WHERE target = @target AND event_id = @id AND state = 'pending' AND lease_owner = @owner`,
      ),
      delivered: db.prepare(
        `UPDATE event_deliveries SET state = 'delivered', done_at = @now, lease_until = NULL, last_error = NULL
         WHERE target = @target AND event_id = @id AND state = 'pending'`,
      ),
      failed: db.prepare(
        `UPDATE event_deliveries SET next_at = @next, lease_until = NULL, lease_owner = NULL, last_error = @error,
           state = CASE WHEN @maxAttempts > 0 AND attempts >= @maxAttempts THEN 'failed' ELSE 'pending' END,
           done_at = CASE WHEN @maxAttempts > 0 AND attempts >= @maxAttempts THEN @now END
         WHERE target = @target AND event_id = @id AND state = 'pending'`,
      ),
      // An attempt cut short by our own shutdown is not the target's failure: it does not count.
      release: db.prepare(
        `UPDATE event_deliveries SET lease_until = NULL, lease_owner = NULL, attempts = max(0, attempts - 1)
         WHERE target = @target AND event_id = @id AND state = 'pending' AND lease_owner = @owner`,
      ),
      targetSuccess: db.prepare('UPDATE event_targets SET last_success_at = @now WHERE target = @target'),
      targetFailure: db.prepare('UPDATE event_targets SET last_failure_at = @now, last_error = @error WHERE target = @target'),
      status: db.prepare(
        `SELECT (SELECT count(*) FROM event_deliveries WHERE target = t.target AND state = 'pending') AS pending,
                (SELECT count(*) FROM event_deliveries WHERE target = t.target AND state = 'failed') AS failed,
                (SELECT min(e.at) FROM event_deliveries d JOIN events e ON e.id = d.event_id
                  WHERE d.target = t.target AND d.state = 'pending') AS oldestPendingAt,
                t.last_success_at AS lastSuccessAt, t.last_failure_at AS lastFailureAt, t.last_error AS lastError
         FROM event_targets t WHERE t.target = ?`,
      ),
      // Deliveries pending for a target no longer configured do not hold events forever.
      prune: db.prepare(
        `DELETE FROM events WHERE at < @cutoff
           AND NOT EXISTS (SELECT 1 FROM event_deliveries d
                           WHERE d.event_id = events.id AND d.state = 'pending'
                             AND d.target IN (SELECT value FROM json_each(@targets)))`,
      ),
    };
  }

  /** Events after `after`, oldest first (the polling API). */
  after(after: number, limit: number): EventRow[] {
    return this.stmt.after.all({ after, limit });
  }

  lastId(): number {
    return this.stmt.maxId.get()?.id ?? 0;
  }

  /** Registers a target (starting at the newest event) if it is new. */
  addTarget(target: string): void {
    this.stmt.addTarget.run({ target });
  }

  /**
   * Creates the target's deliveries for events it has not considered yet. Cheap when there is
   * nothing new (two reads); the write lock is taken only when there is.
   */
  materialize(target: string, types: readonly EventType[]): void {
    const upto = this.lastId();
    const row = this.stmt.target.get(target);
    if (row && row.through_id >= upto) return;
    this.db
      .transaction(() => {
        this.addTarget(target);
        const through = this.stmt.target.get(target)!.through_id;
        // Read again under the write lock: no other writer can add an event until we commit.
        const top = this.lastId();
        if (through >= top) return;
        this.stmt.materialize.run({ target, through, upto: top, types: JSON.stringify(types), now: Date.now() });
        this.stmt.advance.run({ target, upto: top });
      })
      .immediate();
  }

  /**
   * Leases the deliveries `pick` chooses among the due candidates, in one write transaction, so
   * two processes never hold the same delivery at once. `pick` returns a prefix-free subset.
   */
  claim(
    target: string,
    owner: string,
    leaseMs: number,
    pick: (candidates: ClaimedDelivery[]) => ClaimedDelivery[],
    limit = 100,
  ): ClaimedDelivery[] {
    // Idle polls stay reads: the write lock is taken only when something is due.
    if (this.stmt.candidates.all({ target, now: Date.now(), limit: 1 }).length === 0) return [];
    return this.db
      .transaction(() => {
        const now = Date.now();
        const rows = this.stmt.candidates.all({ target, now, limit });
        if (rows.length === 0) return [];
        const candidates = rows.map(({ attempts, ...event }) => ({ event: event as EventRow, attempts }));
        const chosen = pick(candidates);
        const until = now + leaseMs;
        return chosen.filter((c) => {
          const ok = this.stmt.lease.run({ target, id: c.event.id, until, owner, now }).changes === 1;
          if (ok) c.attempts++;
          return ok;
        });
      })
      .immediate();
  }

  renew(target: string, ids: number[], owner: string, leaseMs: number): void {
    const until = Date.now() + leaseMs;
    this.db.transaction(() => ids.forEach((id) => this.stmt.renew.run({ target, id, until, owner }))).immediate();
  }

  delivered(target: string, ids: number[]): void {
    const now = Date.now();
    this.db
      .transaction(() => {
        ids.forEach((id) => this.stmt.delivered.run({ target, id, now }));
        this.stmt.targetSuccess.run({ target, now });
      })
      .immediate();
  }

  /** Schedules a retry at `next` (ms), or gives up once `maxAttempts` (0: never) is reached. Returns ids given up. */
  failed(target: string, deliveries: ClaimedDelivery[], next: number, error: string, maxAttempts: number): number[] {
    const now = Date.now();
    const message = error.slice(0, 500);
    return this.db
      .transaction(() => {
        for (const d of deliveries) this.stmt.failed.run({ target, id: d.event.id, next, error: message, maxAttempts, now });
        this.stmt.targetFailure.run({ target, now, error: message });
        return deliveries.filter((d) => maxAttempts > 0 && d.attempts >= maxAttempts).map((d) => d.event.id);
      })
      .immediate();
  }

  release(target: string, ids: number[], owner: string): void {
    this.db.transaction(() => ids.forEach((id) => this.stmt.release.run({ target, id, owner }))).immediate();
  }

  status(target: string): TargetStatus {
    return targetStatus(target, this.stmt.status.get(target));
  }

  /** Deletes events older than `cutoff` (ms) that none of `targets` still has to deliver. */
  prune(cutoff: number, targets: string[]): number {
    return this.stmt.prune.run({ cutoff, targets: JSON.stringify(targets) }).changes;
  }

  attachedNames(sha512: string): string[] {
    return prepared(this.db)
      .attachedNames.all(sha512)
      .map((r) => r.filename);
  }
}

/** A target's delivery state from its status row, on either engine (no row yet: nothing pending, nothing failed). */
export function targetStatus(target: string, row: Partial<Omit<TargetStatus, 'target'>> | undefined): TargetStatus {
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
