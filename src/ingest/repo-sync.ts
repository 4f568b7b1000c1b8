import { randomUUID } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Logger } from 'pino';
import type { Config } from '../config.js';
import { AuditLog } from '../db/audit.js';
import type { NameIndex } from '../db/index.js';
import type { DB } from '../db/open.js';
import { ScopedFetchJobStore, type FetchItemRow, type NewItem } from '../db/fetch-jobs.js';
import { UploadHolds } from '../db/upload-holds.js';
import { isAppError } from '../errors.js';
import { StorageGuard } from '../maintenance/watermark.js';
import type { BlobStore } from '../store/blob-store.js';
import { MAX_ITEMS_PER_JOB } from './fetch-jobs.js';
import type { Ingest } from './ingest.js';
import type { RepoDistfile } from './repo-scan.js';
import { createSpider } from './spider.js';

export type SyncStatus = 'present' | 'attached' | 'fetched' | 'failed' | 'missing' | 'fetch-restricted';

export interface SyncResult {
  status: SyncStatus;
  reason?: string;
  /** The stored hash, when known (a Manifest without SHA512 learns it from the download). */
  sha512?: string;
}

/** A distfile that needs bytes, with the URLs to try in order. */
export interface Planned {
  distfile: RepoDistfile;
  urls: string[];
}

/** What sync-repo drives: the local data directory, or a remote origin through its API. */
export interface SyncEngine {
  /** `present`/`attached` (or a definite `failed`) without downloading; undefined when bytes are needed. */
  check(distfile: RepoDistfile): Promise<SyncResult | undefined>;
  /** Downloads through fetch jobs; `onResult` once per item as it finishes. Returns early when `signal` aborts. */
  fetchAll(items: Planned[], onResult: (item: Planned, result: SyncResult) => void, signal: AbortSignal): Promise<void>;
  /** Points the name at this hash unless it already does. True when it changed. */
  makeCurrent(filename: string, sha512: string): Promise<boolean>;
  close(): Promise<void>;
}

/**
 * Recorded as the actor of names sync-repo attaches and as the creator of its fetch jobs. The colon
 * cannot occur in a token name, so jobs a token submits through the API are never mistaken for ours.
 */
export const SYNC_ACTOR = 'cli:sync-repo';
export const DRY_RUN_ATTACH = 'stored under another name: would attach';

const NOT_FOUND = /: upstream answered (404|410)$/;
/** The fetcher's words for a mirror it could not talk to (src/upstream/fetcher.ts toUpstreamError). */
const UNREACHABLE = /: (connection refused|connect timeout|host not found|DNS lookup failed|connection reset|the connection dropped|no response headers in time|network error \(.*\))$/;

/**
 * A fetch item failed. `missing` when some URL answered 404/410 and every other one did too or
 * could not be reached (a mirror that is down says nothing about the file); `failed` when a
 * source misbehaved (wrong bytes, an error status) or none could be reached: that needs a person.
 */
export function failedItemResult(reason: string): SyncResult {
  const parts = reason.split('; ');
  const notFound = parts.filter((p) => NOT_FOUND.test(p)).length;
  const missing = notFound > 0 && parts.every((p) => NOT_FOUND.test(p) || UNREACHABLE.test(p));
  return { status: missing ? 'missing' : 'failed', reason };
}

/** The identity of a distfile: the same name with other digests is another file. */
export function digestKey(d: Pick<RepoDistfile, 'size' | 'sha512' | 'blake2b'>): string {
  return `${d.size}:${d.sha512 ?? ''}:${d.blake2b ?? ''}`;
}

export function fetchItem(item: Planned): NewItem {
  const { distfile: d, urls } = item;
  return { url: urls[0]!, mirrors: urls.slice(1), filename: d.filename, size: d.size, sha512: d.sha512, blake2b: d.blake2b };
}

/** An unfinished item of an earlier run is adopted only when it asks for exactly the same thing. */
const itemKey = (i: { filename: string; size?: number | null; sha512?: string | null; blake2b?: string | null; url: string; mirrors: string[] }) =>
  JSON.stringify([i.filename, i.size ?? null, i.sha512 ?? null, i.blake2b ?? null, i.url, i.mirrors]);

const POLL_MS = 200;

export interface LocalSyncDeps {
  config: Config;
  db: DB | undefined;
  index: NameIndex | undefined;
  store: BlobStore;
  ingest: Ingest | undefined;
  logger: Logger;
  dryRun: boolean;
}

/**
 * sync-repo against the local data directory. State that makes a run resumable lives in the
 * database: the index (what is stored) and the fetch jobs it creates as SYNC_ACTOR; an item a
 * killed run left queued or downloading is adopted by the next run instead of queued twice.
 */
export class LocalSyncEngine implements SyncEngine {
  constructor(private readonly deps: LocalSyncDeps) {}

