import type { FastifyInstance } from 'fastify';
import type { Logger } from 'pino';
import { BootstrapAuthenticator } from './auth/tokens.js';
import { DbAuthenticator, TokenStore } from './auth/token-store.js';
import type { Config } from './config.js';
import type { NameIndex } from './db/index.js';
import type { Outbox } from './db/events.js';
import type { DB } from './db/open.js';
import { openOriginIndex, type OriginIndex } from './db/origin-index.js';
import { PgFlightLock } from './db/postgres/flights.js';
import { buildApp } from './http/app.js';
import { createMissHandler } from './http/miss-handler.js';
import { meterIndex, meterIngest, Metrics, startMetricsListener } from './http/metrics.js';
import type { ClusterLink } from './ops/cluster.js';
import { closeGracefully, trackConnections } from './ops/shutdown.js';
import { Readiness } from './ops/readiness.js';
import { assertDataDirWritable, publicListeners } from './ops/startup.js';
import { Ingest } from './ingest/ingest.js';
import { createLogger } from './logger.js';
import { createSpider, type Spider } from './ingest/spider.js';
import type { BlobStore } from './store/blob-store.js';
import { LocalBlobStorage } from './store/local-storage.js';
import { openStorage } from './store/open-storage.js';
import { ReadCache } from './store/read-cache.js';
import { localSource, RemoteReader, type BlobSource } from './store/remote-reader.js';
import type { BlobStorage } from './store/storage.js';
import { Scrubber, scrubCounters } from './maintenance/scrub.js';
import { StorageGuard, storageState } from './maintenance/watermark.js';
import { EventDispatcher } from './events/dispatcher.js';
import { createEventAgent } from './events/http.js';
import { meterEvents } from './events/metrics.js';
import { eventsReadinessDetail } from './events/status.js';
import { buildTargets } from './events/targets.js';
import { createServeVerifier, serveVerifyCounters } from './maintenance/verify-on-serve.js';

export interface Server {
  app: FastifyInstance;
  /** The index, whichever engine holds it. */
  originIndex: OriginIndex;
  /** The SQLite handle of the embedded index (tests and SQLite-only tools); undefined when the index is in PostgreSQL. */
  db: DB | undefined;
  /** Where blobs live (FASTPULL_STORAGE): local disk or an S3 bucket. */
  blobStorage: BlobStorage;
  /** The local driver's store (fast read path, reserve, maintenance); undefined with s3 storage. */
  store: BlobStore | undefined;
  /** FASTPULL_CACHE_DIR in front of s3 storage. */
  readCache: ReadCache | undefined;
  /** Blobs and names (originIndex.names). */
  index: NameIndex;
  ingest: Ingest;
  logger: Logger;
  metrics: Metrics;
  readiness: Readiness;
  tokens: TokenStore;
  /** Where /metrics is served when FASTPULL_METRICS_PORT is set. */
  metricsUrl: string | undefined;
  /** Fetch jobs, pull-through and their counters. */
  spider: Spider;
  /** Bytes stored and the high-watermark state (for metrics: storage.bytesStored(), storageState). */
  storage: StorageGuard;
  /** Outbox delivery to the CDN and webhooks. */
  events: EventDispatcher;
  /** The address actually bound (port 0 resolves here). */
  url: string;
  close(): Promise<void>;
}

