import { auditRow, type AuditArea, type AuditEntry, type AuditQuery, type AuditRow } from '../audit.js';
import type { Sql } from '../postgres-index.js';

/**
 * Writes one audit record with `sql`, which may be a transaction: a token change and its record commit
 * together, as on SQLite.
 */
export async function insertAudit(sql: Sql, entry: AuditEntry): Promise<void> {
  const r = auditRow(entry);
  await sql`
    INSERT INTO audit_log (at, actor, action, status, filename, sha512, detail)
    VALUES (${r.at}, ${r.actor}, ${r.action}, ${r.status}, ${r.filename}, ${r.sha512}, ${r.detail})`;
}

/** The audit_log table in PostgreSQL (migration 003's twin). */
export class PostgresAuditLog implements AuditArea {
  constructor(private readonly sql: Sql) {}

  record(entry: AuditEntry): Promise<void> {
    return insertAudit(this.sql, entry);
  }

  async query({ actor, limit }: AuditQuery): Promise<AuditRow[]> {
    // Two statements rather than `(? IS NULL OR actor = ?)`: each keeps a plan that uses its index.
    const rows =
      actor === undefined
        ? await this.sql<AuditRow[]>`
            SELECT at, actor, action, status, filename, sha512, detail FROM audit_log ORDER BY id DESC LIMIT ${limit}`
        : await this.sql<AuditRow[]>`
            SELECT at, actor, action, status, filename, sha512, detail FROM audit_log
            WHERE actor = ${actor} ORDER BY id DESC LIMIT ${limit}`;
    return [...rows].reverse();
  }
}
