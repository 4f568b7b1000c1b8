import { chown, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir, userInfo } from 'node:os';
import path from 'node:path';
import { missingBinaries, freePort, run } from './services.js';

/**
 * A throwaway PostgreSQL cluster (Debian's `postgresql`, no system service): initdb + pg_ctl in a temp dir,
 * listening on a free loopback port, trust authentication, one database created for the test file.
 */
export interface Postgres {
  /** postgres://postgres@127.0.0.1:PORT/DATABASE */
  url: string;
  port: number;
  database: string;
  /** Another empty database on the same cluster, e.g. one per test. */
  createDatabase(name: string): Promise<string>;
  stop(): Promise<void>;
}

const BIN = process.env.FASTPULL_TEST_PG_BIN ?? '/usr/lib/postgresql/15/bin';
const tool = (name: string) => path.join(BIN, name);

export function postgresMissing(): string | undefined {
  return missingBinaries([tool('initdb'), tool('pg_ctl'), tool('postgres'), tool('psql')], 'postgresql');
}

/** `maxConnections`: PostgreSQL's default of 100 is too few for a whole test run's servers (a pool each, plus LISTEN). */
export async function startPostgres(database = 'fastpull', options: { maxConnections?: number } = {}): Promise<Postgres> {
  const dir = await mkdtemp(path.join(tmpdir(), 'fp-pg-'));
  const data = path.join(dir, 'data');
  // PostgreSQL refuses to run as root: as root, the cluster belongs to the postgres user and runs as it.
  const asRoot = userInfo().uid === 0;
  if (asRoot) {
    const pg = Number((await run('id', ['-u', 'postgres'])).trim());
    const pgGroup = Number((await run('id', ['-g', 'postgres'])).trim());
    await chown(dir, pg, pgGroup);
  }
  const as = (command: string, args: string[]) => (asRoot ? run('runuser', ['-u', 'postgres', '--', command, ...args]) : run(command, args));
  const port = await freePort();
  let started = false;
  const stop = async () => {
    if (started) await as(tool('pg_ctl'), ['-D', data, '-m', 'immediate', '-w', 'stop']).catch(() => undefined);
    started = false;
    await rm(dir, { recursive: true, force: true });
  };
  try {
    await as(tool('initdb'), ['-D', data, '-U', 'postgres', '--auth=trust', '-E', 'UTF8', '--no-sync']);
    await as(tool('pg_ctl'), [
      '-D',
      data,
      '-l',
      path.join(dir, 'postgres.log'),
      // Unix socket in the temp dir: nothing under /var/run is needed; fsync off: a test cluster never survives a crash.
      '-o',
      `-p ${port} -k ${dir} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off -c max_connections=${options.maxConnections ?? 100}`,
      '-w',
      'start',
    ]);
    started = true;
    const createDatabase = async (name: string) => {
      await as(tool('psql'), ['-h', '127.0.0.1', '-p', String(port), '-U', 'postgres', '-v', 'ON_ERROR_STOP=1', '-c', `CREATE DATABASE "${name}"`]);
      return `postgres://postgres@127.0.0.1:${port}/${name}`;
    };
    const url = await createDatabase(database);
    return { url, port, database, createDatabase, stop };
  } catch (err) {
    await stop();
    throw err;
  }
}
