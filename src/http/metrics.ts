import { statfs } from 'node:fs/promises';
import { createServer, type Server as HttpServer } from 'node:http';
import type { Socket } from 'node:net';
import type { FastifyInstance } from 'fastify';
import { Counter, Gauge, Registry } from 'prom-client';
import type { DB } from '../db/open.js';
import type { DistfileIndex } from '../db/index.js';
import { isAppError } from '../errors.js';
import type { Ingest } from '../ingest/ingest.js';
import { toAppError } from './errors.js';

declare module 'fastify' {
  interface FastifyRequest {
    /** The error code sent, when the request failed (set by the onError hook, read by metrics). */
    errorCode?: string;
  }
}

export const METRICS_CONTENT_TYPE = 'text/plain; version=0.0.4; charset=utf-8';

/**
 * Every metric the origin exports, on its own Registry so that two apps in one process
 * (tests, or the separate metrics listener) never collide on prom-client's global default.
 * Counters other subsystems increment (pull-through, fetch jobs, scrub, watermark) live here
 * too, so the names are declared once.
 */
export class Metrics {
  readonly registry = new Registry();

  readonly httpRequests = new Counter({
    name: 'fastpull_http_requests_total',
    help: 'Completed HTTP responses by route kind (hash, name, layout, api, other) and status code',
    labelNames: ['kind', 'status'] as const,
    registers: [this.registry],
  });
  readonly httpBytesSent = new Counter({
    name: 'fastpull_http_response_bytes_total',
    help: 'Bytes written to client sockets (headers and bodies) by completed responses, by route kind',
    labelNames: ['kind'] as const,
    registers: [this.registry],
  });
  readonly uploads = new Counter({
    name: 'fastpull_uploads_total',
    help: 'Upload requests (PUT on the admin API) by status and result code (OK or the error code)',
    labelNames: ['status', 'code'] as const,
    registers: [this.registry],
  });
  readonly ingestedBytes = new Counter({
    name: 'fastpull_ingested_bytes_total',
    help: 'Bytes of verified blobs accepted by ingest (uploads, fetch jobs, pull-through); result is created or existing (deduplicated)',
    labelNames: ['result'] as const,
    registers: [this.registry],
  });
  readonly ingests = new Counter({
    name: 'fastpull_ingests_total',
    help: 'Ingest attempts by result: created, existing (deduplicated) or the error code',
    labelNames: ['result'] as const,
    registers: [this.registry],
  });
  readonly indexLookups = new Counter({
    name: 'fastpull_index_lookups_total',
    help: 'Download-path index lookups by key (hash or name) and result (hit or miss)',
    labelNames: ['by', 'result'] as const,
    registers: [this.registry],
  });
  readonly pullThrough = new Counter({
    name: 'fastpull_pull_through_total',
    help: 'Pull-through on a local miss by result (hit: fetched and served, miss: no upstream had it, failure)',
    labelNames: ['result'] as const,
    registers: [this.registry],
  });
  readonly fetchItems = new Counter({
    name: 'fastpull_fetch_items_total',
    help: 'Fetch-job items finished by result (done or failed)',
    labelNames: ['result'] as const,
    registers: [this.registry],
  });
  readonly scrubBytes = new Counter({
    name: 'fastpull_scrub_bytes_verified_total',
    help: 'Blob bytes re-hashed by the scrubber or fastpull verify',
    registers: [this.registry],
  });
  readonly scrubCorrupt = new Counter({
    name: 'fastpull_scrub_corrupt_total',
    help: 'Blobs found corrupt and quarantined',
    registers: [this.registry],
  });
  readonly storageRefusals = new Counter({
    name: 'fastpull_storage_refusals_total',
    help: 'Writes refused for lack of space, by reason (watermark, enospc)',
    labelNames: ['reason'] as const,
    registers: [this.registry],
  });

  /** Children of the labelled counters on the hot path, so a request costs one Map lookup, not a label hash. */
  private readonly requestChildren = new Map<string, Counter.Internal>();
  private readonly bytesChildren = new Map<string, Counter.Internal>();

