import type { Statement } from 'better-sqlite3';
import type { DB } from './open.js';

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

/** The audit_log table; the statement is prepared once, since the API writes a record per request. */
export class AuditLog {
  private readonly insert: Statement<[Record<string, unknown>]>;

  constructor(db: DB) {
    this.insert = db.prepare(
      `INSERT INTO audit_log (at, actor, action, status, filename, sha512, detail)
       VALUES (@at, @actor, @action, @status, @filename, @sha512, @detail)`,
    );
  }

  record(entry: AuditEntry): void {
    this.insert.run({
      at: Date.now(),
      actor: entry.actor,
      action: entry.action,
      status: entry.status ?? null,
      filename: entry.filename ?? null,
      sha512: entry.sha512 ?? null,
      detail: entry.detail ?? null,
    });
  }
}
