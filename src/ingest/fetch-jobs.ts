import { randomUUID } from 'node:crypto';
import type { Logger } from 'pino';
import type { FetchItemRow, FetchJobQueue, NewItem } from '../db/fetch-jobs.js';
import { isPromise } from '../db/awaitable.js';
import { AppError, isAppError } from '../errors.js';
import type { Digests, ExpectedDigests, Mismatch } from '../store/digests.js';
import { isBlake2bHex, isSha512Hex } from '../domain/hashes.js';
import { filenameProblem } from '../domain/names.js';
import { UpstreamError, type Fetcher } from '../upstream/fetcher.js';
import type { UpstreamStats } from '../upstream/stats.js';
import type { Ingest } from './ingest.js';

export interface FetchJobsDeps {
  ingest: Ingest;
  jobs: FetchJobQueue;
  fetcher: Fetcher;
  stats: UpstreamStats;
  /** Items downloaded at once (the fetcher's limits still apply per request). */
  concurrency: number;
  maxBytes: number;
  log?: Logger | undefined;
  /**
   * Called after a job is queued. In a process that does not run jobs itself (a cluster
   * follower), this is how the process that does learns there is work.
   */
  onQueued?: () => void;
}

interface Running {
  item: FetchItemRow;
  controller: AbortController;
  bytes: number;
  total: number | undefined;
  done: Promise<void>;
}

export const MAX_ITEMS_PER_JOB = 1000;
const MAX_MIRRORS = 16;
const ITEM_FIELDS = new Set(['url', 'filename', 'size', 'sha512', 'blake2b', 'mirrors']);

/**
 * Runs fetch jobs: every item is downloaded through the store's write recipe (Ingest),
 * trying its URL then its mirrors. State lives in the index so jobs survive restarts (and, on
 * PostgreSQL, any replica may run any job: claims are exclusive);
 * byte progress of a running item lives only in memory (it would be stale after a restart anyway).
 */
export class FetchJobs {
  private readonly running = new Map<string, Running>();
  private stopping = false;
  private started = false;
  /** One claim at a time: a second pump asked for meanwhile runs when it is done. */
  private pumping = false;
  private pumpAgain = false;
  private renewTimer: NodeJS.Timeout | undefined;
  private unwatch: Promise<(() => Promise<void>) | undefined> | undefined;

  constructor(private readonly deps: FetchJobsDeps) {}

  start(): void {
    if (this.started) return;
    this.started = true;
    const { jobs, log } = this.deps;
    const requeued = jobs.requeueInterrupted();
    const begin = (n: number) => {
      if (n > 0) log?.info({ requeued: n }, 'fetch items interrupted by a restart are queued again');
      this.pump();
    };
    if (isPromise(requeued)) {
      requeued.then(begin, (err: unknown) => {
        log?.error({ err }, 'could not re-queue interrupted fetch items');
        this.pump();
      });
    } else begin(requeued);
    // Another replica queued a job: start it now rather than at the next renewal round.
    this.unwatch = jobs.watch?.(() => this.pump()).catch((err: unknown) => {
      log?.warn({ err }, 'not told of jobs other replicas queue; polling only');
      return undefined;
    });
    if (jobs.renewEveryMs !== undefined) {
      this.renewTimer = setInterval(() => void this.renew(), jobs.renewEveryMs);
      this.renewTimer.unref();
    }
  }

  /**
   * Where claims are leases (PostgreSQL): keeps ours alive, puts back those of replicas that died, and
   * looks for work (a missed notification costs one round, not a stuck queue).
   */
  private async renew(): Promise<void> {
    const { jobs, log } = this.deps;
    try {
      await jobs.renew([...this.running.values()].map((r) => r.item));
      const requeued = await jobs.requeueInterrupted();
      if (requeued > 0) log?.info({ requeued }, 'fetch items whose runner stopped renewing its claim are queued again');
    } catch (err) {
      log?.warn({ err }, 'could not renew fetch item claims');
    }
    this.pump();
  }

