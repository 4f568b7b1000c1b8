import { readFileSync } from 'node:fs';
import { statfs } from 'node:fs/promises';
import type { FastifyInstance } from 'fastify';
import type { Config } from '../../config.js';
import type { AttachedName, StatusArea } from '../../db/status-queries.js';
import { AppError } from '../../errors.js';
import type { Readiness, ReadinessReport } from '../../ops/readiness.js';
import type { MirrorState } from '../metrics.js';
import type { TrafficMinute } from '../../ops/traffic.js';
import { downloadPaths } from '../urls.js';
import { urls } from './admin-schemas.js';

export interface StatusRouteDeps {
  queries: StatusArea;
  config?: Pick<Config, 'dataDir' | 'minFreeBytes' | 'highWatermarkBytes' | 'readOnly' | 'pullThrough'>;
  readiness?: Readiness;
  /** The last hour of requests (metrics.lastHour(): the whole cluster's when there is one); absent without metrics. */
  traffic?: () => Promise<TrafficMinute[]>;
  /** Pull-through mirrors and their breakers. */
  mirrors?: () => MirrorState[];
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
/** The readiness probe creates a file: a busy status page must not turn into a stream of them. */
const READINESS_TTL_MS = 2_000;
const API_CACHE_CONTROL = 'public, max-age=10';

/** Both src/http/routes and dist/http/routes sit three levels below package.json. */
const VERSION = (JSON.parse(readFileSync(new URL('../../../package.json', import.meta.url), 'utf8')) as { version: string }).version;

/** The page is public: a mirror URL may carry credentials or private paths, so only its host is shown. */
function mirrorHost(url: string): string {
  try {
    return new URL(url).host;
  } catch {
    return '(unparsable)';
  }
}

const minuteSchema = {
  type: 'object',
  properties: {
    at: { type: 'string', format: 'date-time' },
    requests: { type: 'integer' },
    bytes: { type: 'integer' },
    s2xx: { type: 'integer' },
    s3xx: { type: 'integer' },
    s4xx: { type: 'integer' },
    s5xx: { type: 'integer' },
  },
  required: ['at', 'requests', 'bytes', 's2xx', 's3xx', 's4xx', 's5xx'],
  additionalProperties: false,
} as const;

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
  const queries = deps.queries;
  const { config, readiness, traffic, mirrors } = deps;
  let ready: { at: number; report: Promise<ReadinessReport> } | undefined;
  const readinessReport = () => {
    if (!readiness) return undefined;
    const now = Date.now();
    if (!ready || now - ready.at > READINESS_TTL_MS) ready = { at: now, report: readiness.check() };
    return ready.report;
  };
  const disk = async () => {
    if (!config) return undefined;
    const s = await statfs(config.dataDir).catch(() => undefined);
    return {
      freeBytes: s ? s.bavail * s.bsize : null,
      totalBytes: s ? s.blocks * s.bsize : null,
      minFreeBytes: config.minFreeBytes,
      highWatermarkBytes: config.highWatermarkBytes ?? null,
    };
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
                properties: {
                  blobs: { type: 'integer' },
                  bytes: { type: 'integer' },
                  names: { type: 'integer', description: 'names with at least one attached hash' },
                  quarantinedBlobs: { type: 'integer' },
                  quarantinedBytes: { type: 'integer' },
                  pinnedBlobs: { type: 'integer' },
                  dedupSavedBytes: { type: 'integer', description: 'Σ size × (attached names − 1)' },
                },
                required: ['blobs', 'bytes', 'names', 'quarantinedBlobs', 'quarantinedBytes', 'pinnedBlobs', 'dedupSavedBytes'],
                additionalProperties: true,
              },
              server: {
                type: 'object',
                properties: {
                  version: { type: 'string' },
                  uptimeSeconds: { type: 'integer' },
                  startedAt: { type: 'string', format: 'date-time' },
                  readOnly: { type: 'boolean' },
                },
                additionalProperties: true,
              },
              readiness: {
                type: 'object',
                properties: {
                  ready: { type: 'boolean' },
                  failing: { type: 'array', items: { type: 'string' } },
                  checks: {
                    type: 'object',
                    additionalProperties: {
                      type: 'object',
                      properties: { ok: { type: 'boolean' }, detail: { type: 'string' } },
                      additionalProperties: false,
                    },
                  },
                },
                additionalProperties: true,
              },
              disk: {
                type: 'object',
                properties: {
                  freeBytes: { type: 'integer', nullable: true },
                  totalBytes: { type: 'integer', nullable: true },
                  minFreeBytes: { type: 'integer', description: '/readyz fails below this free space' },
                  highWatermarkBytes: { type: 'integer', nullable: true, description: 'uploads are refused above this many stored bytes' },
                },
                additionalProperties: true,
              },
              upstreams: {
                type: 'object',
                properties: {
                  pullThrough: { type: 'boolean' },
                  mirrors: {
                    type: 'array',
                    items: {
                      type: 'object',
                      properties: {
                        kind: { type: 'string' },
                        host: { type: 'string' },
                        breakerOpen: { type: 'boolean' },
                        failures: { type: 'integer' },
                      },
                      additionalProperties: false,
                    },
                  },
                },
                additionalProperties: true,
              },
              traffic: {
                type: 'object',
                description: 'the last hour, one entry per minute, oldest first (in memory: starts empty after a restart)',
                properties: { minutes: { type: 'array', items: minuteSchema } },
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
      const [report, space, minutes, totals, recent] = await Promise.all([
        readinessReport(),
        disk(),
        traffic?.() ?? [],
        queries.totals(),
        queries.recent(request.query.recent),
      ]);
      const uptime = process.uptime();
      return {
        totals,
        recent: recent.map((row) => ({ filename: row.filename, ...hashEntry(row) })),
        server: {
          version: VERSION,
          uptimeSeconds: Math.floor(uptime),
          startedAt: iso(Date.now() - uptime * 1000),
          readOnly: config?.readOnly ?? false,
        },
        ...(report ? { readiness: { ready: report.ready, failing: report.failing, checks: report.checks } } : {}),
        ...(space ? { disk: space } : {}),
        upstreams: {
          pullThrough: config?.pullThrough ?? false,
          mirrors: (mirrors?.() ?? []).map((m) => ({ kind: m.kind, host: mirrorHost(m.url), breakerOpen: m.open, failures: m.failures })),
        },
        traffic: { minutes: minutes.map((m) => ({ ...m, at: iso(m.at) })) },
        generatedAt: new Date().toISOString(),
        ...(deps.events ? { events: await deps.events() } : {}),
      };
    },
  );

  app.get<{ Querystring: { prefix: string; limit: number; ignoreCase: boolean; after?: string } }>(
    '/api/v1/search',
    {
      schema: {
        summary: 'Attached names starting with a prefix (case-sensitive unless ignoreCase), a page at a time, each with its hashes and download paths',
        tags: ['status'],
        security: [],
        querystring: {
          type: 'object',
          properties: {
            prefix: { type: 'string', minLength: 1, maxLength: MAX_PREFIX_CHARS },
            limit: { type: 'integer', minimum: 1, maximum: MAX_SEARCH_LIMIT, default: 20 },
            ignoreCase: { type: 'boolean', default: false, description: 'match ASCII letters in either case' },
            after: {
              type: 'string',
              minLength: 1,
              maxLength: MAX_PREFIX_CHARS,
              description: 'the `next` of the previous page: continue after this name',
            },
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
              ignoreCase: { type: 'boolean' },
              next: { type: 'string', description: 'when truncated: pass as `after` for the next page' },
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
      const { prefix, limit, ignoreCase, after } = request.query;
      const fold = (t: string) => (ignoreCase ? t.replace(/[A-Z]+/g, (c) => c.toLowerCase()) : t);
      if (after !== undefined && !fold(after).startsWith(fold(prefix))) {
        throw new AppError('BAD_REQUEST', '`after` must be a name that starts with `prefix` (the `next` of the previous page)');
      }
      const { results, truncated } = await queries.searchPrefix(prefix, limit, { ignoreCase, after });
      reply.header('cache-control', API_CACHE_CONTROL);
      return {
        prefix,
        limit,
        ignoreCase,
        truncated,
        ...(truncated ? { next: results[results.length - 1]!.filename } : {}),
        results: results.map(({ filename, hashes }) => ({ filename, hashes: hashes.map(hashEntry) })),
      };
    },
  );
}