  /** Gauges read from SQLite and the filesystem only when scraped: nothing on the request path. */
  constructor(sources: { db?: DB; dataDir?: string } = {}) {
    const { db, dataDir } = sources;
    if (db) {
      const totals = db.prepare<[], { blobs: number; bytes: number; quarantined: number }>(
        `SELECT count(*) AS blobs, total(size) AS bytes, count(quarantined_at) AS quarantined FROM blobs`,
      );
      let last: { blobs: number; bytes: number; quarantined: number } | undefined;
      // Both gauges come from one scan; the first collect of a scrape runs it, the second reuses it.
      const read = (fresh: boolean) => {
        if (fresh || !last) last = db.open ? totals.get() : undefined;
        return last;
      };
      new Gauge({
        name: 'fastpull_blobs_stored',
        help: 'Blobs in the index (quarantined ones included)',
        registers: [this.registry],
        collect() {
          const t = read(true);
          if (t) this.set(t.blobs);
        },
      });
      new Gauge({
        name: 'fastpull_blob_bytes_stored',
        help: 'Total size of the blobs in the index',
        registers: [this.registry],
        collect() {
          const t = read(false);
          if (t) this.set(t.bytes);
        },
      });
      new Gauge({
        name: 'fastpull_blobs_quarantined',
        help: 'Blobs whose bytes failed verification and are not served',
        registers: [this.registry],
        collect() {
          const t = read(false);
          if (t) this.set(t.quarantined);
        },
      });
    }
    if (dataDir) {
      new Gauge({
        name: 'fastpull_disk_free_bytes',
        help: 'Bytes available to the origin on the data directory filesystem',
        registers: [this.registry],
        async collect() {
          const s = await statfs(dataDir).catch(() => undefined);
          if (s) this.set(s.bavail * s.bsize);
        },
      });
    }
  }

  countRequest(kind: string, status: number, bytes: number): void {
    const key = `${kind} ${status}`;
    let child = this.requestChildren.get(key);
    if (!child) {
      child = this.httpRequests.labels(kind, String(status));
      this.requestChildren.set(key, child);
    }
    child.inc();
    if (bytes > 0) {
      let b = this.bytesChildren.get(kind);
      if (!b) {
        b = this.httpBytesSent.labels(kind);
        this.bytesChildren.set(kind, b);
      }
      b.inc(bytes);
    }
  }

  private readonly scrapeHooks: (() => void)[] = [];

  /** Runs before every scrape: for counters kept outside this registry as plain totals. */
  onScrape(hook: () => void): void {
    this.scrapeHooks.push(hook);
  }

  text(): Promise<string> {
    for (const hook of this.scrapeHooks) hook();
    return this.registry.metrics();
  }
}

const SOCKET_BYTES_COUNTED = Symbol('fastpull.bytesCounted');
type CountedSocket = Socket & { [SOCKET_BYTES_COUNTED]?: number };

/**
 * Counts every completed response. Bytes sent are the socket's bytesWritten since the previous
 * response on the same connection ended: true wire bytes (a HEAD or 304 costs its headers, a
 * 206 only its range) for two property reads, without a per-request onRequest hook.
 * Content-Length would miss headers and chunked bodies. Responses the client aborted never
 * reach onResponse; their partial bytes are counted with the next response on that socket, if any.
 */
export function installHttpMetrics(app: FastifyInstance, metrics: Metrics): void {
  const { uploads } = metrics;
  app.addHook('onError', async (request, _reply, err) => {
    request.errorCode = isAppError(err) ? err.code : toAppError(err).code;
  });
  // Callback style, not async: no promise allocated per response on the download path.
  app.addHook('onResponse', (request, reply, done) => {
    const kind = request.routeKind ?? 'other';
    const status = reply.statusCode;
    countResponse(metrics, request.raw.socket, kind, status);
    if (kind === 'api' && request.method === 'PUT') {
      uploads.labels(String(status), request.errorCode ?? (status < 400 ? 'OK' : 'ERROR')).inc();
    }
    done();
  });
}

