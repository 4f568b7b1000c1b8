import type { Statement } from 'better-sqlite3';
import type { DB } from './open.js';
import type { Awaitable } from './awaitable.js';

/**
 * One record of who changed what. Actors: a token name (API writes), `cli:<user>` (commands run by an
 * operator), `scrub` (the server's background scrub).
 */
export interface AuditEntry {
  actor: string;
  action: string;
  status?: number | null;
  filename?: string | null;
  sha512?: string | null;
  detail?: string | null;
}

/** A stored record, as `fastpull audit` shows it. */
export interface AuditRow {
  at: number;
  actor: string;
  action: string;
  status: number | null;
  filename: string | null;
  sha512: string | null;
  detail: string | null;
}

export interface AuditQuery {
  /** Only this actor's records. */
  actor?: string | undefined;
  /** The last `limit` records. */
  limit: number;
}

/** The audit trail, on either index engine. */
export interface AuditArea {
  record(entry: AuditEntry): Awaitable<void>;
  /** The last `limit` records (of `actor`, when given), oldest first. */
  query(query: AuditQuery): Awaitable<AuditRow[]>;
}

/** The row an entry becomes, stamped now: shared by both engines so they store the same thing. */
export function auditRow(entry: AuditEntry, at = Date.now()): AuditRow {
  return {
    at,
    actor: entry.actor,
    action: entry.action,
    status: entry.status ?? null,
    filename: entry.filename ?? null,
    sha512: entry.sha512 ?? null,
    detail: entry.detail ?? null,
  };
}

/** The audit_log table in SQLite; the statement is prepared once, since the API writes a record per request. */
export class AuditLog implements AuditArea {
  private readonly insert: Statement<[AuditRow]>;
  private readonly last: Statement<[string | null, string | null, number], AuditRow>;

  constructor(db: DB) {
    this.insert = db.prepare(
      `INSERT INTO audit_log (at, actor, action, status, filename, sha512, detail)
       VALUES (@at, @actor, @action, @status, @filename, @sha512, @detail)`,
    );
    this.last = db.prepare(
      `SELECT at, actor, action, status, filename, sha512, detail FROM audit_log
       WHERE (? IS NULL OR actor = ?) ORDER BY id DESC LIMIT ?`,
    );
  }

  record(entry: AuditEntry): void {
    this.insert.run(auditRow(entry));
  }

  query({ actor, limit }: AuditQuery): AuditRow[] {
    return this.last.all(actor ?? null, actor ?? null, limit).reverse();
  }
}
