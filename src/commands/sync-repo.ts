import { existsSync } from 'node:fs';
import { readFile, stat, unlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { pino } from 'pino';
import { loadConfig, type Config } from '../config.js';
import { DistfileIndex } from '../db/index.js';
import { databaseFile, openDatabase, type DB } from '../db/open.js';
import { Ingest } from '../ingest/ingest.js';
import { candidateUrls } from '../ingest/repo-metadata.js';
import { loadThirdpartyMirrors, scanRepository, type RepoDistfile } from '../ingest/repo-scan.js';
import { digestKey, LocalSyncEngine, type Planned, type SyncEngine, type SyncResult, type SyncStatus } from '../ingest/repo-sync.js';
import { BlobStore } from '../store/blob-store.js';
import { filenameProblem } from '../domain/names.js';
import { Fetcher } from '../upstream/fetcher.js';
import { Mirror } from '../upstream/mirrors.js';
import { normalizeOrigin, type RetryPolicy } from './origin-client.js';
import { Progress } from './progress.js';
import { OriginSyncEngine } from './sync-repo-origin.js';

const USAGE = `usage: fastpull sync-repo <repository-dir>... [--dry-run] [--json] [--jobs N] [--include-restricted]
                          [--mirrors-from DIR] [--data-dir DIR | --origin URL [--token T]]
  reads every Manifest and metadata/md5-cache entry of the repositories and fetches what the origin lacks
  (configured FASTPULL_UPSTREAMS first, then SRC_URI), verified against every Manifest digest.
  exit 0: complete; 1: something is still missing or failed; 2: could not run`;

const STATUSES: SyncStatus[] = ['present', 'attached', 'fetched', 'fetch-restricted', 'missing', 'failed'];
const LOCK_FILE = 'sync-repo.lock';

interface Options {
  repos: string[];
  dryRun: boolean;
  json: boolean;
  jobs: number | undefined;
  includeRestricted: boolean;
  mirrorsFrom: string[];
  dataDir: string | undefined;
  origin: string | undefined;
  token: string | undefined;
  retries: number;
  retryDelayMs: number;
  pollMs: number;
}

function parseOptions(args: string[]): Options {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: {
      'dry-run': { type: 'boolean', default: false },
      json: { type: 'boolean', default: false },
      jobs: { type: 'string' },
      'include-restricted': { type: 'boolean', default: false },
      'mirrors-from': { type: 'string', multiple: true, default: [] },
      'data-dir': { type: 'string' },
      origin: { type: 'string' },
      token: { type: 'string' },
      retries: { type: 'string', default: '3' },
      'retry-delay-ms': { type: 'string', default: '1000' },
      'poll-ms': { type: 'string', default: '1000' },
    },
  });
  if (positionals.length === 0) throw new Error('no repository directory given');
  for (const opt of ['retries', 'retry-delay-ms', 'poll-ms'] as const) {
    if (!/^\d+$/.test(values[opt])) throw new Error(`--${opt} must be a non-negative integer`);
  }
  if (values.jobs !== undefined && !/^[1-9]\d{0,3}$/.test(values.jobs)) throw new Error('--jobs must be an integer from 1 to 9999');
  if (values.origin !== undefined && values['data-dir'] !== undefined) throw new Error('--origin and --data-dir exclude each other');
  return {
    repos: positionals.map((p) => path.resolve(p)),
    dryRun: values['dry-run'],
    json: values.json,
    jobs: values.jobs !== undefined ? Number(values.jobs) : undefined,
    includeRestricted: values['include-restricted'],
    mirrorsFrom: values['mirrors-from'].map((p) => path.resolve(p)),
    dataDir: values['data-dir'],
    origin: values.origin,
    token: values.token,
    retries: Number(values.retries),
    retryDelayMs: Number(values['retry-delay-ms']),
    pollMs: Number(values['poll-ms']),
  };
}

