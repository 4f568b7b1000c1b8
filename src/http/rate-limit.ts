import rateLimit from '@fastify/rate-limit';
import type { FastifyInstance } from 'fastify';
import type { Config } from '../config.js';
import { AppError } from '../errors.js';

/**
 * Per-client-IP limit on the admin API only (downloads are never limited here; that is the
 * CDN's job). Installed as a context onRequest hook, so it runs before authentication:
 * guessing tokens is limited too. Call it inside the /api/v1 plugin before its routes.
 */
export async function installAdminRateLimit(app: FastifyInstance, config: Config): Promise<void> {
  const max = config.adminRateLimitPerMinute;
  if (max <= 0) return;
  await app.register(rateLimit, {
    global: false,
    max,
    timeWindow: 60_000,
    onExceeded: (request) => request.log.warn({ remote: request.ip, limit: max }, 'admin API rate limit exceeded'),
    errorResponseBuilder: (_request, context) =>
      new AppError('RATE_LIMITED', `more than ${context.max} admin API requests a minute from this address; retry in ${context.after}`, {
        retryAfterSeconds: Math.ceil(context.ttl / 1000),
      }),
  });
  app.addHook('onRequest', app.rateLimit());
}
