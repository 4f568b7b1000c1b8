import { readFileSync } from 'node:fs';
import swagger from '@fastify/swagger';
import type { FastifyInstance } from 'fastify';

const API_PREFIX = '/api/v1/';
export const OPENAPI_PATH = `${API_PREFIX}openapi.json`;

const { version } = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as {
  version: string;
};

/**
 * Must be registered before any route: @fastify/swagger learns routes from the onRoute hook,
 * so a route added earlier would silently be missing from the document.
 */
export async function registerOpenApi(app: FastifyInstance): Promise<void> {
  await app.register(swagger, {
    // The document covers the API only. Downloads, the page, /healthz and /metrics are not part of it, whoever
    // registers them and whether or not they remember `hide: true`.
    transform: ({ schema, url }) => ({
      schema: url.startsWith(API_PREFIX) ? schema : { ...schema, hide: true },
      url,
    }),
    openapi: {
      openapi: '3.0.3',
      info: {
        title: 'fastpull origin API',
        version,
        description:
          'Admin and status API of a content-addressed distfile origin. Downloads (/distfiles/…, /ab/cd/ef/<sha512>, ' +
          '/<sha512>) are plain GETs outside this document.',
      },
      components: {
        securitySchemes: {
          bearer: {
            type: 'http',
            scheme: 'bearer',
            description: 'FASTPULL_ADMIN_TOKEN or a scoped token (read-api, upload, admin)',
          },
        },
      },
      security: [{ bearer: [] }],
      tags: [
        { name: 'distfiles', description: 'names, blobs and uploads' },
        { name: 'status', description: 'public, read-only' },
        { name: 'events', description: 'the outbox: every change, pollable' },
      ],
    },
  });

  app.get(
    OPENAPI_PATH,
    { schema: { summary: 'This OpenAPI document', tags: ['status'], security: [] } },
    async (request, reply) => {
      request.routeKind = 'api';
      return reply.header('cache-control', 'public, max-age=300').send(app.swagger());
    },
  );
}