/** Counts one completed response and the wire bytes its socket sent since the previous one (also used by hot-path.ts). */
export function countResponse(metrics: Metrics, socket: Socket | null, kind: string, status: number): void {
  const counted = socket as CountedSocket | null;
  let bytes = 0;
  if (counted) {
    const written = counted.bytesWritten;
    bytes = written - (counted[SOCKET_BYTES_COUNTED] ?? 0);
    counted[SOCKET_BYTES_COUNTED] = written;
  }
  metrics.countRequest(kind, status, bytes);
}

/** GET /metrics on the main app (used when no separate metrics port is configured). */
export function metricsRoute(app: FastifyInstance, metrics: Metrics): void {
  app.get('/metrics', async (request, reply) => {
    request.routeKind = 'other';
    return reply.header('cache-control', 'no-store').type(METRICS_CONTENT_TYPE).send(await metrics.text());
  });
}

/** Counts hits and misses of the two download-path lookups by wrapping them on this instance. */
export function meterIndex(index: DistfileIndex, metrics: Metrics): void {
  const hashHit = metrics.indexLookups.labels('hash', 'hit');
  const hashMiss = metrics.indexLookups.labels('hash', 'miss');
  const nameHit = metrics.indexLookups.labels('name', 'hit');
  const nameMiss = metrics.indexLookups.labels('name', 'miss');
  const byHash = index.servableByHash.bind(index);
  const byName = index.servableByName.bind(index);
  index.servableByHash = (sha512) => {
    const row = byHash(sha512);
    (row ? hashHit : hashMiss).inc();
    return row;
  };
  index.servableByName = (filename) => {
    const row = byName(filename);
    (row ? nameHit : nameMiss).inc();
    return row;
  };
}

/**
 * Counts every ingest, whatever started it (upload, fetch job, pull-through), by wrapping
 * the instance's method: the other subsystems need not know metrics exist.
 */
export function meterIngest(ingest: Ingest, metrics: Metrics): void {
  const original = ingest.ingest.bind(ingest);
  ingest.ingest = async (source, options) => {
    try {
      const result = await original(source, options);
      const label = result.created ? 'created' : 'existing';
      metrics.ingests.labels(label).inc();
      metrics.ingestedBytes.labels(label).inc(result.digests.size);
      return result;
    } catch (err) {
      const code = toAppError(err).code;
      metrics.ingests.labels(code).inc();
      if (code === 'INSUFFICIENT_STORAGE') metrics.storageRefusals.labels('enospc').inc();
      throw err;
    }
  };
}

/**
 * A bare listener for /metrics on its own port (FASTPULL_METRICS_PORT), so scrapes can be
 * firewalled apart from public traffic. Deliberately not Fastify: it serves one path.
 */
export async function startMetricsListener(
  metrics: Metrics,
  host: string,
  port: number,
): Promise<{ url: string; server: HttpServer }> {
  const server = createServer((req, res) => {
    const path = (req.url ?? '/').split('?', 1)[0];
    if (path !== '/metrics' || (req.method !== 'GET' && req.method !== 'HEAD')) {
      res.writeHead(404, { 'content-type': 'application/json; charset=utf-8' });
      res.end(JSON.stringify({ error: 'NOT_FOUND', message: 'only GET /metrics is served on this port' }));
      return;
    }
    metrics.text().then(
      (text) => {
        res.writeHead(200, { 'content-type': METRICS_CONTENT_TYPE, 'cache-control': 'no-store' });
        res.end(req.method === 'HEAD' ? undefined : text);
      },
      () => {
        res.writeHead(500, { 'content-type': 'application/json; charset=utf-8' });
        res.end(JSON.stringify({ error: 'INTERNAL', message: 'internal error' }));
      },
    );
  });
  server.headersTimeout = 10_000;
  server.requestTimeout = 30_000;
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const address = server.address();
  const bound = typeof address === 'object' && address ? address.port : port;
  const h = host.includes(':') ? `[${host}]` : host;
  return { url: `http://${h}:${bound}`, server };
}