  /** Aborts running downloads; their items go back to queued and restart from zero next time. */
  async stop(): Promise<void> {
    this.stopping = true;
    clearInterval(this.renewTimer);
    const unwatch = await this.unwatch;
    await unwatch?.().catch(() => undefined);
    const pending = [...this.running.values()];
    for (const r of pending) r.controller.abort(new UpstreamError('aborted', 'the server is stopping', ''));
    await Promise.allSettled(pending.map((r) => r.done));
  }

  async submit(body: unknown, by: string | null): Promise<Awaited<ReturnType<FetchJobs['view']>>> {
    const items = parseItems(body);
    const id = randomUUID();
    await this.deps.jobs.create(id, items, by);
    this.deps.log?.info({ job: id, items: items.length, by }, 'fetch job queued');
    this.pump();
    this.deps.onQueued?.();
    return this.view(id);
  }

  /** Another process queued work: look for it (a no-op unless this process runs jobs). */
  wake(): void {
    this.pump();
  }

  async view(id: string) {
    const job = await this.deps.jobs.job(id);
    if (!job) throw new AppError('JOB_NOT_FOUND', 'no fetch job has that id', { id });
    const items = (await this.deps.jobs.items(id)).map((row) => this.itemView(row));
    const count = (state: string) => items.filter((i) => i.state === state).length;
    const done = count('done');
    const failed = count('failed');
    const state =
      done + failed < items.length ? (count('downloading') > 0 || done + failed > 0 ? 'running' : 'queued') : failed === 0 ? 'done' : done === 0 ? 'failed' : 'partial';
    return {
      id,
      state,
      createdAt: new Date(job.created_at).toISOString(),
      createdBy: job.created_by,
      counts: { total: items.length, queued: count('queued'), downloading: count('downloading'), done, failed },
      items,
    };
  }

  private itemView(row: FetchItemRow) {
    const progress = this.running.get(key(row));
    const declared = {
      ...(row.expected_size !== null ? { size: row.expected_size } : {}),
      ...(row.expected_sha512 !== null ? { sha512: row.expected_sha512 } : {}),
      ...(row.expected_blake2b !== null ? { blake2b: row.expected_blake2b } : {}),
    };
    return {
      index: row.idx,
      url: row.url,
      mirrors: JSON.parse(row.mirrors) as string[],
      filename: row.filename,
      state: row.state,
      declared,
      ...(row.state === 'downloading'
        ? { bytes: progress?.bytes ?? 0, total: progress?.total ?? row.expected_size ?? null }
        : {}),
      ...(row.state === 'done'
        ? { size: row.size, sha512: row.sha512, blake2b: row.blake2b, sha256: row.sha256, source: row.source }
        : {}),
      ...(row.state === 'failed' ? { reason: row.reason } : {}),
      attempts: row.attempts,
    };
  }

  /** Claims what there is room for. Synchronous on SQLite (a job submitted is downloading before its view is built). */
  private pump(): void {
    if (!this.started || this.stopping) return;
    if (this.pumping) {
      this.pumpAgain = true;
      return;
    }
    const free = this.deps.concurrency - this.running.size;
    if (free <= 0) return;
    this.pumping = true;
    const settle = () => {
      this.pumping = false;
      if (!this.pumpAgain) return;
      this.pumpAgain = false;
      this.pump();
    };
    let claimed;
    try {
      claimed = this.deps.jobs.claim(free);
    } catch (err) {
      this.deps.log?.error({ err }, 'could not claim fetch items');
      settle();
      return;
    }
    if (!isPromise(claimed)) {
      this.launch(claimed);
      settle();
      return;
    }
    claimed
      .then(
        (items) => this.launch(items),
        (err: unknown) => this.deps.log?.error({ err }, 'could not claim fetch items'),
      )
      .finally(settle);
  }

  private launch(items: FetchItemRow[]): void {
    for (const item of items) {
      const running: Running = { item, controller: new AbortController(), bytes: 0, total: undefined, done: Promise.resolve() };
      this.running.set(key(item), running);
      // Claimed while stopping: straight back to the queue, for the next start (or another replica).
      if (this.stopping) running.controller.abort(new UpstreamError('aborted', 'the server is stopping', ''));
      running.done = this.run(item, running)
        .catch(async (err: unknown) => {
          this.deps.log?.error({ err, job: item.job_id, item: item.idx }, 'fetch item crashed');
          await this.deps.jobs.fail(item, 'internal error');
        })
        .catch((err: unknown) => this.deps.log?.error({ err, job: item.job_id, item: item.idx }, 'could not record a crashed fetch item'))
        .finally(() => {
          this.running.delete(key(item));
          // setImmediate: a burst of instantly-answered items must not recurse.
          setImmediate(() => this.pump());
        });
    }
  }