/** Wiring: config → db → store → ingest → app → listen. */
export async function startServer(config: Config, options: { logger?: Logger; cluster?: ClusterLink } = {}): Promise<Server> {
  const logger = options.logger ?? createLogger(config.logLevel);
  await assertDataDirWritable(config.dataDir);
  const { blobStorage, store, readCache, source } = await openBlobs(config, logger);

  const originIndex = await openOriginIndex(config);
  const index = originIndex.names;
  const ingest = new Ingest(blobStorage, index, logger);
  const metrics = new Metrics({
    counters: originIndex.counters,
    dataDir: config.dataDir,
    highWatermarkBytes: config.highWatermarkBytes,
    minFreeBytes: config.minFreeBytes,
  });
  meterIndex(index, metrics);
  meterIngest(ingest, metrics);
  const readiness = new Readiness(config, originIndex.status, logger);
  const tokens = new TokenStore(originIndex.tokens);
  const auth = new DbAuthenticator(new BootstrapAuthenticator(config.adminToken), tokens);
  if (!(await auth.enabled())) {
    logger.warn('no FASTPULL_ADMIN_TOKEN and no API tokens: the write API is disabled until one exists (downloads still work)');
  }
  if (config.readOnly) logger.warn('read-only mode: every write to the admin API is refused');

  const events = startEvents(config, originIndex.events, metrics, readiness, logger);
  const storage = new StorageGuard(originIndex.holds, config.highWatermarkBytes, logger);
  const link = options.cluster;
  // Background work runs in one process: alone, or the cluster's leader.
  const runsBackgroundWork = link === undefined || link.role === 'leader';
  // Replicas sharing PostgreSQL share its flight rows (which also covers this machine's workers).
  const pgFlights = originIndex.postgres ? new PgFlightLock(originIndex.postgres) : undefined;
  const flightLock = pgFlights ?? link?.flightLock;
  const spider = createSpider(config, {
    jobs: originIndex.jobs,
    ingest,
    logger,
    ...(flightLock ? { flightLock } : {}),
    ...(link && !runsBackgroundWork ? { onJobQueued: link.jobsQueued } : {}),
  });
  if (link) {
    metrics.aggregateWith(link.metricsText);
    link.serveMetrics(() => metrics.collect());
    metrics.aggregateTrafficWith(link.trafficLastHour);
    link.serveTraffic(() => metrics.traffic.lastHour());
    if (runsBackgroundWork) link.onJobsQueued(() => spider.fetchJobs.wake());
  }
  bridgeSpiderMetrics(spider, metrics);
  // Pull-through answers HTTP requests, so the HTTP side wraps it: ingest/ never imports http/.
  const missHandler = spider.pullThrough && createMissHandler(spider.pullThrough, { config, index, source });
  bridgeMaintenanceMetrics(metrics, config.scrubBytesPerSecond > 0);
  const watch = config.verifyOnServe ? createServeVerifier({ storage: blobStorage, maintenance: originIndex.maintenance, logger }) : undefined;
  // A fill of the read cache reads whole blobs too: damage it finds is judged like a damaged download.
  if (readCache && watch) readCache.onDamaged = (blob, actual) => watch.damaged(blob, logger, actual);
  const app = await buildApp({
    config,
    logger,
    source,
    index,
    ingest,
    auth,
    metrics,
    readiness,
    audit: originIndex.audit,
    status: originIndex.status,
    spider,
    storage,
    events: events.dispatcher,
    ...(missHandler ? { missHandler } : {}),
    ...(watch ? { watch } : {}),
  });
  const sockets = trackConnections(app.server);
  let address: string;
  let metricsListener: Awaited<ReturnType<typeof startMetricsListener>> | undefined;
  try {
    // Fastify logs "Server listening at" once per interface; the line below says it once, with more.
    const log = app.log;
    app.log = log.child({}, { level: 'warn' });
    try {
      // A deep accept queue (the kernel caps it at net.core.somaxconn): under a crowd of keep-alive clients a
      // new connection waits in the queue for the next accept instead of being dropped and retried seconds later.
      address = await app.listen({ host: config.host, port: config.port, backlog: 4096 });
    } finally {
      app.log = log;
    }
    if (config.metricsPort !== undefined) metricsListener = await startMetricsListener(metrics, config.host, config.metricsPort);
  } catch (err) {
    await app.close().catch(() => undefined);
    await spider.close();
    await pgFlights?.close();
    await events.close();
    await originIndex.close();
    throw err;
  }
  if (runsBackgroundWork) {
    spider.start();
    events.dispatcher.start();
  }
  // Said once per origin: by the single process, or the cluster's leader.
  const exposed = publicListeners(config, Number(new URL(address).port), metricsListener ? Number(new URL(metricsListener.url).port) : undefined);
  if (exposed.length > 0 && runsBackgroundWork) {
    logger.warn(
      { public: exposed, host: config.host },
      `public listeners: ${exposed.map((l) => `${l.address} serves ${l.serves}`).join('; ')}. ` +
        'To keep the API and metrics local: FASTPULL_HOST=127.0.0.1 behind a proxy or CDN that forwards only downloads, ' +
        'and FASTPULL_METRICS_PORT for /metrics on a port of its own',
    );
  }
  if (link) logger.info({ role: link.role, address }, 'serving process ready');
  else {
    logger.info(
      { address, metrics: metricsListener?.url, dataDir: config.dataDir, configFile: config.configFile },
      'fastpull origin listening',
    );
  }
  const scrubber =
    runsBackgroundWork && config.scrubBytesPerSecond > 0
      ? new Scrubber({
          storage: blobStorage,
          maintenance: originIndex.maintenance,
          audit: originIndex.audit,
          locks: originIndex.locks,
          bytesPerSecond: config.scrubBytesPerSecond,
          pauseMs: config.scrubPauseSeconds * 1000,
          log: logger,
        })
      : undefined;
  scrubber?.start();

  let closing: Promise<void> | undefined;
  const close = () =>
    (closing ??= (async () => {
      readiness.shuttingDown = true;
      // Stop the scrub first: it must not touch the database after close.
      await scrubber?.stop();
      await spider.stopJobs();
      const { forced } = await closeGracefully(app, sockets, config.shutdownGraceMs);
      if (forced > 0) logger.warn({ forced, graceMs: config.shutdownGraceMs }, 'closed connections still busy after the grace period');
      await spider.close();
      await pgFlights?.close();
      await events.close();
      if (metricsListener) {
        const server = metricsListener.server;
        server.closeAllConnections();
        await new Promise<void>((resolve) => server.close(() => resolve()));
      }
      await originIndex.close();
      readCache?.close();
      blobStorage.close?.();
      logger.info('fastpull origin stopped');
    })());
  return {
    app,
    originIndex,
    db: originIndex.sqlite,
    blobStorage,
    store,
    readCache,
    index,
    ingest,
    logger,
    metrics,
    readiness,
    tokens,
    spider,
    storage,
    events: events.dispatcher,
    metricsUrl: metricsListener?.url,
    url: address,
    close,
  };
}

