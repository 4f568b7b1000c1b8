import path from 'node:path';
import { parseArgs } from 'node:util';
import { parseScopes, TokenStore } from '../auth/token-store.js';
import { loadConfig } from '../config.js';
import { databaseFile, openDatabase } from '../db/open.js';
import { isAppError } from '../errors.js';

const USAGE = `usage:
  fastpull token create --name NAME --scope SCOPE [--scope SCOPE]…   scopes: read-api, upload, admin
  fastpull token list [--json]
  fastpull token revoke NAME`;

const iso = (ms: number | null) => (ms === null ? '-' : new Date(ms).toISOString());

/**
 * Manages API tokens in the data directory's index. Safe beside a running server: it reads
 * tokens from SQLite on every request, so a new or revoked token counts at once.
 */
export async function tokenCommand(args: string[]): Promise<number> {
  const [sub, ...rest] = args;
  const { values, positionals } = parseArgs({
    args: rest,
    allowPositionals: true,
    options: {
      name: { type: 'string' },
      scope: { type: 'string', multiple: true },
      json: { type: 'boolean', default: false },
      'data-dir': { type: 'string' },
    },
  });
  if (sub !== 'create' && sub !== 'list' && sub !== 'revoke') {
    console.error(USAGE);
    return 2;
  }
  const config = loadConfig(values['data-dir'] !== undefined ? { dataDir: path.resolve(values['data-dir']) } : {});
  const db = openDatabase(databaseFile(config.dataDir));
  const tokens = new TokenStore(db);
  try {
    switch (sub) {
      case 'create': {
        if (!values.name) {
          console.error(`fastpull token create: --name is required\n\n${USAGE}`);
          return 2;
        }
        const scopes = parseScopes(values.scope ?? []);
        const secret = tokens.create(values.name, scopes);
        console.log(`created token "${values.name}" with scope(s): ${scopes.join(', ')}`);
        console.log('the secret follows; it is stored hashed and cannot be shown again:');
        console.log(secret);
        return 0;
      }
      case 'list': {
        const list = tokens.list();
        if (values.json) {
          console.log(JSON.stringify(list.map((t) => ({ ...t, createdAt: iso(t.createdAt), revokedAt: t.revokedAt && iso(t.revokedAt), lastUsedAt: t.lastUsedAt && iso(t.lastUsedAt) })), null, 2));
          return 0;
        }
        if (list.length === 0) {
          console.log('no tokens');
          return 0;
        }
        const rows = [
          ['NAME', 'SCOPES', 'CREATED', 'REVOKED', 'LAST USED'],
          ...list.map((t) => [t.name, t.scopes.join(','), iso(t.createdAt), iso(t.revokedAt), iso(t.lastUsedAt)]),
        ];
        const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
        for (const r of rows) console.log(r.map((c, i) => c.padEnd(widths[i]!)).join('  ').trimEnd());
        return 0;
      }
      case 'revoke': {
        const name = positionals[0] ?? values.name;
        if (!name) {
          console.error(`fastpull token revoke: give the token name\n\n${USAGE}`);
          return 2;
        }
        if (!tokens.revoke(name)) {
          console.error(`fastpull token revoke: no active token named "${name}"`);
          return 1;
        }
        console.log(`revoked token "${name}"; it is refused from the next request on`);
        return 0;
      }
    }
  } catch (err) {
    if (isAppError(err)) {
      console.error(`fastpull token ${sub}: ${err.message}`);
      return 2;
    }
    throw err;
  } finally {
    db.close();
  }
}
