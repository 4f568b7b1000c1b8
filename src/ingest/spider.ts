import type { Logger } from 'pino';
import type { Config } from '../config.js';
import type { FetchJobQueue } from '../db/fetch-jobs.js';
import { AddressPolicy } from '../upstream/address-guard.js';
import { createAgent, Fetcher, type FetcherOptions } from '../upstream/fetcher.js';
import { timeFetches } from '../upstream/fetch-timing.js';
import { Mirror } from '../upstream/mirrors.js';
import { UpstreamStats } from '../upstream/stats.js';
import { FetchJobs } from './fetch-jobs.js';
import type { FlightLock } from './flight-lock.js';
import type { Ingest } from './ingest.js';
import { PullThrough } from './pull-through.js';

export interface Spider {
  stats: UpstreamStats;
  fetchJobs: FetchJobs;
  pullThrough: PullThrough | undefined;
  /** Starts the fetch job runner (call once the server listens). */
  start(): void;
  /** Stops job downloads (items go back to queued). Call before closing the HTTP server. */
  stopJobs(): Promise<void>;
  /** Aborts what is left and closes upstream connections. Call after closing the HTTP server. */
  close(): Promise<void>;
}

/** Everything that talks to upstream servers, built from configuration. */
export function createSpider(
  config: Config,
  /** `jobs`: the queue to run (the server: `OriginIndex.jobs`, every job in the index; sync-repo passes a scoped one). */
  deps: { jobs: FetchJobQueue; ingest: Ingest; logger: Logger; flightLock?: FlightLock; onJobQueued?: () => void },
): Spider {
  const stats = new UpstreamStats();
  // One connection pool; separate limiters so queued spider jobs can never starve pull-through misses.
  const agent = createAgent(config.fetchConnectTimeoutMs, config.fetchIdleTimeoutMs, new AddressPolicy(config.fetchAllowCidrs));
  const common: FetcherOptions = {
    connectTimeoutMs: config.fetchConnectTimeoutMs,
    idleTimeoutMs: config.fetchIdleTimeoutMs,
    maxRedirects: config.fetchMaxRedirects,
    retries: config.fetchRetries,
    concurrency: config.fetchConcurrency,
    perHostConcurrency: config.fetchPerHostConcurrency,
    stats,
    dispatcher: agent,
  };
  const log = deps.logger.child({ component: 'upstream' });
  const fetchJobs = new FetchJobs({
    ingest: deps.ingest,
    jobs: deps.jobs,
    fetcher: timeFetches(new Fetcher(common), stats),
    stats,
    concurrency: config.fetchConcurrency,
    maxBytes: config.maxUploadBytes,
    log,
    ...(deps.onJobQueued ? { onQueued: deps.onJobQueued } : {}),
  });
  let pullThrough: PullThrough | undefined;
  if (config.pullThrough && config.upstreams.length > 0) {
    const breaker = { threshold: config.upstreamFailureThreshold, cooldownMs: config.upstreamCooldownSeconds * 1000 };
    pullThrough = new PullThrough({
      ingest: deps.ingest,
      // Mirrors are chosen by the operator, and a CDN miss storm spans many files on the same mirror:
      // only the global cap applies, so one long download cannot make other misses wait for a slot.
      fetcher: timeFetches(
        new Fetcher({ ...common, perHostConcurrency: Math.max(config.fetchPerHostConcurrency, config.fetchConcurrency) }),
        stats,
      ),
      mirrors: config.upstreams.map((m) => new Mirror(m, breaker)),
      stats,
      negativeCacheSeconds: config.negativeCacheSeconds,
      maxBytes: config.maxUploadBytes,
      log,
      ...(deps.flightLock ? { lock: deps.flightLock } : {}),
    });
  }
  return {
    stats,
    fetchJobs,
    pullThrough,
    start: () => fetchJobs.start(),
    stopJobs: () => fetchJobs.stop(),
    async close() {
      await pullThrough?.close();
      await agent.destroy().catch(() => undefined);
    },
  };
}