/**
 * The blob storage FASTPULL_STORAGE names, swept of what crashed writers left (temp files, multipart
 * uploads), and where downloads read: the local store's files, or the bucket behind the read cache.
 */
async function openBlobs(
  config: Config,
  logger: Logger,
): Promise<{ blobStorage: BlobStorage; store: BlobStore | undefined; readCache: ReadCache | undefined; source: BlobSource }> {
  if (config.storage.kind === 's3' && config.accelRedirect !== undefined) {
    throw new Error(
      'FASTPULL_ACCEL_REDIRECT: nginx can only send blobs from local disk, and FASTPULL_STORAGE is s3; unset one of them ' +
        '(with s3, FASTPULL_CACHE_DIR keeps hot blobs on local disk)',
    );
  }
  const blobStorage = openStorage(config, { reserveBytes: config.reserveBytes });
  const removed = await blobStorage.init();
  if (removed > 0) logger.warn({ removed, storage: blobStorage.location }, 'removed unfinished writes left by an earlier crash');
  if (blobStorage instanceof LocalBlobStorage) {
    const store = blobStorage.store;
    if (config.cacheDir !== undefined) logger.warn({ cacheDir: config.cacheDir }, 'FASTPULL_CACHE_DIR is only used with s3 storage: ignored');
    if (!(await store.reserve.ensure())) {
      logger.warn({ reserveBytes: await store.reserve.bytes() }, 'the disk is full: no room for the reserve, uploads answer 507 until gc frees space');
    }
    return { blobStorage, store, readCache: undefined, source: localSource(store) };
  }
  let readCache: ReadCache | undefined;
  if (config.cacheDir !== undefined && config.cacheMaxBytes > 0) {
    readCache = new ReadCache({ dir: config.cacheDir, maxBytes: config.cacheMaxBytes, storage: blobStorage, log: logger });
    await readCache.init();
  }
  logger.info({ storage: blobStorage.location, cacheDir: readCache?.blobsDir, cacheMaxBytes: readCache?.maxBytes }, 'blobs in a bucket');
  return { blobStorage, store: undefined, readCache, source: new RemoteReader(blobStorage, readCache).source() };
}

