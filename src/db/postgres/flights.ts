import type { Sql } from '../postgres-index.js';
import { renewalPeriod, replicaId } from './replica.js';

/** Told to every listening replica when a flight ends (at commit), with its key and whether the blob was stored. */
const DONE_CHANNEL = 'fastpull_flight';
/** A flight row lasts this long unless its owner renews it: a dead owner's waiters give up by then. */
export const DEFAULT_FLIGHT_TTL_MS = 30_000;

/** The same shape as ingest's FlightGrant (src/db imports nothing from ingest/). */
export type PgFlightGrant = { owner: true; release(stored: boolean): void } | { owner: false; outcome: Promise<boolean> };

/**
 * Pull-through single flight across replicas sharing one PostgreSQL: the first replica to insert the key's
 * row in pull_flights downloads; the others wait for the row's owner to say (NOTIFY at commit) whether the
 * blob is now stored, then serve it from the shared store. A row, not a session advisory lock, so a
 * download holds no pooled connection. The owner renews its rows while it downloads; waiters also look at
 * the rows now and then, so a lost notification or a dead owner (its row expires) cannot strand them.
 * Per process, PullThrough already joins requests for one key to one acquire.
 */
export class PgFlightLock {
  private readonly waiters = new Map<string, Set<(stored: boolean) => void>>();
  private readonly owned = new Set<string>();
  /** Releases still committing: this process's next miss of the key waits for its row to go, not for a notify. */
  private readonly releasing = new Map<string, Promise<void>>();
  private listening: Promise<{ unlisten(): Promise<void> }> | undefined;
  private renewTimer: NodeJS.Timeout | undefined;
  private pollTimer: NodeJS.Timeout | undefined;
  private closed = false;

  constructor(
    private readonly sql: Sql,
    readonly owner = replicaId(),
    readonly ttlMs = DEFAULT_FLIGHT_TTL_MS,
    /** How often waiters look at the rows they wait on (notifications normally answer them first). */
    readonly pollMs = 1_000,
  ) {}

  async acquire(key: string): Promise<PgFlightGrant> {
    // Listening before looking: a flight ending right after our insert found its row must still reach us.
    await this.listen();
    await this.releasing.get(key);
    const now = Date.now();
    // A row whose owner stopped renewing it (a dead replica) is taken over.
    const [row] = await this.sql<{ owner: string }[]>`
      INSERT INTO pull_flights (key, owner, expires_at) VALUES (${key}, ${this.owner}, ${now + this.ttlMs})
      ON CONFLICT (key) DO UPDATE SET owner = excluded.owner, expires_at = excluded.expires_at
      WHERE pull_flights.expires_at < ${now}
      RETURNING owner`;
    if (row) {
      this.owned.add(key);
      this.renewWhileOwning();
      return {
        owner: true,
        release: (stored) => {
          const done = this.release(key, stored).finally(() => {
            if (this.releasing.get(key) === done) this.releasing.delete(key);
          });
          this.releasing.set(key, done);
        },
      };
    }
    return { owner: false, outcome: this.wait(key) };
  }

  /** Stops listening and waiting; waiters still pending are told the flight failed. */
  async close(): Promise<void> {
    this.closed = true;
    clearInterval(this.renewTimer);
    clearInterval(this.pollTimer);
    for (const key of [...this.waiters.keys()]) this.settle(key, false);
    const listening = await this.listening?.catch(() => undefined);
    await listening?.unlisten().catch(() => undefined);
  }

  private listen(): Promise<unknown> {
    if (this.listening) return this.listening;
    this.listening = this.sql.listen(DONE_CHANNEL, (payload) => {
      const { key, stored } = JSON.parse(payload) as { key: string; stored: boolean };
      this.settle(key, stored);
    });
    // Once per process: rows of crashed owners whose keys nobody asked for again (an acquire takes over the rest).
    this.sql`DELETE FROM pull_flights WHERE expires_at < ${Date.now()}`.catch(() => undefined);
    return this.listening;
  }

  private async release(key: string, stored: boolean): Promise<void> {
    this.owned.delete(key);
    if (this.owned.size === 0) {
      clearInterval(this.renewTimer);
      this.renewTimer = undefined;
    }
    try {
      await this.sql.begin(async (tx) => {
        await tx`DELETE FROM pull_flights WHERE key = ${key} AND owner = ${this.owner}`;
        await tx`SELECT pg_notify(${DONE_CHANNEL}, ${JSON.stringify({ key, stored })})`;
      });
    } catch {
      // The row expires on its own; waiters then give up (their poll sees it expired).
    }
  }

  private renewWhileOwning(): void {
    if (this.renewTimer || this.closed) return;
    this.renewTimer = setInterval(() => {
      this.sql`UPDATE pull_flights SET expires_at = ${Date.now() + this.ttlMs} WHERE owner = ${this.owner}`.catch(() => undefined);
    }, renewalPeriod(this.ttlMs));
    this.renewTimer.unref();
  }

  private wait(key: string): Promise<boolean> {
    return new Promise<boolean>((resolve) => {
      if (this.closed) return resolve(false);
      let set = this.waiters.get(key);
      if (!set) this.waiters.set(key, (set = new Set()));
      set.add(resolve);
      this.pollTimer ??= setInterval(() => void this.poll(), this.pollMs);
      this.pollTimer.unref();
    });
  }

  /** For keys still waited on: no row means the flight ended unheard (the store tells the rest); an expired one, that its owner died. */
  private async poll(): Promise<void> {
    const keys = [...this.waiters.keys()];
    if (keys.length === 0) return;
    try {
      const rows = await this.sql<{ key: string; expires_at: number }[]>`
        SELECT key, expires_at FROM pull_flights WHERE key = ANY(${keys})`;
      const now = Date.now();
      const live = new Map(rows.map((r) => [r.key, r.expires_at]));
      for (const key of keys) {
        const until = live.get(key);
        if (until === undefined) this.settle(key, true);
        else if (until < now) this.settle(key, false);
      }
    } catch {
      // The next round asks again.
    }
  }

  private settle(key: string, stored: boolean): void {
    const set = this.waiters.get(key);
    if (!set) return;
    this.waiters.delete(key);
    for (const resolve of set) resolve(stored);
    if (this.waiters.size === 0) {
      clearInterval(this.pollTimer);
      this.pollTimer = undefined;
    }
  }
}
