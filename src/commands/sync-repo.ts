import { existsSync } from 'node:fs';
import { readFile, stat, unlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { pino } from 'pino';
import { loadConfig, type Config } from '../config.js';
import { DistfileIndex } from '../db/index.js';
import { databaseFile, openDatabase, type DB } from '../db/open.js';
import { Ingest } from '../ingest/ingest.js';
import { candidateUrls } from '../ingest/repo-metadata.js';
import { loadThirdpartyMirrors, scanRepository, type RepoDistfile } from '../ingest/repo-scan.js';
import { digestKey, LocalSyncEngine, type Planned, type SyncEngine, type SyncResult, type SyncStatus } from '../ingest/repo-sync.js';
import { filenameProblem } from '../domain/names.js';
import { BlobStore } from '../store/blob-store.js';
import { Fetcher } from '../upstream/fetcher.js';
import { Mirror } from '../upstream/mirrors.js';
import { intOption, runCommand, UsageError, type Parsed } from './args.js';
import { cliActor } from './context.js';
import { ORIGIN_OPTIONS, originSettings, type RetryPolicy } from './origin-client.js';
import { Progress } from './progress.js';
import { OriginSyncEngine } from './sync-repo-origin.js';

const USAGE = `usage: fastpull sync-repo <repository-dir>... [--dry-run] [--json] [--jobs N] [--include-restricted]
                          [--mirrors-from DIR...] [--data-dir DIR | --origin URL [--token T]]
  reads every Manifest and metadata/md5-cache entry of the repositories and stores every distfile they
  reference that the origin lacks (tried from FASTPULL_UPSTREAMS first, then SRC_URI), verified against
  every Manifest digest; exit 0 when complete, 1 when something is still missing or failed, 2 when it
  could not run. A re-run continues where an interrupted one stopped.
  --dry-run             change nothing: report what is present and what would be fetched
  --json                one JSON line per distfile on stdout (the summary goes to stderr)
  --jobs N              downloads at once (default FASTPULL_FETCH_CONCURRENCY); with --origin, checks at once (8)
  --include-restricted  also fetch RESTRICT=fetch files that have a URL
  --mirrors-from DIR    read profiles/thirdpartymirrors of this (master) repository too; repeatable
  --data-dir DIR        the local data directory (default FASTPULL_DATA_DIR)
  --origin URL          drive this remote origin through its API instead (never taken from FASTPULL_ORIGIN)
  --token T             with --origin: upload token (default FASTPULL_TOKEN)
  --retries N, --retry-delay-ms MS   with --origin: retries after a network error or a 5xx (default 3, 1000)
  --poll-ms MS          with --origin: between polls of its fetch jobs (default 1000)`;

const STATUSES: SyncStatus[] = ['present', 'attached', 'fetched', 'fetch-restricted', 'missing', 'failed'];
const LOCK_FILE = 'sync-repo.lock';

const SPEC = {
  name: 'sync-repo',
  usage: USAGE,
  options: {
    ...ORIGIN_OPTIONS,
    'dry-run': { type: 'boolean' },
    json: { type: 'boolean' },
    jobs: { type: 'string' },
    'include-restricted': { type: 'boolean' },
    'mirrors-from': { type: 'string', multiple: true },
    'data-dir': { type: 'string' },
    token: { type: 'string' },
    'poll-ms': { type: 'string' },
  },
  positionals: true,
} as const;

interface Options {
  repos: string[];
  dryRun: boolean;
  json: boolean;
  jobs: number | undefined;
  includeRestricted: boolean;
  mirrorsFrom: string[];
  dataDir: string | undefined;
  /** Set with --origin: the normalized URL and the retry policy of its requests. */
  remote: { origin: string; policy: RetryPolicy; token: string | undefined; pollMs: number } | undefined;
}

/** Reads and checks the arguments; throws UsageError (exit 2) for anything wrong with them. */
async function parseOptions(values: Parsed<typeof SPEC.options>['values'], positionals: string[], onRetry: RetryPolicy['onRetry']): Promise<Options> {
  if (positionals.length === 0) throw new UsageError('no repository directory given');
  const jobs = values.jobs !== undefined ? intOption(values.jobs, 'jobs', 1, 1024) : undefined;
  const pollMs = intOption(values['poll-ms'] ?? '1000', 'poll-ms', 0);
  if (values.origin !== undefined && values['data-dir'] !== undefined) throw new UsageError('--origin and --data-dir exclude each other');
  const repos = positionals.map((p) => path.resolve(p));
  const mirrorsFrom = (values['mirrors-from'] ?? []).map((p) => path.resolve(p));
  for (const dir of [...repos, ...mirrorsFrom]) {
    if (!(await stat(dir).catch(() => undefined))?.isDirectory()) throw new UsageError(`${dir} is not a directory`);
  }
  const dryRun = values['dry-run'] ?? false;
  let remote: Options['remote'];
  // Only --origin selects remote mode: FASTPULL_ORIGIN (push's default) must not silently redirect a local sync.
  if (values.origin !== undefined) {
    const { origin, policy } = originSettings(values, undefined, onRetry);
    const token = values.token ?? loadConfig().pushToken;
    if (!token && !dryRun) throw new UsageError('no token (--token or FASTPULL_TOKEN): linking and fetch jobs need the upload scope');
    remote = { origin, policy, token, pollMs };
  }
  return {
    repos,
    dryRun,
    json: values.json ?? false,
    jobs,
    includeRestricted: values['include-restricted'] ?? false,
    mirrorsFrom,
    dataDir: values['data-dir'],
    remote,
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
    // The same address rules as the fetch jobs that will download from these mirrors.
    allowCidrs: config.fetchAllowCidrs,
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
  if (mirrors.length === 0) return [];
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

  /** Lines for people, on stdout; through the bar when both share a terminal, so it is not torn. */
  out(line: string): void {
    if (this.progress && process.stdout.isTTY) this.progress.log(line);
    else console.log(line);
  }

  note(line: string): void {
    if (this.progress) this.progress.log(line);
    else console.error(line);
  }
}

export async function syncRepoCommand(args: string[]): Promise<number> {
  // Retry lines go wherever the reporter prints notes; it exists only once --json is known.
  const shown: { reporter?: Reporter } = {};
  let parsed: { opts: Options; config: Config } | undefined;
  const code = await runCommand(SPEC, args, async (values, positionals) => {
    const opts = await parseOptions(values, positionals, (what, attempt, reason) => shown.reporter?.note(`retry ${attempt}: ${what}: ${reason}`));
    const config = loadConfig({
      ...(opts.dataDir !== undefined ? { dataDir: opts.dataDir } : {}),
      ...(opts.jobs !== undefined ? { fetchConcurrency: opts.jobs } : {}),
    });
    parsed = { opts, config };
    return 0;
  });
  if (!parsed) return code;
  const { opts, config } = parsed;

  const reporter = (shown.reporter = new Reporter(opts.json));
  let warnings = 0;
  const warn = (message: string) => {
    warnings++;
    reporter.note(`warning: ${message}`);
  };

  let engine: SyncEngine;
  let local: LocalSyncEngine | undefined;
  let release: (() => Promise<void>) | undefined;
  try {
    if (opts.remote) {
      const { origin, policy, token, pollMs } = opts.remote;
      engine = new OriginSyncEngine(origin, token, policy, { dryRun: opts.dryRun, pollMs });
    } else {
      engine = local = await openLocal(config, opts.dryRun);
      if (!opts.dryRun) release = await takeLock(config.dataDir);
    }
  } catch (err) {
    await local?.close();
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
    const checks = new Bounded(opts.remote ? (opts.jobs ?? 8) : 1);

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
            // Downloaded bytes feed the rate and ETA; files that were not downloaded only advance the bar.
            if (result.status === 'fetched') progress.read(item.distfile.size);
            progress.fileDone(result.status === 'fetched' ? 0 : item.distfile.size);
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
    if (local && !opts.dryRun) {
      const c = reporter.counts;
      local.recordRun(
        cliActor(),
        `${opts.repos.join(' ')}: ${STATUSES.map((s) => `${c[s]} ${s}`).join(', ')}${controller.signal.aborted ? '; interrupted' : ''}`,
      );
    }
    await engine.close();
    await release?.();
  }

  const { counts } = reporter;
  const total = STATUSES.reduce((n, s) => n + counts[s], 0);
  const lines = [
    `sync-repo summary (${opts.remote?.origin ?? config.dataDir}${opts.dryRun ? ', dry run' : ''}): ${total} distfiles`,
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
  if (config.databaseUrl !== undefined || config.storage.kind !== 'local') {
    // The fetch jobs of a replicated origin run on its replicas, which --origin hands the work to.
    throw new UsageError(
      'without --origin, sync-repo works on the embedded index and local store of FASTPULL_DATA_DIR; with ' +
        'FASTPULL_DATABASE_URL or FASTPULL_STORAGE=s3://… give it a replica: --origin URL',
    );
  }
  if (!existsSync(config.dataDir)) throw new Error(`data directory ${config.dataDir} does not exist`);
  const store = new BlobStore(config.dataDir, { reserveBytes: config.reserveBytes });
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
