import http from 'node:http';
import Fastify, { LogController, type FastifyBaseLogger, type FastifyServerOptions, type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import type { Logger } from 'pino';
import type { Authenticator } from '../auth/tokens.js';
import type { Config } from '../config.js';
import type { NameIndex } from '../db/index.js';
import type { Ingest } from '../ingest/ingest.js';
import type { BlobSource } from '../store/remote-reader.js';
import { AppError } from '../errors.js';
import { sendError } from './errors.js';
import { strictQueryOnWrites } from './strict-query.js';
import { trustFunction } from './client-address.js';
import { responseBytes, type Metrics } from './metrics.js';
import { installOps, serverTimeoutOptions } from './ops.js';
import { requestLogFields } from './request-log.js';
import { Readiness } from '../ops/readiness.js';
import type { AuditArea } from '../db/audit.js';
import type { StatusArea } from '../db/status-queries.js';
import { registerOpenApi } from './openapi.js';
import { fetchRoutes } from './routes/fetches.js';
import type { Spider } from '../ingest/spider.js';
import { adminRoutes, type AdminRouteDeps } from './routes/admin.js';
import { readRoutes, type MissHandler } from './routes/read.js';
import { statusRoutes } from './routes/status.js';
import { eventRoutes } from './routes/events.js';
import type { EventDispatcher } from '../events/dispatcher.js';
import { eventsStatusView } from '../events/status.js';
import { createHotPath, requestIdOf, type BodyWatch } from './hot-path.js';

export interface AppDeps {
  config: Config;
  logger: Logger;
  /** Where downloads read blobs: local files, or the remote storage behind the read cache. */
  source: BlobSource;
  index: NameIndex;
  ingest: Ingest;
  auth: Authenticator;
  missHandler?: MissHandler;
  metrics?: Metrics;
  readiness?: Readiness;
  /** Where authenticated writes are recorded; without it nothing is. */
  audit?: AuditArea;
  /** The status page's queries and readiness's probe. */
  status: StatusArea;
  /** Fetch jobs and pull-through state; without it the /fetches routes are absent. */
  spider?: Spider;
  storage?: AdminRouteDeps['storage'];
  /** Outbox delivery (GET /api/v1/events reads its outbox). */
  events: EventDispatcher;
  /** Watches full bodies the lean download path sends (verification on serve). */
  watch?: BodyWatch;
}

/**
 * Downloads skip fastify: the node:http server hands GET/HEAD of download paths to the lean path
 * (hot-path.ts), which passes anything it does not answer itself on to fastify. The server is set up
 * exactly as fastify would set up its own (same options, timeouts and keep-alive).
 */
function leanServer(deps: AppDeps): Pick<FastifyServerOptions, 'serverFactory'> {
  let server: http.Server | undefined;
  const hot = createHotPath({
    config: deps.config,
    index: deps.index,
    source: deps.source,
    logger: deps.logger,
    metrics: deps.metrics,
    watch: deps.watch,
    closing: () => server !== undefined && !server.listening,
  });
  if (!hot) return {};
  return {
    serverFactory: (handler, options) => {
      const opts = options as FastifyServerOptions & { http?: http.ServerOptions };
      server = http.createServer(opts.http ?? {}, (req, res) => hot(req, res, handler));
      if (opts.keepAliveTimeout !== undefined) server.keepAliveTimeout = opts.keepAliveTimeout;
      if (opts.requestTimeout !== undefined) server.requestTimeout = opts.requestTimeout;
      if (opts.connectionTimeout !== undefined) server.setTimeout(opts.connectionTimeout);
      if (opts.maxRequestsPerSocket) server.maxRequestsPerSocket = opts.maxRequestsPerSocket;
      return server;
    },
  };
}

/** Builds the HTTP app without listening; tests inject() or listen on port 0. */
export async function buildApp(deps: AppDeps): Promise<FastifyInstance> {
  const { config } = deps;
  const app = Fastify({
    loggerInstance: deps.logger as FastifyBaseLogger,
    // Fastify's own incoming/completed lines are replaced by our single line per request (onResponse).
    logController: new LogController({ disableRequestLogging: true }),
    // Distfile names reach 255 bytes, three times that when percent-encoded; hashes are 128 hex.
    routerOptions: { maxParamLength: 1024 },
    trustProxy: trustFunction(config.trustProxy),
    // Keep answering while closing: a 503 makes wget give up and Portage fail over.
    return503OnClosing: false,
    ...serverTimeoutOptions(config),
    // Undecodable paths (e.g. overlong UTF-8 like %c0%ae) and over-long segments are rejected by the
    // router before any route (or hook) runs; without this they would get Fastify's own body, not our
    // error shape, and leave no log line.
    frameworkErrors: (err, request, reply) => {
      reply.header('x-request-id', request.id);
      reply.raw.once('close', () => logRequest(request, reply));
      return sendError(
        request,
        reply,
        new AppError('BAD_REQUEST', err.code === 'FST_ERR_MAX_PARAM_LENGTH' ? 'path segment too long' : 'path is not valid percent-encoded UTF-8'),
      );
    },
    genReqId: requestIdOf,
    ...leanServer(deps),
  });

  // Before any route: every write route gets its query checked (see strict-query.ts).
  app.addHook('onRoute', strictQueryOnWrites);
  // First: the OpenAPI document only sees routes registered after it.
  await registerOpenApi(app);

  // One log line per request, written when it is done; headers (and so tokens) are never logged.
  // 'close' rather than onResponse: it also fires when the client hangs up mid-transfer, which
  // onResponse does not report.
  app.addHook('onRequest', async (request, reply) => {
    reply.header('x-request-id', request.id);
    reply.raw.once('close', () => logRequest(request, reply, deps.metrics));
  });

  // Only download misses may be cached (by a CDN, briefly); admin API answers depend on the token.
  const notFoundOptions = (request: FastifyRequest) =>
    request.routeKind === 'api' || request.url.startsWith('/api/') ? {} : { notFoundMaxAge: config.notFoundMaxAge };
  app.setErrorHandler((err, request, reply) => sendError(request, reply, err, notFoundOptions(request)));
  app.setNotFoundHandler((request, reply) =>
    sendError(request, reply, new AppError('NOT_FOUND', 'no such resource'), notFoundOptions(request)),
  );

  const status = deps.status;
  const readiness = deps.readiness ?? new Readiness(config, status, deps.logger);
  installOps(app, { config, metrics: deps.metrics, readiness, audit: deps.audit });

  const pullThrough = deps.spider?.pullThrough;
  const metrics = deps.metrics;
  await app.register(statusRoutes, {
    queries: status,
    config,
    readiness,
    ...(metrics ? { traffic: () => metrics.lastHour() } : {}),
    ...(pullThrough ? { mirrors: () => pullThrough.mirrorStates() } : {}),
    events: deps.events ? async () => eventsStatusView(await deps.events!.status()) : undefined,
  });
  await app.register(eventRoutes, { prefix: '/api/v1', auth: deps.auth, outbox: deps.events.outbox });
  await app.register(readRoutes, {
    config,
    index: deps.index,
    source: deps.source,
    missHandler: deps.missHandler,
    watch: deps.watch,
  });
  await app.register(adminRoutes, {
    prefix: '/api/v1',
    config,
    index: deps.index,
    ingest: deps.ingest,
    auth: deps.auth,
    storage: deps.storage,
  });
  if (deps.spider) {
    await app.register(fetchRoutes, {
      prefix: '/api/v1',
      auth: deps.auth,
      fetchJobs: deps.spider.fetchJobs,
      pullThrough: deps.spider.pullThrough,
      stats: deps.spider.stats,
      storage: deps.storage,
    });
  }
  return app;
}

function logRequest(request: FastifyRequest, reply: FastifyReply, metrics?: Metrics): void {
  const fields = requestLogFields(request.raw, reply.raw, request.routeKind, reply.elapsedTime, {
    remote: request.ip,
    bytes: responseBytes(request),
    tokenName: request.principal?.name,
  });
  // Uploads the idle timeout cut never reach onResponse, where uploads are otherwise counted.
  if (fields.aborted === 'idle-timeout' && request.routeKind === 'api' && request.method === 'PUT') {
    metrics?.uploads.labels(String(fields.status), 'REQUEST_TIMEOUT').inc();
  }
  request.log.info(fields, 'request');
}