  private async run(item: FetchItemRow, running: Running): Promise<void> {
    const { ingest, jobs, stats, log } = this.deps;
    if (running.controller.signal.aborted) {
      await jobs.requeue(item);
      return;
    }
    const by = (await jobs.job(item.job_id))?.created_by ?? null;
    const expected: ExpectedDigests = {
      ...(item.expected_size !== null ? { size: item.expected_size } : {}),
      ...(item.expected_sha512 !== null ? { sha512: item.expected_sha512 } : {}),
      ...(item.expected_blake2b !== null ? { blake2b: item.expected_blake2b } : {}),
    };
    const candidates = [item.url, ...(JSON.parse(item.mirrors) as string[])];

    const reused = await this.fromStore(item, expected, candidates, by);
    if (reused) {
      await jobs.done(item, reused.digests, reused.source);
      stats.add('fetchItemsDone');
      stats.add('fetchItemsReused');
      log?.info({ job: item.job_id, item: item.idx, sha512: reused.digests.sha512, source: reused.source }, 'fetch item answered from the store');
      return;
    }

    const reasons: string[] = [];
    for (const url of candidates) {
      const signal = running.controller.signal;
      try {
        const res = await this.deps.fetcher.open(url, { signal });
        // An abort (stop, shutdown) can destroy the body before ingest starts reading it, while the
        // store still prepares its temp file; with no listener that error would crash the process.
        // The reader still sees it: iterating a destroyed stream throws its error.
        res.body.on('error', () => undefined);
        running.bytes = 0;
        running.total = res.size ?? expected.size;
        if (expected.size !== undefined && res.size !== undefined && res.size !== expected.size) {
          res.body.destroy();
          reasons.push(`${url}: upstream announces ${res.size} bytes, ${expected.size} were declared`);
          continue;
        }
        const counted = async function* (source: AsyncIterable<Buffer>) {
          for await (const chunk of source) {
            running.bytes += chunk.length;
            yield chunk;
          }
        };
        let result;
        try {
          result = await ingest.ingest(counted(res.body), { filename: item.filename, expected, maxBytes: this.deps.maxBytes, by });
        } finally {
          res.body.destroy();
        }
        await jobs.rememberUrl(url, result.digests.sha512);
        await jobs.done(item, result.digests, url);
        stats.add('fetchItemsDone');
        return;
      } catch (err) {
        if (signal.aborted) {
          await jobs.requeue(item);
          return;
        }
        if (!(err instanceof UpstreamError) && !isAppError(err)) throw err;
        reasons.push(`${url}: ${describe(err)}`);
      }
    }
    await jobs.fail(item, reasons.join('; '));
    stats.add('fetchItemsFailed');
    log?.warn({ job: item.job_id, item: item.idx, reasons }, 'fetch item failed');
  }

  /**
   * No download is needed when the declared sha512 is stored already, or when one of the URLs
   * was fetched before (trust on first use) and its blob still satisfies what is declared.
   */
  private async fromStore(
    item: FetchItemRow,
    expected: ExpectedDigests,
    candidates: string[],
    by: string | null,
  ): Promise<{ digests: Digests; source: string } | undefined> {
    const hashes = expected.sha512 ? [expected.sha512] : await Promise.all(candidates.map((u) => this.deps.jobs.urlHash(u)));
    for (const sha512 of hashes) {
      if (!sha512) continue;
      const blob = await this.deps.ingest.index.blob(sha512);
      if (!blob || blob.quarantined_at !== null) continue;
      if (expected.size !== undefined && blob.size !== expected.size) continue;
      if (expected.blake2b !== undefined && blob.blake2b !== expected.blake2b) continue;
      // The index may outlive the bytes (a damaged disk, a lost object): only what is really there counts.
      if ((await this.deps.ingest.storage.stat(sha512))?.size !== blob.size) continue;
      return { digests: await this.deps.ingest.link(item.filename, sha512, by), source: 'store' };
    }
    return undefined;
  }
}

