import { setTimeout as sleep } from 'node:timers/promises';
import { request, type Dispatcher } from 'undici';
import type { RepoDistfile } from '../ingest/repo-scan.js';
import {
  DRY_RUN_ATTACH,
  failedItemResult,
  fetchItem,
  type Planned,
  type SyncEngine,
  type SyncResult,
} from '../ingest/repo-sync.js';
import { shardedPath } from '../domain/layout.js';
import { ClientError, withRetries, type Answer, type RetryPolicy } from './origin-client.js';

/** The fetch API's limits (src/ingest/fetch-jobs.ts): items per job, alternative URLs per item. */
const ITEMS_PER_JOB = 1000;
const MIRRORS_PER_ITEM = 16;
/** The admin API is rate limited per client; a 429 is waited out this many times before giving up. */
const RATE_LIMIT_WAITS = 30;

/** The name in a Content-Disposition the origin wrote (quoted ASCII, or RFC 8187 `filename*`). */
export function dispositionName(header: string | string[] | undefined): string | undefined {
  const value = Array.isArray(header) ? header[0] : header;
  if (!value) return undefined;
  const extended = /filename\*=UTF-8''([^;\s]+)/i.exec(value);
  if (extended) {
    try {
      return decodeURIComponent(extended[1]!);
    } catch {
      return undefined;
    }
  }
  return /filename="([^"]*)"/.exec(value)?.[1];
}

interface NameView {
  current: { sha512: string; blake2b: string; size: number; quarantined: boolean } | null;
  history: { sha512: string; detachedAt: string | null }[];
}

interface JobView {
  id: string;
  items: { index: number; state: string; sha512?: string; source?: string; reason?: string }[];
}

/**
 * sync-repo against a remote origin, through the same API push and coverage use: HEAD on the
 * content-hash path (a download path: never rate limited), the name API only where the HEAD
 * cannot tell, POST /api/v1/links for bytes stored under another name, and fetch jobs polled
 * until every item finished. The origin verifies every declared digest itself.
 */
export class OriginSyncEngine implements SyncEngine {
  private readonly auth: Record<string, string>;

  constructor(
    private readonly origin: string,
    token: string | undefined,
    private readonly policy: RetryPolicy,
    private readonly options: { dryRun: boolean; pollMs: number },
  ) {
    this.auth = token ? { authorization: `Bearer ${token}` } : {};
  }

  /** withRetries, plus waiting out the admin rate limit instead of failing the file. */
  private async api(what: string, send: () => Promise<Dispatcher.ResponseData>, accept: number[] = []): Promise<Answer> {
    for (let wait = 0; ; wait++) {
      try {
        return await withRetries(what, this.policy, send, accept);
      } catch (err) {
        if (!(err instanceof ClientError && err.status === 429) || wait >= RATE_LIMIT_WAITS) throw err;
        await sleep(1000 + Math.random() * 1000);
      }
    }
  }

  private async nameView(filename: string): Promise<Answer> {
    // A dry run may go without a token: the name API is then out of reach, the file counts as unknown.
    if (!this.auth.authorization) return { status: 404, headers: {}, json: undefined };
    return this.api(`GET name ${filename}`, () =>
      request(`${this.origin}/api/v1/distfiles/${encodeURIComponent(filename)}`, { headers: this.auth }), [404]);
  }

  private async attachedTo(filename: string, sha512: string): Promise<boolean> {
    const answer = await this.nameView(filename);
    const view = answer.json as NameView | undefined;
    return answer.status === 200 && (view?.history ?? []).some((h) => h.sha512 === sha512 && h.detachedAt === null);
  }

  private async link(filename: string, sha512: string): Promise<void> {
    await this.api(`link ${filename}`, () =>
      request(`${this.origin}/api/v1/links`, {
        method: 'POST',
        headers: { ...this.auth, 'content-type': 'application/json' },
        body: JSON.stringify({ filename, sha512 }),
      }),
    );
  }

