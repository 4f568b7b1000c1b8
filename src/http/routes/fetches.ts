import type { FastifyInstance, FastifyRequest } from 'fastify';
import type { Authenticator } from '../../auth/tokens.js';
import type { Awaitable } from '../../db/awaitable.js';
import type { FetchJobs } from '../../ingest/fetch-jobs.js';
import type { PullThrough } from '../../ingest/pull-through.js';
import type { UpstreamStats } from '../../upstream/stats.js';
import { requireScope } from '../auth.js';
import { FETCH_SCHEMAS } from './admin-schemas.js';

export interface FetchRouteDeps {
  auth: Authenticator;
  fetchJobs: FetchJobs;
  pullThrough: PullThrough | undefined;
  stats: UpstreamStats;
  /** Above the storage high watermark new jobs are refused (507), like uploads. */
  storage?: { assertAccepting(log?: FastifyRequest['log']): Awaitable<void> } | undefined;
}

/** POST /fetches queues downloads by URL; GET /fetches/:id reports per-item progress. */
export async function fetchRoutes(app: FastifyInstance, deps: FetchRouteDeps): Promise<void> {
  const { auth, fetchJobs } = deps;
  const canRead = requireScope(auth, 'read-api');
  const canUpload = requireScope(auth, 'upload');

  app.addHook('onRequest', async (request) => {
    request.routeKind = 'api';
  });

  // Validation lives in parseItems so that each problem maps to its precise code (BAD_URL, BAD_FILENAME, BAD_HASH).
  app.post('/fetches', { onRequest: canUpload, bodyLimit: 4 * 1024 * 1024, schema: FETCH_SCHEMAS.create }, async (request, reply) => {
    await deps.storage?.assertAccepting(request.log);
    const view = await fetchJobs.submit(request.body, request.principal?.name ?? null);
    return reply.code(202).header('location', `${request.url.replace(/\/+$/, '')}/${view.id}`).send(view);
  });

  app.get<{ Params: { id: string } }>('/fetches/:id', { onRequest: canRead, schema: FETCH_SCHEMAS.get }, async (request) => {
    return await fetchJobs.view(request.params.id);
  });

  // For operators: which mirrors are being skipped (breaker open) and the upstream counters.
  app.get('/upstreams', { onRequest: canRead, schema: FETCH_SCHEMAS.upstreams }, async () => ({
    pullThrough: deps.pullThrough !== undefined,
    mirrors: deps.pullThrough?.mirrorStates() ?? [],
    counters: deps.stats.snapshot(),
  }));
}