const key = (item: Pick<FetchItemRow, 'job_id' | 'idx'>) => `${item.job_id}/${item.idx}`;

function describe(err: UpstreamError | AppError): string {
  if (err instanceof UpstreamError) return err.message;
  if (err.code === 'DIGEST_MISMATCH') {
    const mismatches = (err.details?.mismatches ?? []) as Mismatch[];
    const detail = mismatches.map((m) => `${m.field} expected ${m.expected}, got ${m.actual}`).join(', ');
    return `digest mismatch${detail ? `: ${detail}` : ''}; nothing was stored`;
  }
  if (err.code === 'INTERNAL') return 'internal error';
  return err.message;
}

function httpUrl(value: unknown, what: string): string {
  if (typeof value !== 'string') throw new AppError('BAD_URL', `${what} must be an http(s) URL`);
  let parsed: URL;
  try {
    parsed = new URL(value);
  } catch {
    throw new AppError('BAD_URL', `${what} is not a valid URL`);
  }
  if (parsed.protocol !== 'http:' && parsed.protocol !== 'https:') {
    throw new AppError('BAD_URL', `${what} must use http or https`);
  }
  if (parsed.username || parsed.password) throw new AppError('BAD_URL', `${what} must not carry credentials`);
  return parsed.href;
}

function hexDigest(value: unknown, what: string, valid: (v: string) => boolean): string | undefined {
  if (value === undefined || value === null) return undefined;
  const v = typeof value === 'string' ? value.toLowerCase() : '';
  if (!valid(v)) throw new AppError('BAD_HASH', `${what} must be 128 hex digits`);
  return v;
}

/** Accepts `{items: [...]}`, a bare array, or a single item. Every problem names the item it is in. */
export function parseItems(body: unknown): NewItem[] {
  const list = Array.isArray(body)
    ? body
    : body && typeof body === 'object' && 'items' in body
      ? (body as { items: unknown }).items
      : [body];
  if (!Array.isArray(list) || list.length === 0) throw new AppError('BAD_REQUEST', 'send {"items": [...]} with at least one item');
  if (list.length > MAX_ITEMS_PER_JOB) throw new AppError('BAD_REQUEST', `at most ${MAX_ITEMS_PER_JOB} items per job`);
  return list.map((raw: unknown, i) => {
    const at = `items[${i}]`;
    if (!raw || typeof raw !== 'object' || Array.isArray(raw)) throw new AppError('BAD_REQUEST', `${at} must be an object`);
    const o = raw as Record<string, unknown>;
    for (const field of Object.keys(o)) {
      if (!ITEM_FIELDS.has(field)) throw new AppError('BAD_REQUEST', `${at}: unknown field "${field}"`);
    }
    const url = httpUrl(o.url, `${at}.url`);
    if (typeof o.filename !== 'string') throw new AppError('BAD_FILENAME', `${at}.filename must be a string`);
    const problem = filenameProblem(o.filename);
    if (problem) throw new AppError('BAD_FILENAME', `${at}.filename: ${problem}`);
    let size: number | undefined;
    if (o.size !== undefined && o.size !== null) {
      if (typeof o.size !== 'number' || !Number.isSafeInteger(o.size) || o.size < 0) {
        throw new AppError('BAD_REQUEST', `${at}.size must be a non-negative integer`);
      }
      size = o.size;
    }
    const mirrors = o.mirrors ?? [];
    if (!Array.isArray(mirrors) || mirrors.length > MAX_MIRRORS) {
      throw new AppError('BAD_URL', `${at}.mirrors must be a list of at most ${MAX_MIRRORS} URLs`);
    }
    return {
      url,
      filename: o.filename,
      size,
      sha512: hexDigest(o.sha512, `${at}.sha512`, isSha512Hex),
      blake2b: hexDigest(o.blake2b, `${at}.blake2b`, isBlake2bHex),
      mirrors: mirrors.map((m: unknown, j) => httpUrl(m, `${at}.mirrors[${j}]`)),
    };
  });
}