  async check(d: RepoDistfile): Promise<SyncResult | undefined> {
    const { index, ingest, dryRun } = this.deps;
    if (!index) return undefined;
    if (d.sha512) {
      const blob = await index.blob(d.sha512);
      if (!blob || blob.quarantined_at !== null) return undefined;
      if (blob.size !== d.size || (d.blake2b !== undefined && blob.blake2b !== d.blake2b)) {
        // SHA512 names the bytes; a Manifest whose other digests disagree with them is itself wrong.
        return {
          status: 'failed',
          reason: `the stored blob with this SHA512 has size ${blob.size} and BLAKE2B ${blob.blake2b.slice(0, 16)}…: the Manifest's digests contradict each other`,
        };
      }
      if ((await index.history(d.filename)).some((n) => n.sha512 === d.sha512 && n.detached_at === null)) {
        return { status: 'present', sha512: d.sha512 };
      }
      if (dryRun || !ingest) return { status: 'missing', reason: DRY_RUN_ATTACH };
      await ingest.link(d.filename, d.sha512, SYNC_ACTOR);
      return { status: 'attached', sha512: d.sha512 };
    }
    // BLAKE2B only: the index is keyed by SHA512, so look through the name's own history.
    for (const row of await index.history(d.filename)) {
      if (row.detached_at !== null) continue;
      const blob = await index.blob(row.sha512);
      if (blob && blob.quarantined_at === null && blob.blake2b === d.blake2b && blob.size === d.size) {
        return { status: 'present', sha512: blob.sha512 };
      }
    }
    return undefined;
  }

  async fetchAll(items: Planned[], onResult: (item: Planned, result: SyncResult) => void, signal: AbortSignal): Promise<void> {
    const { config, db, ingest, logger } = this.deps;
    if (!db || !ingest || items.length === 0) return;
    // As POST /api/v1/fetches: no new downloads above the storage high watermark.
    try {
      await new StorageGuard(new UploadHolds(db), config.highWatermarkBytes).assertAccepting();
    } catch (err) {
      if (!isAppError(err)) throw err;
      for (const item of items) onResult(item, { status: 'failed', reason: `${err.message}: nothing was queued` });
      return;
    }
    const jobs = new ScopedFetchJobStore(db);
    const byRow = new Map<string, Planned>();
    const rowKey = (r: Pick<FetchItemRow, 'job_id' | 'idx'>) => `${r.job_id}/${r.idx}`;

    // Adopt what a killed or interrupted run left behind; retire what no longer matches the repository.
    const wanted = new Map(items.map((item) => [itemKey(fetchItem(item)), item]));
    const remaining = new Set(items);
    for (const row of jobs.unfinishedBy(SYNC_ACTOR)) {
      const key = itemKey({
        filename: row.filename,
        size: row.expected_size,
        sha512: row.expected_sha512,
        blake2b: row.expected_blake2b,
        url: row.url,
        mirrors: JSON.parse(row.mirrors) as string[],
      });
      const item = wanted.get(key);
      if (item && remaining.has(item)) {
        remaining.delete(item);
        jobs.scope.add(row.job_id);
        byRow.set(rowKey(row), item);
      } else {
        jobs.fail(row, 'superseded by a later sync-repo run');
      }
    }
    const fresh = [...remaining];
    for (let i = 0; i < fresh.length; i += MAX_ITEMS_PER_JOB) {
      const batch = fresh.slice(i, i + MAX_ITEMS_PER_JOB);
      const id = randomUUID();
      jobs.create(id, batch.map(fetchItem), SYNC_ACTOR);
      jobs.scope.add(id);
      batch.forEach((item, idx) => byRow.set(rowKey({ job_id: id, idx }), item));
    }

    const spider = createSpider({ ...config, pullThrough: false }, { ingest, logger, jobs });
    spider.start();
    try {
      // Items not yet reported, per job: a job with none left is no longer polled.
      const left = new Map<string, number>();
      for (const key of byRow.keys()) {
        const job = key.slice(0, key.lastIndexOf('/'));
        left.set(job, (left.get(job) ?? 0) + 1);
      }
      let outstanding = byRow.size;
      while (outstanding > 0 && !signal.aborted) {
        for (const row of jobs.finishedOf([...left.keys()])) {
          const item = byRow.get(rowKey(row));
          if (!item) continue;
          byRow.delete(rowKey(row));
          outstanding--;
          const n = left.get(row.job_id)! - 1;
          if (n === 0) left.delete(row.job_id);
          else left.set(row.job_id, n);
          onResult(
            item,
            row.state === 'done'
              ? { status: row.source === 'store' ? 'attached' : 'fetched', ...(row.sha512 ? { sha512: row.sha512 } : {}) }
              : failedItemResult(row.reason ?? 'failed'),
          );
        }
        if (outstanding > 0) await sleep(POLL_MS, undefined, { signal }).catch(() => undefined);
      }
    } finally {
      // Items still running go back to queued: the next run adopts them.
      await spider.stopJobs();
      await spider.close();
    }
  }

  async makeCurrent(filename: string, sha512: string): Promise<boolean> {
    const { index, ingest } = this.deps;
    if (!index || !ingest || (await index.servableByName(filename))?.sha512 === sha512) return false;
    await ingest.link(filename, sha512, SYNC_ACTOR);
    return true;
  }

  /** One audit record per run, as every command that changes the index leaves (names and jobs carry SYNC_ACTOR). */
  recordRun(actor: string, detail: string): void {
    if (this.deps.db) new AuditLog(this.deps.db).record({ actor, action: 'sync-repo', detail });
  }

  async close(): Promise<void> {
    this.deps.db?.close();
  }
}
