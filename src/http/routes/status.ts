import { readFileSync } from 'node:fs';
import type { FastifyInstance } from 'fastify';
import type { DB } from '../../db/open.js';
import { StatusQueries, type AttachedName, type Totals } from '../../db/status-queries.js';
import { downloadPaths } from '../urls.js';
import { urls } from './admin-schemas.js';

export interface StatusRouteDeps {
  db: DB;
  /** Outbox delivery state per target, shown on the status page. */
  events?: (() => unknown) | undefined;
}

/** Both src/http/routes (tsx) and dist/http/routes (built) sit three levels below the package root. */
const PUBLIC_DIR = new URL('../../../public/', import.meta.url);

const PAGE_FILES = {
  '/': { file: 'index.html', type: 'text/html; charset=utf-8' },
  '/ui/status.css': { file: 'status.css', type: 'text/css; charset=utf-8' },
  '/ui/status.js': { file: 'status.js', type: 'text/javascript; charset=utf-8' },
} as const;

/**
 * The page only loads its own script and style and talks to its own origin: if a hostile file name ever
 * slipped past the page's textContent discipline, the browser would still refuse to run injected code.
 */
const PAGE_CSP =
  "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; " +
  "base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

export const MAX_PREFIX_CHARS = 255;
export const MAX_SEARCH_LIMIT = 100;
const MAX_RECENT = 100;
/** Counting every blob is a full scan; the page does not need the number fresher than this. */
const TOTALS_TTL_MS = 5_000;
const API_CACHE_CONTROL = 'public, max-age=10';

const iso = (ms: number) => new Date(ms).toISOString();

const hashEntrySchema = {
  type: 'object',
  properties: {
    sha512: { type: 'string' },
    size: { type: 'integer' },
    attachedAt: { type: 'string', format: 'date-time' },
    current: { type: 'boolean', description: 'the hash that name paths serve' },
    quarantined: { type: 'boolean', description: 'damaged on disk: every path answers 404' },
    urls,
  },
  required: ['sha512', 'size', 'attachedAt', 'current', 'quarantined', 'urls'],
  additionalProperties: true,
} as const;

const errorSchema = {
  type: 'object',
  properties: { error: { type: 'string' }, message: { type: 'string' } },
  required: ['error', 'message'],
  additionalProperties: true,
} as const;

function hashEntry(row: AttachedName) {
  const current = row.current === 1;
  return {
    sha512: row.sha512,
    size: row.size,
    attachedAt: iso(row.attached_at),
    current,
    quarantined: row.quarantined_at !== null,
    // A name path would serve the current hash, not this one: offer only the hash forms for older hashes.
    urls: downloadPaths(row.sha512, current ? row.filename : undefined),
  };
}

function readPageFiles() {
  return Object.entries(PAGE_FILES).map(([url, { file, type }]) => ({
    url,
    type,
    body: readFileSync(new URL(file, PUBLIC_DIR)),
  }));
}

/** The public status page and the read-only JSON behind it: no token, like the downloads themselves. */
export async function statusRoutes(app: FastifyInstance, deps: StatusRouteDeps): Promise<void> {
  const queries = new StatusQueries(deps.db);
  let totals: { value: Totals; at: number } | undefined;
  const cachedTotals = (): Totals => {
    const now = Date.now();
    if (!totals || now - totals.at > TOTALS_TTL_MS) totals = { value: queries.totals(), at: now };
    return totals.value;
  };

  // Read once at start: a missing file is a packaging bug and should stop the server, not 500 later.
  for (const page of readPageFiles()) {
    app.get(page.url, { schema: { hide: true } }, async (request, reply) => {
      request.routeKind = 'other';
      return reply
        .headers({
          'content-type': page.type,
          'cache-control': 'public, max-age=60',
          'content-security-policy': PAGE_CSP,
          'x-content-type-options': 'nosniff',
          'referrer-policy': 'no-referrer',
        })
        .send(page.body);
    });
  }

  app.get<{ Querystring: { recent: number } }>(
    '/api/v1/status',
    {
      schema: {
        summary: 'Totals and the most recently attached names (public, no token)',
        tags: ['status'],
        security: [],
        querystring: {
          type: 'object',
          properties: { recent: { type: 'integer', minimum: 0, maximum: MAX_RECENT, default: 20 } },
          additionalProperties: false,
        },
        response: {
          200: {
            type: 'object',
            properties: {
              totals: {
                type: 'object',
                properties: { blobs: { type: 'integer' }, bytes: { type: 'integer' }, names: { type: 'integer' } },
                required: ['blobs', 'bytes', 'names'],
                additionalProperties: true,
              },
              recent: {
                type: 'array',
                items: { ...hashEntrySchema, properties: { filename: { type: 'string' }, ...hashEntrySchema.properties } },
              },
              generatedAt: { type: 'string', format: 'date-time' },
              events: {
                type: 'object',
                description: 'event delivery (CDN purges, webhooks): pending, oldest pending, last success and error per target',
                additionalProperties: true,
              },
            },
            required: ['totals', 'recent', 'generatedAt'],
            additionalProperties: true,
          },
          '4xx': errorSchema,
        },
      },
    },
    async (request, reply) => {
      request.routeKind = 'api';
      reply.header('cache-control', API_CACHE_CONTROL);
      return {
        totals: cachedTotals(),
        recent: queries.recent(request.query.recent).map((row) => ({ filename: row.filename, ...hashEntry(row) })),
        generatedAt: new Date().toISOString(),
        ...(deps.events ? { events: deps.events() } : {}),
      };
    },
  );

  app.get<{ Querystring: { prefix: string; limit: number } }>(
    '/api/v1/search',
    {
      schema: {
        summary: 'Attached names starting with a prefix (case-sensitive), each with its hashes and download paths',
        tags: ['status'],
        security: [],
        querystring: {
          type: 'object',
          properties: {
            prefix: { type: 'string', minLength: 1, maxLength: MAX_PREFIX_CHARS },
            limit: { type: 'integer', minimum: 1, maximum: MAX_SEARCH_LIMIT, default: 20 },
          },
          required: ['prefix'],
          additionalProperties: false,
        },
        response: {
          200: {
            type: 'object',
            properties: {
              prefix: { type: 'string' },
              limit: { type: 'integer' },
              truncated: { type: 'boolean', description: 'more names match than limit' },
              results: {
                type: 'array',
                items: {
                  type: 'object',
                  properties: { filename: { type: 'string' }, hashes: { type: 'array', items: hashEntrySchema } },
                  required: ['filename', 'hashes'],
                  additionalProperties: true,
                },
              },
            },
            required: ['prefix', 'limit', 'truncated', 'results'],
            additionalProperties: true,
          },
          '4xx': errorSchema,
        },
      },
    },
    async (request, reply) => {
      request.routeKind = 'api';
      const { prefix, limit } = request.query;
      const { results, truncated } = queries.searchPrefix(prefix, limit);
      reply.header('cache-control', API_CACHE_CONTROL);
      return {
        prefix,
        limit,
        truncated,
        results: results.map(({ filename, hashes }) => ({ filename, hashes: hashes.map(hashEntry) })),
      };
    },
  );
}
