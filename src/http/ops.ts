import type { Server } from 'node:http';
import type { FastifyHttpOptions, FastifyInstance } from 'fastify';
import type { Config } from '../config.js';
import { AppError } from '../errors.js';
import type { Readiness } from '../ops/readiness.js';
import { checkInterval, enforceIdleTimeout } from '../ops/timeouts.js';
import type { AuditArea } from '../db/audit.js';
import { installAudit } from './audit.js';
import { installHttpMetrics, metricsRoute, type Metrics } from './metrics.js';

export interface OpsDeps {
  config: Config;
  metrics?: Metrics | undefined;
  readiness?: Readiness | undefined;
  /** Where authenticated writes are recorded. */
  audit?: AuditArea | undefined;
}

/**
 * Timeouts against slow or idle clients that never cut a legitimate transfer short:
 * - headersTimeout bounds how long a client may take to send its request headers (slowloris);
 * - the socket idle timeout (connectionTimeout) drops a connection on which nothing moved
 *   for that long, whether it is uploading, downloading or idle between requests (enforceIdleTimeout
 *   makes it hold for a client that stopped reading, too);
 * - keepAliveTimeout closes idle keep-alive connections; it is longer than a CDN's usual
 *   upstream keep-alive so the CDN, not the origin, closes first (no reuse race);
 * - requestTimeout stays 0 (off): it bounds the whole request including the body, so any value
 *   would kill a 4 GiB upload over a slow but steady link. The idle timeout covers the stalled case.
 * maxHeaderSize refuses oversized header blocks with 431 before any routing.
 */
export function serverTimeoutOptions(config: Config): FastifyHttpOptions<Server> {
  return {
    connectionTimeout: config.idleTimeoutMs,
    keepAliveTimeout: config.keepAliveTimeoutMs,
    requestTimeout: 0,
    http: {
      maxHeaderSize: config.maxHeaderBytes,
      headersTimeout: config.headersTimeoutMs,
      // Node checks headersTimeout only on this interval (30 s by default): a slowloris client is cut
      // somewhere between the limit and limit + interval, so the interval must be small for the limit to hold.
      connectionsCheckingInterval: checkInterval(config.headersTimeoutMs),
    },
  };
}

const SAFE_METHODS = new Set(['GET', 'HEAD', 'OPTIONS']);

/** Health, metrics and read-only mode; called by buildApp before any route is registered. */
export function installOps(app: FastifyInstance, deps: OpsDeps): void {
  const { config, metrics, readiness, audit } = deps;
  if (audit) installAudit(app, audit);
  enforceIdleTimeout(app.server, config.idleTimeoutMs);

  if (config.readOnly) {
    // A root onRequest hook runs before authentication and before any body byte is read.
    // Installed only in read-only mode, so normal downloads pay nothing for it.
    app.addHook('onRequest', async (request) => {
      if (!SAFE_METHODS.has(request.method)) {
        throw new AppError(
          'READ_ONLY',
          'this origin is in read-only mode: uploads, links, deletions and jobs are refused; downloads keep working',
        );
      }
    });
  }

  if (metrics) {
    installHttpMetrics(app, metrics);
    if (config.metricsPort === undefined) metricsRoute(app, metrics);
  }

  app.get('/healthz', async (request, reply) => {
    request.routeKind = 'other';
    return reply.header('cache-control', 'no-store').send({ status: 'ok' });
  });

  if (readiness) {
    app.get('/readyz', async (request, reply) => {
      request.routeKind = 'other';
      const report = await readiness.check();
      // The one deliberate 503: load balancers read it as "send traffic elsewhere"; downloads are unaffected.
      return reply
        .code(report.ready ? 200 : 503)
        .header('cache-control', 'no-store')
        .send({ status: report.ready ? 'ready' : 'not ready', failing: report.failing, checks: report.checks });
    });
  }
}
