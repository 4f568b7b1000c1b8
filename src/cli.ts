import { pathToFileURL } from 'node:url';
import { readFileSync, realpathSync } from 'node:fs';
import { coverageCommand } from './commands/coverage.js';
import { importCommand } from './commands/import.js';
import { migrateCommand } from './commands/migrate.js';
import { pushCommand } from './commands/push.js';
import { serveCommand } from './commands/serve.js';
import { drainCommand } from './commands/drain.js';
import { tokenCommand } from './commands/token.js';
import { auditCommand } from './commands/audit.js';
import { fsckCommand } from './commands/fsck.js';
import { gcCommand } from './commands/gc.js';
import { reindexCommand } from './commands/reindex.js';
import { statsCommand } from './commands/stats.js';
import { syncRepoCommand } from './commands/sync-repo.js';
import { verifyCommand } from './commands/verify.js';
import { purgeCommand } from './commands/purge.js';
import { usageMessage } from './commands/args.js';

export type Command = (args: string[]) => Promise<number>;

/** Each subcommand lives in src/commands/; none of them loads fastify except serve. */
const COMMANDS: Record<string, { run: Command; summary: string }> = {
  serve: { run: serveCommand, summary: 'run the origin server' },
  migrate: { run: migrateCommand, summary: 'apply pending database migrations and print the schema version' },
  import: { run: importCommand, summary: 'import a DISTDIR, GLEP 75 mirror or Funtoo BLOS tree into the data directory' },
  push: { run: pushCommand, summary: 'upload files to an origin (links by hash when it already has the bytes)' },
  coverage: { run: coverageCommand, summary: 'list Manifest DIST entries an origin lacks' },
  'sync-repo': { run: syncRepoCommand, summary: 'fetch every distfile a Portage repository references that the origin lacks' },
  drain: { run: drainCommand, summary: 'make /readyz fail so a load balancer drains this instance (--off to undo)' },
  token: { run: tokenCommand, summary: 'create, list or revoke API tokens (create prints the secret once)' },
  audit: { run: auditCommand, summary: 'show who uploaded, linked or deleted what, and token changes' },
  verify: { run: verifyCommand, summary: 're-hash blobs, quarantine damaged ones (--sample N; --since 7d: not verified in 7 days); exit 1 on damage' },
  fsck: { run: fsckCommand, summary: 'reconcile blobs on disk with the index (--repair fixes what is safe)' },
  reindex: { run: reindexCommand, summary: 'rebuild the blob table from the files on disk (names cannot be recovered)' },
  gc: { run: gcCommand, summary: 'remove unreferenced, unpinned blobs older than the grace period (--dry-run)' },
  stats: { run: statsCommand, summary: 'print counts, bytes stored, largest names and dedup savings (--json)' },
  purge: { run: purgeCommand, summary: 'ask the CDN to purge the paths of names or sha512s (as fastpull does on quarantine)' },
};

function usage(): string {
  const width = Math.max(...Object.keys(COMMANDS).map((c) => c.length));
  const lines = Object.entries(COMMANDS).map(([name, c]) => `  ${name.padEnd(width)}  ${c.summary}`);
  return (
    `usage: fastpull <command> [options]     fastpull <command> --help     fastpull --version\n\ncommands:\n${lines.join('\n')}\n\n` +
    'Settings come from FASTPULL_* variables and the config file named by FASTPULL_CONFIG (JSON or YAML; see README).'
  );
}

export function version(): string {
  const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string };
  return pkg.version;
}

export async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (name === '--version' || name === '-V' || name === 'version') {
    console.log(`fastpull ${version()} (node ${process.version})`);
    return 0;
  }
  if (name === '--help' || name === '-h' || name === 'help') {
    console.log(usage());
    return 0;
  }
  if (!name) {
    console.error(usage());
    return 2;
  }
  const command = COMMANDS[name];
  if (!command) {
    console.error(`fastpull: unknown command "${name}" (fastpull --help lists them)`);
    return 2;
  }
  try {
    return await command.run(rest);
  } catch (err) {
    // A configuration error surfacing outside a command's own parsing (e.g. FASTPULL_PORT=abc) is still bad usage.
    const message = usageMessage(err);
    if (message === undefined) throw err;
    console.error(`fastpull ${name}: ${message}`);
    return 2;
  }
}

// Run directly (tsx src/cli.ts …) as well as through bin/fastpull.js.
if (process.argv[1] && import.meta.url === pathToFileURL(realpathSync(process.argv[1])).href) {
  main(process.argv.slice(2)).then(
    (code) => {
      process.exitCode = code;
    },
    (err: unknown) => {
      console.error(`fastpull: ${err instanceof Error ? err.message : String(err)}`);
      process.exitCode = 1;
    },
  );
}
