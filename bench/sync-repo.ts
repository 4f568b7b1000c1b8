/**
 * Wall time and peak memory of `fastpull sync-repo` over a generated 10,000-ebuild repository:
 *   1. --dry-run against an empty data directory (everything is planned as a fetch);
 *   2. a real run against an index that already holds every distfile (the nightly cron case:
 *      nothing to download, every file checked and reported `present`).
 * Runs the built CLI (dist/) under /usr/bin/time -v; output goes to /dev/null like a cron job's.
 *
 *   npm run build && node --import tsx bench/sync-repo.ts [ebuilds=10000]
 */
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { DistfileIndex } from '../src/db/index.js';
import { databaseFile, openDatabase } from '../src/db/open.js';
import { scanRepository } from '../src/ingest/repo-scan.js';
import { generateRepo } from './gen-repo.js';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const CLI = path.join(ROOT, 'dist', 'cli.js');

/**
 * Peak RSS counts garbage V8 has not bothered to collect yet; this hook forces a full GC every
 * 100 ms and keeps the largest heap that survived it: what the run really holds at once.
 */
const LIVE_HEAP_HOOK = `data:text/javascript,${encodeURIComponent(
  'let p=0;setInterval(()=>{gc();p=Math.max(p,process.memoryUsage().heapUsed)},100).unref();' +
    'process.on("exit",()=>process.stderr.write("live heap peak: "+(p/1048576).toFixed(1)+" MiB\\n"))',
)}`;

function liveHeap(args: string[], env: Record<string, string>): string | undefined {
  const res = spawnSync(process.execPath, ['--expose-gc', '--import', LIVE_HEAP_HOOK, CLI, ...args], {
    env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '/tmp', ...env },
    stdio: ['ignore', 'ignore', 'pipe'],
    encoding: 'utf8',
  });
  return /live heap peak: (.+)/.exec(res.stderr)?.[1];
}

function measure(label: string, args: string[], env: Record<string, string>): void {
  const res = spawnSync('/usr/bin/time', ['-v', process.execPath, CLI, ...args], {
    env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '/tmp', ...env },
    stdio: ['ignore', 'ignore', 'pipe'],
    encoding: 'utf8',
    maxBuffer: 64 * 1024 * 1024,
  });
  const field = (name: string) => new RegExp(`${name}: (.+)`).exec(res.stderr)?.[1]?.trim();
  const summary = res.stderr.split('\n').filter((l) => /^ {2}\w|summary/.test(l) && !l.includes('\t')).join('\n');
  console.log(`\n## ${label}\nexit ${res.status}\n${summary}`);
  console.log(`wall clock: ${field('Elapsed \\(wall clock\\) time \\(h:mm:ss or m:ss\\)')}`);
  console.log(`user ${field('User time \\(seconds\\)')} s, system ${field('System time \\(seconds\\)')} s`);
  console.log(`peak RSS: ${Math.round(Number(field('Maximum resident set size \\(kbytes\\)')) / 1024)} MiB`);
  console.log(`live heap peak (full GC every 100 ms, separate run): ${liveHeap(args, env)}`);
}

const ebuilds = Number(process.argv[2] ?? 10_000);
if (!existsSync(CLI)) throw new Error('run npm run build first (the bench measures the compiled CLI)');
const work = await mkdtemp(path.join(tmpdir(), 'fastpull-bench-repo-'));
try {
  const repo = path.join(work, 'repo');
  const t0 = Date.now();
  const shape = await generateRepo(repo, ebuilds);
  console.log(`generated ${JSON.stringify(shape)} in ${Date.now() - t0} ms at ${repo}`);

  const empty = path.join(work, 'empty');
  await import('node:fs/promises').then((fs) => fs.mkdir(empty));
  console.log(`\nbaseline: the CLI loading and exiting (fastpull --help), live heap peak ${liveHeap(['--help'], {})}`);
  measure('--dry-run, empty data directory', ['sync-repo', '--dry-run', '--json', repo], { FASTPULL_DATA_DIR: empty });

  // An index holding every distfile (rows only: `present` is an index decision).
  const full = path.join(work, 'full');
  const db = openDatabase(databaseFile(full));
  const index = new DistfileIndex(db);
  let rows = 0;
  for await (const d of scanRepository(repo, new Map(), () => undefined)) {
    index.recordBlob({ size: d.size, sha512: d.sha512!, blake2b: d.blake2b!, sha256: '0'.repeat(64) }, { filename: d.filename, by: 'bench' });
    rows++;
  }
  db.close();
  console.log(`\nindexed ${rows} distfiles for the second run`);
  measure('real run, every distfile already present', ['sync-repo', '--json', repo], { FASTPULL_DATA_DIR: full });
  measure('--dry-run, every distfile already present', ['sync-repo', '--dry-run', '--json', repo], { FASTPULL_DATA_DIR: full });
} finally {
  await rm(work, { recursive: true, force: true });
}
