import type { FastifyInstance } from 'fastify';
import type { Logger } from 'pino';
import { BootstrapAuthenticator } from './auth/tokens.js';
import { DbAuthenticator, TokenStore } from './auth/token-store.js';
import type { Config } from './config.js';
import { DistfileIndex } from './db/index.js';
import { databaseFile, openDatabase, type DB } from './db/open.js';
import { buildApp } from './http/app.js';
import { meterIndex, meterIngest, Metrics, startMetricsListener } from './http/metrics.js';
import { closeGracefully, trackConnections } from './ops/shutdown.js';
import { Readiness } from './ops/readiness.js';
import { Ingest } from './ingest/ingest.js';
import { createLogger } from './logger.js';
import { createSpider, type Spider } from './ingest/spider.js';
import { BlobStore } from './store/blob-store.js';
import { Scrubber, scrubCounters } from './maintenance/scrub.js';
import { StorageGuard, storageState } from './maintenance/watermark.js';
import { createServeVerifier } from './maintenance/verify-on-serve.js';

export interface Server {
  app: FastifyInstance;
  db: DB;
  store: BlobStore;
  index: DistfileIndex;
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
  /** The address actually bound (port 0 resolves here). */
  url: string;
  close(): Promise<void>;
}

/** Wiring: config → db → store → ingest → app → listen. */
export async function startServer(config: Config, options: { logger?: Logger } = {}): Promise<Server> {
  const logger = options.logger ?? createLogger(config.logLevel);
  const store = new BlobStore(config.dataDir);
  const removedTemps = await store.init();
  if (removedTemps > 0) logger.warn({ removedTemps }, 'removed temp files left by an earlier crash');

  const db = openDatabase(databaseFile(config.dataDir));
  const index = new DistfileIndex(db);
  const ingest = new Ingest(store, index, logger);
  const metrics = new Metrics({ db, dataDir: config.dataDir });
  meterIndex(index, metrics);
  meterIngest(ingest, metrics);
  const readiness = new Readiness(config, db, logger);
  const tokens = new TokenStore(db);
  const auth = new DbAuthenticator(new BootstrapAuthenticator(config.adminToken), tokens);
  if (!auth.enabled()) {
    logger.warn('no FASTPULL_ADMIN_TOKEN and no API tokens: the write API is disabled until one exists (downloads still work)');
  }
  if (config.readOnly) logger.warn('read-only mode: every write to the admin API is refused');

  const storage = new StorageGuard(db, config.highWatermarkBytes);
  const spider = createSpider(config, { db, store, ingest, logger });
  bridgeSpiderMetrics(spider, metrics);
  bridgeMaintenanceMetrics(metrics);
  const app = await buildApp({
    config,
    logger,
    store,
    index,
    ingest,
    auth,
    metrics,
    readiness,
    tokens,
    spider,
    storage,
    ...(spider.missHandler ? { missHandler: spider.missHandler } : {}),
    ...(config.verifyOnServe ? { watch: createServeVerifier({ store, db, logger }) } : {}),
  });
  const sockets = trackConnections(app.server);
  let address: string;
  let metricsListener: Awaited<ReturnType<typeof startMetricsListener>> | undefined;
  try {
    // A deep accept queue (the kernel caps it at net.core.somaxconn): under a crowd of keep-alive clients a
    // new connection waits in the queue for the next accept instead of being dropped and retried seconds later.
    address = await app.listen({ host: config.host, port: config.port, backlog: 4096 });
    if (config.metricsPort !== undefined) metricsListener = await startMetricsListener(metrics, config.host, config.metricsPort);
  } catch (err) {
    await app.close().catch(() => undefined);
    await spider.close();
    db.close();
    throw err;
  }
  spider.start();
  logger.info(
    { address, metrics: metricsListener?.url, dataDir: config.dataDir, configFile: config.configFile },
    'fastpull origin listening',
  );
  const scrubber =
    config.scrubBytesPerSecond > 0
      ? new Scrubber({ store, db, bytesPerSecond: config.scrubBytesPerSecond, pauseMs: config.scrubPauseSeconds * 1000, log: logger })
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
      if (metricsListener) {
        const server = metricsListener.server;
        server.closeAllConnections();
        await new Promise<void>((resolve) => server.close(() => resolve()));
      }
      db.close();
      logger.info('fastpull origin stopped');
    })());
  return {
    app,
    db,
    store,
    index,
    ingest,
    logger,
    metrics,
    readiness,
    tokens,
    spider,
    storage,
    metricsUrl: metricsListener?.url,
    url: address,
    close,
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
}

/**
 * The scrubber and the storage guard keep plain cumulative counters (they also run inside CLI
 * commands, where no Prometheus registry exists); each scrape adds what changed since the last one.
 */
function bridgeMaintenanceMetrics(metrics: Metrics): void {
  let seen = { bytes: scrubCounters.bytesVerified, corrupt: scrubCounters.corruptFound, refused: storageState.uploadsRefused };
  metrics.onScrape(() => {
    const now = { bytes: scrubCounters.bytesVerified, corrupt: scrubCounters.corruptFound, refused: storageState.uploadsRefused };
    if (now.bytes > seen.bytes) metrics.scrubBytes.inc(now.bytes - seen.bytes);
    if (now.corrupt > seen.corrupt) metrics.scrubCorrupt.inc(now.corrupt - seen.corrupt);
    if (now.refused > seen.refused) metrics.storageRefusals.inc({ reason: 'watermark' }, now.refused - seen.refused);
    seen = now;
  });
}
