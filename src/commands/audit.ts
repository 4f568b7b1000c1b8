import path from 'node:path';
import { loadConfig } from '../config.js';
import { openOriginIndex } from '../db/origin-index.js';
import { intOption, runCommand } from './args.js';

const USAGE = `usage: fastpull audit [--actor NAME] [--limit N] [--json] [--data-dir DIR]
  the last N (default 50) audit records, oldest first: API writes (actor: token name), commands that change
  the store or the tokens (actor: cli:<user>) and the background scrub (actor: scrub)`;

/** `fastpull audit [--actor NAME] [--limit N] [--json]`: who uploaded, linked, deleted, created or revoked what. */
export async function auditCommand(args: string[]): Promise<number> {
  const spec = {
    name: 'audit',
    usage: USAGE,
    options: { actor: { type: 'string' }, limit: { type: 'string' }, json: { type: 'boolean' }, 'data-dir': { type: 'string' } },
  } as const;
  return runCommand(spec, args, async (values) => showAudit(values, values.limit !== undefined ? intOption(values.limit, 'limit', 1) : 50));
}

async function showAudit(values: { actor?: string | undefined; json?: boolean | undefined; 'data-dir'?: string | undefined }, limit: number): Promise<number> {
  const config = loadConfig(values['data-dir'] !== undefined ? { dataDir: path.resolve(values['data-dir']) } : {});
  const index = await openOriginIndex(config);
  try {
    const rows = await index.audit.query({ actor: values.actor, limit });
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
    await index.close();
  }
}
