import { readFileSync } from 'node:fs';
import swagger from '@fastify/swagger';
import type { FastifyInstance, FastifySchema } from 'fastify';
import { SHARED_SCHEMAS } from './schemas.js';

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
  for (const schema of SHARED_SCHEMAS) app.addSchema(schema);
  await app.register(swagger, {
    // components.schemas are named by $id, so `{ $ref: 'Error#' }` reads #/components/schemas/Error.
    refResolver: { buildLocalReference: (json, _baseUri, _fragment, i) => (typeof json.$id === 'string' ? json.$id : `def-${i}`) },
    transform: ({ schema, url, route }) => ({ schema: documented(schema, url, route.method), url }),
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
        { name: 'fetches', description: 'downloads the origin makes itself, and its upstream mirrors' },
        { name: 'status', description: 'public, read-only' },
        { name: 'events', description: 'the outbox: every change, pollable' },
      ],
    },
  });

  app.get(
    OPENAPI_PATH,
    {
      schema: {
        operationId: 'getOpenApi',
        summary: 'This OpenAPI document',
        tags: ['status'],
        security: [],
        response: { 200: { type: 'object', description: 'OpenAPI 3.0 document', additionalProperties: true } },
      },
    },
    async (request, reply) => {
      request.routeKind = 'api';
      return reply.header('cache-control', 'public, max-age=300').send(app.swagger());
    },
  );
}

type DocSchema = FastifySchema & {
  hide?: boolean;
  operationId?: string;
  consumes?: string[];
  /** A streamed body fastify must not validate: documented as application/octet-stream. */
  rawBody?: { description: string };
  /** A JSON body the handler checks itself (for precise error codes): documented, not validated. */
  docBody?: Record<string, unknown>;
};

/**
 * What the document says about one route, derived from its definition. The document covers the API only:
 * downloads, the page, /healthz and /metrics are hidden whoever registers them. A route without an
 * operationId gets one from its method and path (GET /api/v1/fetches/:id → getFetchesById), so routes
 * added later are complete without extra work.
 */
function documented(schema: FastifySchema | undefined, url: string, method: string | string[]): DocSchema {
  const s: DocSchema = { ...(schema as DocSchema | undefined) };
  if (!url.startsWith(API_PREFIX)) return { ...s, hide: true };
  if (s.rawBody) {
    s.body = { type: 'string', format: 'binary', description: s.rawBody.description };
    s.consumes = ['application/octet-stream'];
    delete s.rawBody;
  }
  if (s.docBody) {
    s.body = s.docBody;
    delete s.docBody;
  }
  s.operationId ??= operationIdOf(Array.isArray(method) ? method[0]! : method, url);
  return s;
}

export function operationIdOf(method: string, url: string): string {
  const words = url
    .slice(API_PREFIX.length)
    .split('/')
    .filter(Boolean)
    .map((part) => (part.startsWith(':') ? `by-${part.slice(1)}` : part));
  const camel = words.join('-').replace(/[^A-Za-z0-9]+(.)/g, (_, c: string) => c.toUpperCase());
  return method.toLowerCase() + camel.charAt(0).toUpperCase() + camel.slice(1);
}
