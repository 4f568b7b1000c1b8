import type { FastifyInstance } from 'fastify';
import type { Logger } from 'pino';
import { BootstrapAuthenticator } from './auth/tokens.js';
import type { Config } from './config.js';
import { DistfileIndex } from './db/index.js';
import { databaseFile, openDatabase, type DB } from './db/open.js';
import { buildApp } from './http/app.js';
import { Ingest } from './ingest/ingest.js';
import { createLogger } from './logger.js';
import { BlobStore } from './store/blob-store.js';
import { Scrubber } from './maintenance/scrub.js';
import { StorageGuard } from './maintenance/watermark.js';

export interface Server {
  app: FastifyInstance;
  db: DB;
  store: BlobStore;
  index: DistfileIndex;
  ingest: Ingest;
  logger: Logger;
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
  const auth = new BootstrapAuthenticator(config.adminToken);
  if (!auth.enabled()) logger.warn('FASTPULL_ADMIN_TOKEN is not set: the write API is disabled (downloads still work)');

  const storage = new StorageGuard(db, config.highWatermarkBytes);
  const app = await buildApp({ config, logger, store, index, ingest, auth, storage });
  let address: string;
  try {
    address = await app.listen({ host: config.host, port: config.port });
  } catch (err) {
    db.close();
    throw err;
  }
  logger.info({ address, dataDir: config.dataDir, configFile: config.configFile }, 'fastpull origin listening');
  const scrubber =
    config.scrubBytesPerSecond > 0
      ? new Scrubber({ store, db, bytesPerSecond: config.scrubBytesPerSecond, pauseMs: config.scrubPauseSeconds * 1000, log: logger })
      : undefined;
  scrubber?.start();

  let closing: Promise<void> | undefined;
  const close = () =>
    (closing ??= (async () => {
      // Stop the scrub first: it must not touch the database after close.
      await scrubber?.stop();
      await app.close();
      db.close();
      logger.info('fastpull origin stopped');
    })());
  return { app, db, store, index, ingest, logger, storage, url: address, close };
}
