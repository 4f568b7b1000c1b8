import path from 'node:path';
import { parseScopes, TokenStore } from '../auth/token-store.js';
import { loadConfig } from '../config.js';
import { openOriginIndex } from '../db/origin-index.js';
import { isAppError } from '../errors.js';
import { runCommand, UsageError } from './args.js';
import { cliActor } from './context.js';

const USAGE = `usage: fastpull token create --name NAME --scope SCOPE [--scope SCOPE]… [--data-dir DIR]
       fastpull token list [--json] [--data-dir DIR]
       fastpull token revoke NAME [--data-dir DIR]
  scopes: read-api, upload, admin (admin implies the others). create prints the secret once, alone on the
  last line; creations and revocations are recorded in the audit log (actor cli:<user>)`;

const SUBCOMMANDS = ['create', 'list', 'revoke'] as const;

const iso = (ms: number | null) => (ms === null ? '-' : new Date(ms).toISOString());

/**
 * Manages API tokens in the index (the data directory's SQLite, or FASTPULL_DATABASE_URL). Safe beside
 * running servers: they read tokens from the index on every request, so a new or revoked token counts at once.
 */
export async function tokenCommand(args: string[]): Promise<number> {
  const [sub, ...rest] = args;
  if (sub === undefined) {
    console.error(USAGE);
    return 2;
  }
  const known = (SUBCOMMANDS as readonly string[]).includes(sub ?? '');
  const spec = {
    name: known ? `token ${sub}` : 'token',
    usage: USAGE,
    options: {
      name: { type: 'string' },
      scope: { type: 'string', multiple: true },
      json: { type: 'boolean' },
      'data-dir': { type: 'string' },
    },
    positionals: true,
  } as const;
  return runCommand(spec, known ? rest : args, async (values, positionals) => {
    if (!known) throw new UsageError(`unknown subcommand "${sub}" (create, list or revoke)`);
    if (sub !== 'revoke' && positionals.length > 0) throw new UsageError(`unexpected argument ${positionals[0]}`);
    const config = loadConfig(values['data-dir'] !== undefined ? { dataDir: path.resolve(values['data-dir']) } : {});
    const index = await openOriginIndex(config);
    const tokens = new TokenStore(index.tokens);
    try {
      switch (sub) {
        case 'create': {
          if (!values.name) throw new UsageError('--name is required');
          const scopes = parseScopes(values.scope ?? []);
          const secret = await tokens.create(values.name, scopes, cliActor());
          console.log(`created token "${values.name}" with scope(s): ${scopes.join(', ')}`);
          console.log('the secret follows; it is stored hashed and cannot be shown again:');
          console.log(secret);
          return 0;
        }
        case 'list': {
          const list = await tokens.list();
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
        default: {
          if (positionals.length > 1) throw new UsageError(`unexpected argument ${positionals[1]}`);
          const name = positionals[0] ?? values.name;
          if (!name) throw new UsageError('give the token name');
          if (!(await tokens.revoke(name, cliActor()))) {
            console.error(`fastpull token revoke: no active token named "${name}"`);
            return 1;
          }
          console.log(`revoked token "${name}"; it is refused from the next request on`);
          return 0;
        }
      }
    } catch (err) {
      // Bad names and scopes are the operator's input: usage errors, not failures.
      if (isAppError(err)) throw new UsageError(err.message);
      throw err;
    } finally {
      await index.close();
    }
  });
}