/** One sync-repo per data directory: two would adopt and retire each other's fetch items. */
async function takeLock(dataDir: string): Promise<() => Promise<void>> {
  const file = path.join(dataDir, LOCK_FILE);
  for (let attempt = 0; attempt < 2; attempt++) {
    const taken = await writeFile(file, `${process.pid}\n`, { flag: 'wx' }).then(
      () => true,
      (err: NodeJS.ErrnoException) => (err.code === 'EEXIST' ? false : Promise.reject(err)),
    );
    if (taken) return () => unlink(file).catch(() => undefined);
    const pid = Number((await readFile(file, 'utf8').catch(() => '')).trim());
    if (Number.isInteger(pid) && pid > 0 && pid !== process.pid && alive(pid)) {
      throw new Error(`another sync-repo (pid ${pid}) is running on ${dataDir}`);
    }
    // Left by a killed run: the fetch items it left are adopted by this one.
    await unlink(file).catch(() => undefined);
  }
  throw new Error(`cannot take ${file}`);
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** The configured upstreams, as Portage's GENTOO_MIRRORS: a mirror whose layout cannot be read is left out. */
async function usableMirrors(config: Config, warn: (m: string) => void): Promise<{ mirrors: Mirror[]; fetcher: Fetcher }> {
  const fetcher = new Fetcher({
    connectTimeoutMs: config.fetchConnectTimeoutMs,
    idleTimeoutMs: config.fetchIdleTimeoutMs,
    maxRedirects: config.fetchMaxRedirects,
    retries: 0,
    concurrency: 4,
    perHostConcurrency: 1,
  });
  const mirrors: Mirror[] = [];
  for (const m of config.upstreams) {
    const mirror = new Mirror(m, { threshold: 1, cooldownMs: 0 });
    try {
      await mirror.urlFor({ kind: 'name', filename: 'layout-probe', form: 'flat' }, fetcher, AbortSignal.timeout(config.fetchIdleTimeoutMs));
      mirrors.push(mirror);
    } catch (err) {
      warn(`upstream ${m.url}: ${(err as Error).message}; not used in this run`);
    }
  }
  return { mirrors, fetcher };
}

async function mirrorUrls(mirrors: Mirror[], fetcher: Fetcher, d: RepoDistfile): Promise<string[]> {
  const urls: string[] = [];
  const signal = AbortSignal.timeout(60_000);
  for (const mirror of mirrors) {
    // Portage asks a mirror by content hash when the Manifest has a SHA512 and the layout allows it.
    const url =
      (d.sha512 ? await mirror.urlFor({ kind: 'hash', sha512: d.sha512 }, fetcher, signal).catch(() => undefined) : undefined) ??
      (await mirror.urlFor({ kind: 'name', filename: d.filename, form: 'flat' }, fetcher, signal).catch(() => undefined));
    if (url) urls.push(url);
  }
  return urls;
}

class Reporter {
  readonly counts = Object.fromEntries(STATUSES.map((s) => [s, 0])) as Record<SyncStatus, number>;
  progress: Progress | undefined;

  constructor(private readonly json: boolean) {}

  emit(d: RepoDistfile, urls: string[], result: SyncResult): void {
    this.counts[result.status]++;
    if (this.json) {
      const line = JSON.stringify({
        filename: d.filename,
        size: d.size,
        ...(d.sha512 ? { sha512: d.sha512 } : result.sha512 ? { sha512: result.sha512 } : {}),
        ...(d.blake2b ? { blake2b: d.blake2b } : {}),
        urls,
        status: result.status,
        ...(result.reason ? { reason: result.reason } : {}),
        repository: d.repository,
        manifest: d.source,
      });
      process.stdout.write(`${line}\n`);
    } else if (result.status !== 'present') {
      this.out(`${result.status.toUpperCase()} ${d.filename}${result.reason ? ` (${result.reason})` : ''}`);
    }
  }

  /** Lines for people: between progress bar redraws on stderr, or on stdout. */
  out(line: string): void {
    if (this.progress) this.progress.log(line);
    else console.log(line);
  }

  note(line: string): void {
    if (this.progress) this.progress.log(line);
    else console.error(line);
  }
}

export async function syncRepoCommand(args: string[]): Promise<number> {
  if (args.includes('--help') || args.includes('-h')) {
    console.log(USAGE);
    return 0;
  }
  let opts: Options;
  let config: Config;
  try {
    opts = parseOptions(args);
    config = loadConfig({
      ...(opts.dataDir !== undefined ? { dataDir: opts.dataDir } : {}),
      ...(opts.jobs !== undefined ? { fetchConcurrency: opts.jobs } : {}),
    });
    for (const dir of [...opts.repos, ...opts.mirrorsFrom]) {
      if (!(await stat(dir).catch(() => undefined))?.isDirectory()) throw new Error(`${dir} is not a directory`);
    }
  } catch (err) {
    console.error(`fastpull sync-repo: ${(err as Error).message}\n${USAGE}`);
    return 2;
  }

  const reporter = new Reporter(opts.json);
  let warnings = 0;
  const warn = (message: string) => {
    warnings++;
    reporter.note(`warning: ${message}`);
  };

  let engine: SyncEngine;
  let release: (() => Promise<void>) | undefined;
  try {
    // Only --origin selects remote mode: FASTPULL_ORIGIN (push's default) must not silently redirect a local sync.
    const originText = opts.origin;
    if (originText !== undefined) {
      const token = opts.token ?? config.pushToken;
      if (!token && !opts.dryRun) throw new Error('no token (--token or FASTPULL_TOKEN): linking and fetch jobs need the upload scope');
      const policy: RetryPolicy = {
        retries: opts.retries,
        baseDelayMs: opts.retryDelayMs,
        onRetry: (what, attempt, reason) => reporter.note(`retry ${attempt}: ${what}: ${reason}`),
      };
      engine = new OriginSyncEngine(normalizeOrigin(originText), token, policy, { dryRun: opts.dryRun, pollMs: opts.pollMs });
    } else {
      engine = await openLocal(config, opts.dryRun);
      if (!opts.dryRun) release = await takeLock(config.dataDir);
    }
  } catch (err) {
    console.error(`fastpull sync-repo: ${(err as Error).message}`);
    return 2;
  }

  // Ctrl-C or SIGTERM: running downloads go back to the queue, the summary is printed, a re-run continues.
  const controller = new AbortController();
  const stop = () => controller.abort();
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
  let upstream: Awaited<ReturnType<typeof usableMirrors>> | undefined;
  let errors = 0;
  let conflicts = 0;
  try {
    upstream = await usableMirrors(config, warn);
    const seen = new Map<string, { key: string; repository: string; sha512?: string }[]>();
    const pending: Planned[] = [];
    const stored = (d: RepoDistfile, sha512: string | undefined) => {
      const entry = seen.get(d.filename)?.find((e) => e.key === digestKey(d));
      if (entry && sha512) entry.sha512 = sha512;
    };
    const settle = (d: RepoDistfile, urls: string[], result: SyncResult) => {
      if (result.status === 'present' || result.status === 'attached' || result.status === 'fetched') stored(d, result.sha512);
      reporter.emit(d, urls, result);
    };

    const classify = async (d: RepoDistfile, urls: string[]) => {
      let checked: SyncResult | undefined;
      try {
        checked = await engine.check(d);
      } catch (err) {
        errors++;
        settle(d, urls, { status: 'failed', reason: `could not check: ${(err as Error).message}` });
        return;
      }
      if (checked) settle(d, urls, checked);
      else if (d.policy.fetchRestricted && !opts.includeRestricted) {
        settle(d, urls, { status: 'fetch-restricted', reason: 'RESTRICT=fetch: download it by hand and push it, or use --include-restricted' });
      } else if (urls.length === 0) {
        settle(d, urls, { status: 'missing', reason: d.unreferenced ? 'no ebuild names it in SRC_URI and no upstream is configured' : 'no http(s) URL to fetch it from' });
      } else if (opts.dryRun) {
        settle(d, urls, { status: 'missing', reason: `would fetch (${urls.length} URL${urls.length === 1 ? '' : 's'})` });
      } else pending.push({ distfile: d, urls });
    };
    // A remote origin answers one HEAD per file: overlap them. Local checks are index lookups, one at a time.
    const checks = new Bounded(opts.origin !== undefined ? (opts.jobs ?? 8) : 1);

    for (const repo of opts.repos) {
      const mirrors = await loadThirdpartyMirrors([...opts.mirrorsFrom, repo]);
      for await (const d of scanRepository(repo, mirrors, warn)) {
        if (controller.signal.aborted) break;
        const known = seen.get(d.filename) ?? [];
        const key = digestKey(d);
        if (known.some((e) => e.key === key)) continue;
        if (known.length > 0) {
          conflicts++;
          warn(`${d.filename}: ${d.repository} (${d.source}) has other digests than ${known.at(-1)!.repository}; both are kept, the last one synced is current`);
        }
        known.push({ key, repository: d.repository });
        seen.set(d.filename, known);

        const urls = candidateUrls(d.policy, await mirrorUrls(upstream.mirrors, upstream.fetcher, d), d.srcUrls);
        const problem = filenameProblem(d.filename);
        if (problem) settle(d, urls, { status: 'failed', reason: `cannot be stored under this name: ${problem}` });
        else if (!d.sha512 && !d.blake2b) {
          settle(d, urls, { status: 'failed', reason: 'the Manifest gives neither SHA512 nor BLAKE2B: nothing to verify it against' });
        } else await checks.run(() => classify(d, urls));
      }
      await checks.drain();
      if (controller.signal.aborted) break;
    }

    if (pending.length > 0 && !controller.signal.aborted) {
      const progress = new Progress({
        label: 'sync-repo',
        totalFiles: pending.length,
        totalBytes: pending.reduce((sum, p) => sum + p.distfile.size, 0),
      });
      reporter.progress = progress;
      try {
        await engine.fetchAll(
          pending,
          (item, result) => {
            settle(item.distfile, item.urls, result);
            progress.fileDone(item.distfile.size);
          },
          controller.signal,
        );
      } finally {
        progress.finish();
        reporter.progress = undefined;
      }
    }

    // The same name with other digests in a later repository: that one becomes (or stays) current.
    if (!opts.dryRun && !controller.signal.aborted) {
      for (const [filename, entries] of seen) {
        if (entries.length < 2) continue;
        const last = entries.at(-1)!;
        if (last.sha512 && (await engine.makeCurrent(filename, last.sha512))) {
          reporter.note(`${filename}: now points at ${last.sha512.slice(0, 16)}… from ${last.repository}`);
        }
      }
    }
  } catch (err) {
    console.error(`fastpull sync-repo: ${(err as Error).message}`);
    return 2;
  } finally {
    process.removeListener('SIGINT', stop);
    process.removeListener('SIGTERM', stop);
    await upstream?.fetcher.close();
    await engine.close();
    await release?.();
  }

  const { counts } = reporter;
  const total = STATUSES.reduce((n, s) => n + counts[s], 0);
  const lines = [
    `sync-repo summary (${opts.origin ?? config.dataDir}${opts.dryRun ? ', dry run' : ''}): ${total} distfiles`,
    ...STATUSES.map((s) => `  ${`${s}:`.padEnd(18)}${counts[s]}`),
    ...(conflicts > 0 ? [`  same name, other digests: ${conflicts}`] : []),
    ...(warnings > 0 ? [`  warnings:         ${warnings}`] : []),
    ...(controller.signal.aborted ? ['  interrupted: run the same command again to continue'] : []),
  ];
  (opts.json ? console.error : console.log)(lines.join('\n'));
  if (errors > 0) return 2;
  return counts.missing + counts.failed > 0 || controller.signal.aborted ? 1 : 0;
}

/** Runs at most `limit` tasks at once; `run` waits for a free slot, `drain` for the rest. */
class Bounded {
  private readonly inflight = new Set<Promise<void>>();

  constructor(private readonly limit: number) {}

  async run(task: () => Promise<void>): Promise<void> {
    const p: Promise<void> = task().finally(() => this.inflight.delete(p));
    this.inflight.add(p);
    if (this.inflight.size >= this.limit) await Promise.race(this.inflight);
  }

  async drain(): Promise<void> {
    await Promise.all(this.inflight);
  }
}

/** The data directory: written to unless this is a dry run, which only reads an index that already exists. */
async function openLocal(config: Config, dryRun: boolean): Promise<LocalSyncEngine> {
  if (!existsSync(config.dataDir)) throw new Error(`data directory ${config.dataDir} does not exist`);
  const store = new BlobStore(config.dataDir);
  const logger = pino({ level: 'error' }, pino.destination(2));
  const file = databaseFile(config.dataDir);
  let db: DB | undefined;
  if (dryRun) {
    db = existsSync(file) ? openDatabase(file, { readonly: true, migrate: false }) : undefined;
  } else {
    await store.init();
    db = openDatabase(file);
  }
  const index = db ? new DistfileIndex(db) : undefined;
  const ingest = index && !dryRun ? new Ingest(store, index, logger) : undefined;
  return new LocalSyncEngine({ config, db, index, store, ingest, logger, dryRun });
}