/** The outbox dispatcher (started after listen), its metrics and its /readyz detail. */
function startEvents(config: Config, outbox: Outbox, metrics: Metrics, readiness: Readiness, logger: Logger) {
  const agent = createEventAgent(config.eventTimeoutMs, config.fetchAllowCidrs);
  const targets = buildTargets(config, agent);
  if (config.webhooks.length > 0 && config.webhookSecret === undefined) {
    logger.warn('FASTPULL_WEBHOOKS without FASTPULL_WEBHOOK_SECRET: webhook POSTs are not signed');
  }
  const dispatcher = new EventDispatcher({
    outbox,
    targets,
    log: logger,
    pollMs: config.eventPollMs,
    timeoutMs: config.eventTimeoutMs,
    retryBaseMs: config.eventRetryBaseMs,
    retryMaxMs: config.eventRetryMaxMs,
    maxAttempts: config.eventMaxAttempts,
    retentionDays: config.eventRetentionDays,
  });
  dispatcher.observe = meterEvents(metrics.registry, dispatcher);
  readiness.inform('events', async () => eventsReadinessDetail(await dispatcher.status()));
  if (targets.length > 0) logger.info({ targets: targets.map((t) => t.id) }, 'event delivery targets');
  return {
    dispatcher,
    async close() {
      // Before the database closes: a loop must not claim or record after it.
      await dispatcher.stop();
      await agent.destroy().catch(() => undefined);
    },
  };
}

/** Pull-through and fetch-job counters live in the spider; Prometheus sees them through this bridge. */
function bridgeSpiderMetrics(spider: Spider, metrics: Metrics): void {
  const routes: Partial<Record<string, () => void>> = {
    pullHits: () => metrics.pullThrough.inc({ result: 'hit' }),
    pullMisses: () => metrics.pullThrough.inc({ result: 'miss' }),
    pullFailures: () => metrics.pullThrough.inc({ result: 'failure' }),
    fetchItemsDone: () => metrics.fetchItems.inc({ result: 'done' }),
    fetchItemsFailed: () => metrics.fetchItems.inc({ result: 'failed' }),
  };
  spider.stats.on('count', (name: string, delta: number) => {
    const count = routes[name];
    if (count) for (let i = 0; i < delta; i++) count();
  });
  spider.stats.on('fetch', (seconds: number, result: string) => metrics.upstreamFetchDuration.labels(result).observe(seconds));
  const pullThrough = spider.pullThrough;
  if (pullThrough) metrics.watchMirrors(() => pullThrough.mirrorStates());
}

/**
 * Verification totals come from the index (any process adds to them); the storage guard keeps a
 * plain counter (it also runs inside CLI commands, where no Prometheus registry exists), and each
 * scrape adds what changed since the last one.
 */
function bridgeMaintenanceMetrics(metrics: Metrics, scrubEnabled: boolean): void {
  let refused = storageState.uploadsRefused;
  let servedVerified = serveVerifyCounters.bytesVerified;
  metrics.onScrape(() => {
    const now = storageState.uploadsRefused;
    if (now > refused) metrics.storageRefusals.inc({ reason: 'watermark' }, now - refused);
    refused = now;
    const verified = serveVerifyCounters.bytesVerified;
    if (verified > servedVerified) metrics.servedBytesVerified.inc(verified - servedVerified);
    servedVerified = verified;
  });
  metrics.watchScrub(() => ({
    enabled: scrubEnabled,
    running: scrubCounters.running,
    resting: scrubCounters.resting,
    lastProgressAt: scrubCounters.lastProgressAt,
  }));
}