  async check(d: RepoDistfile): Promise<SyncResult | undefined> {
    if (!d.sha512) {
      const answer = await this.nameView(d.filename);
      const current = answer.status === 200 ? (answer.json as NameView | undefined)?.current : undefined;
      if (current && !current.quarantined && current.blake2b === d.blake2b && current.size === d.size) {
        return { status: 'present', sha512: current.sha512 };
      }
      return undefined;
    }
    const sha512 = d.sha512;
    const head = await withRetries(`HEAD ${sha512.slice(0, 16)}…`, this.policy, () =>
      request(`${this.origin}/distfiles/${shardedPath(sha512)}`, { method: 'HEAD' }), [404]);
    if (head.status === 404) return undefined;
    const length = Number(head.headers['content-length']);
    if (length !== d.size) {
      return { status: 'failed', reason: `the origin's blob with this SHA512 has ${length} bytes, the Manifest says ${d.size}: run fastpull verify there` };
    }
    // The hash path names the blob's most recently attached name; only other names need the API.
    if (dispositionName(head.headers['content-disposition']) === d.filename || (await this.attachedTo(d.filename, sha512))) {
      return { status: 'present', sha512 };
    }
    if (this.options.dryRun) return { status: 'missing', reason: DRY_RUN_ATTACH };
    try {
      await this.link(d.filename, sha512);
    } catch (err) {
      // HEAD may have raced a gc or a quarantine: fetch it like any missing file.
      if (err instanceof ClientError && err.status === 404) return undefined;
      throw err;
    }
    return { status: 'attached', sha512 };
  }

  async fetchAll(items: Planned[], onResult: (item: Planned, result: SyncResult) => void, signal: AbortSignal): Promise<void> {
    const open = new Map<string, Planned[]>();
    for (let i = 0; i < items.length && !signal.aborted; i += ITEMS_PER_JOB) {
      const batch = items.slice(i, i + ITEMS_PER_JOB);
      const body = batch.map((item) => {
        const { size, sha512, blake2b, ...rest } = fetchItem(item);
        return {
          ...rest,
          mirrors: rest.mirrors.slice(0, MIRRORS_PER_ITEM),
          ...(size !== undefined ? { size } : {}),
          ...(sha512 !== undefined ? { sha512 } : {}),
          ...(blake2b !== undefined ? { blake2b } : {}),
        };
      });
      const answer = await this.api('queue fetch job', () =>
        request(`${this.origin}/api/v1/fetches`, {
          method: 'POST',
          headers: { ...this.auth, 'content-type': 'application/json' },
          body: JSON.stringify({ items: body }),
        }),
      );
      open.set((answer.json as unknown as JobView).id, batch);
    }
    // One poll request at a time across all jobs: the admin API is rate limited per client.
    const reported = new Set<string>();
    while (open.size > 0 && !signal.aborted) {
      for (const [id, batch] of open) {
        if (signal.aborted) break;
        await sleep(this.options.pollMs, undefined, { signal }).catch(() => undefined);
        if (signal.aborted) break;
        const view = (await this.api(`poll job ${id}`, () => request(`${this.origin}/api/v1/fetches/${id}`, { headers: this.auth }))).json as unknown as JobView;
        let unfinished = 0;
        for (const item of view.items) {
          const key = `${id}/${item.index}`;
          if (item.state !== 'done' && item.state !== 'failed') {
            unfinished++;
            continue;
          }
          if (reported.has(key)) continue;
          reported.add(key);
          onResult(
            batch[item.index]!,
            item.state === 'done'
              ? { status: item.source === 'store' ? 'attached' : 'fetched', ...(item.sha512 ? { sha512: item.sha512 } : {}) }
              : failedItemResult(item.reason ?? 'failed'),
          );
        }
        if (unfinished === 0) open.delete(id);
      }
    }
  }

  async makeCurrent(filename: string, sha512: string): Promise<boolean> {
    const view = (await this.nameView(filename)).json as NameView | undefined;
    if (view?.current?.sha512 === sha512) return false;
    await this.link(filename, sha512);
    return true;
  }

  async close(): Promise<void> {}
}
