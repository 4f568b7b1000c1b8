import path from 'node:path';
import { parseArgs } from 'node:util';
import { loadConfig } from '../config.js';
import { databaseFile, openDatabase } from '../db/open.js';

interface AuditRow {
  at: number;
  actor: string;
  action: string;
  status: number | null;
  filename: string | null;
  sha512: string | null;
  detail: string | null;
}

/** `fastpull audit [--actor NAME] [--limit N] [--json]`: who uploaded, linked, deleted, created or revoked what. */
export async function auditCommand(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    options: {
      actor: { type: 'string' },
      limit: { type: 'string', default: '50' },
      json: { type: 'boolean', default: false },
      'data-dir': { type: 'string' },
    },
  });
  const limit = Number(values.limit);
  if (!Number.isSafeInteger(limit) || limit < 1) {
    console.error('fastpull audit: --limit must be a positive integer');
    return 2;
  }
  const config = loadConfig(values['data-dir'] !== undefined ? { dataDir: path.resolve(values['data-dir']) } : {});
  const db = openDatabase(databaseFile(config.dataDir));
  try {
    const rows = db
      .prepare<[string | null, string | null, number], AuditRow>(
        `SELECT at, actor, action, status, filename, sha512, detail FROM audit_log
         WHERE (? IS NULL OR actor = ?) ORDER BY id DESC LIMIT ?`,
      )
      .all(values.actor ?? null, values.actor ?? null, limit)
      .reverse();
    if (values.json) {
      console.log(JSON.stringify(rows.map((r) => ({ ...r, at: new Date(r.at).toISOString() })), null, 2));
      return 0;
    }
    for (const r of rows) {
      const what = [r.filename, r.sha512 ? `sha512:${r.sha512.slice(0, 16)}…` : null, r.detail].filter(Boolean).join(' ');
      console.log(`${new Date(r.at).toISOString()}  ${r.actor}  ${r.action}  ${r.status ?? '-'}  ${what}`.trimEnd());
    }
    if (rows.length === 0) console.log('no audit records');
    return 0;
  } finally {
    db.close();
  }
}
