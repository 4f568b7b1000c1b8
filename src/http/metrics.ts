import { statfs } from 'node:fs/promises';
import { createServer, type Server as HttpServer } from 'node:http';
import type { Socket } from 'node:net';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { CounterArea, IndexCounts } from '../db/counters.js';
import type { NameIndex, ServableBlob } from '../db/index.js';
import { isPromise } from '../db/awaitable.js';
import { isAppError } from '../errors.js';
import type { Ingest } from '../ingest/ingest.js';
import { toAppError } from './errors.js';
import { TrafficHistory, type TrafficMinute } from '../ops/traffic.js';

declare module 'fastify' {
  interface FastifyRequest {
    /** The error code sent, when the request failed (set by the onError hook, read by metrics). */
    errorCode?: string;
    /** Seconds from the request's arrival to its response headers (set by the onSend hook). */
    ttfbSeconds?: number;
    /** Wire bytes of this response, once counted (see responseBytes). */
    bytesSent?: number;
  }
}

/**
 * From 100 µs (a cached 4 KiB hit) to an hour (a multi-GiB download to a slow client): one set of
 * buckets for every route kind, so kinds can be summed.
 */
export const DURATION_BUCKETS = [
  0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600,
];

const STATUS_CLASSES = ['1xx', '2xx', '3xx', '4xx', '5xx'] as const;
export function statusClass(status: number): string {
  return STATUS_CLASSES[Math.min(4, Math.max(0, Math.floor(status / 100) - 1))]!;
}

/** What the metrics read from outside the registry; each part is optional so a test can build a bare one. */
export interface MetricSources {
  /** The index counters behind the stored/quarantined/verified gauges; absent, those metrics are not exported. */
  counters?: CounterArea;
  dataDir?: string;
  /** FASTPULL_HIGH_WATERMARK_BYTES, when set: exported so an alert can compare stored bytes with it. */
  highWatermarkBytes?: number | undefined;
  /** FASTPULL_MIN_FREE_BYTES: /readyz fails below it. */
  minFreeBytes?: number | undefined;
  /** prom-client's process and Node.js metrics (event-loop lag, heap, fds); off for throwaway registries. */
  defaultMetrics?: boolean;
}

export interface ScrubState {
  enabled: boolean;
  running: boolean;
  resting: boolean;
  /** Epoch ms. */
  lastProgressAt: number;
}

/** /metrics may be public: a mirror is labelled by its URL without credentials. */
export function mirrorLabel(url: string): string {
  try {
    const u = new URL(url);
    u.username = '';
    u.password = '';
    return u.href.replace(/\/$/, '');
  } catch {
    return '(unparsable)';
  }
}

/** A mirror's circuit-breaker state, as pull-through reports it. */
export interface MirrorState {
  kind: string;
  url: string;
  open: boolean;
  failures: number;
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
  private durationHistogram<L extends string>(name: string, help: string, labelNames: readonly L[]): Histogram<L> {
    return new Histogram({ name, help, labelNames, buckets: DURATION_BUCKETS, registers: [this.registry] });
  }

  readonly requestDuration = this.durationHistogram(
    'fastpull_http_request_duration_seconds',
    "Time from a request's arrival to the last byte of its response handed to the socket, by route kind and status class (1xx…5xx)",
    ['kind', 'status_class'],
  );
  readonly timeToFirstByte = this.durationHistogram(
    'fastpull_http_time_to_first_byte_seconds',
    "Time from a request's arrival to its response headers, by route kind and status class",
    ['kind', 'status_class'],
  );
  readonly upstreamFetchDuration = this.durationHistogram(
    'fastpull_upstream_fetch_duration_seconds',
    'Upstream downloads (fetch jobs, pull-through, layout.conf) from the first request to the end of the body, by result (complete, incomplete, or the failure: not-found, network, server-error…)',
    ['result'],
  );
  readonly ingestDuration = this.durationHistogram(
    'fastpull_ingest_duration_seconds',
    'Ingests (upload, fetch job or pull-through body streamed, hashed, fsynced, linked and indexed) by result: created, existing or the error code',
    ['result'],
  );
  readonly servedBytesVerified = new Counter({
    name: 'fastpull_served_verified_bytes_total',
    help: 'Body bytes hashed and checked as they were sent (FASTPULL_VERIFY_ON_SERVE); a mismatch quarantines the blob and counts in fastpull_quarantines_total',
    registers: [this.registry],
  });
  readonly storageRefusals = new Counter({
    name: 'fastpull_storage_refusals_total',
    help: 'Writes refused for lack of space, by reason (watermark, enospc)',
    labelNames: ['reason'] as const,
    registers: [this.registry],
  });

  /** Children of the labelled metrics on the hot path, so a request costs Map lookups, not label hashing. */
  private readonly requestChildren = new Map<string, Counter.Internal>();
  private readonly bytesChildren = new Map<string, Counter.Internal>();
  private readonly durationChildren = new Map<string, { total: Histogram.Internal<'kind' | 'status_class'>; ttfb: Histogram.Internal<'kind' | 'status_class'> }>();

  /** Requests, bytes and status classes per minute over the last hour, for the status page. */
  readonly traffic = new TrafficHistory();

  private readonly counters: CounterArea | undefined;
  /** Read once per scrape (one primary-key row, whatever the index size); every gauge uses the same snapshot. */
  private counts: IndexCounts | undefined;
  private mirrorStates: () => MirrorState[] = () => [];
  private scrubState: () => ScrubState = () => ({ enabled: false, running: false, resting: false, lastProgressAt: 0 });

  constructor(sources: MetricSources = {}) {
    const { counters, dataDir } = sources;
    if (sources.defaultMetrics ?? true) collectDefaultMetrics({ register: this.registry });
    const counts = () => this.counts;
    const fromIndex = (name: string, help: string, pick: (c: IndexCounts) => number, type: 'gauge' | 'counter' = 'gauge') => {
      if (type === 'gauge') {
        new Gauge({
          name,
          help,
          // Every serving process reads the same index: a cluster reports the value once.
          aggregator: 'max',
          registers: [this.registry],
          collect() {
            const c = counts();
            if (c) this.set(pick(c));
          },
        });
      } else {
        // Cumulative totals kept in the index: another process (fastpull verify) adds to them too, so
        // the exported counter is the index's value, not what this process happened to see.
        new Counter({
          name,
          help,
          aggregator: 'max',
          registers: [this.registry],
          collect() {
            const c = counts();
            if (c) {
              this.reset();
              this.inc(pick(c));
            }
          },
        });
      }
    };
    if (counters) {
      this.counters = counters;
      fromIndex('fastpull_stored_blobs', 'Blobs in the index (quarantined ones included)', (c) => c.blobs);
      fromIndex('fastpull_stored_blob_bytes', 'Total size of the blobs in the index (quarantined ones included)', (c) => c.blobBytes);
      fromIndex('fastpull_quarantined_blobs', 'Blobs whose bytes failed verification or went missing; they answer 404 until re-uploaded', (c) => c.quarantinedBlobs);
      fromIndex('fastpull_quarantined_blob_bytes', 'Total size of the quarantined blobs', (c) => c.quarantinedBytes);
      fromIndex('fastpull_pinned_blobs', 'Blobs kept by gc without a name (uploaded by hash, pulled through by hash, or found on disk)', (c) => c.pinnedBlobs);
      fromIndex('fastpull_attached_names', 'Distinct file names with at least one attached hash (what name paths can serve)', (c) => c.attachedNames);
      fromIndex('fastpull_attached_name_hashes', 'Attached (name, hash) pairs: a re-rolled name counts once per attached hash', (c) => c.attachedPairs);
      fromIndex('fastpull_dedup_saved_bytes', 'Bytes not stored thanks to content addressing: sum of size × (attached names − 1) over blobs', (c) => c.dedupSavedBytes);
      fromIndex(
        'fastpull_verified_bytes_total',
        'Blob bytes re-hashed and found intact, by the background scrub, fastpull verify, fsck or reindex in any process (kept in the index)',
        (c) => c.verifiedBytes,
        'counter',
      );
      fromIndex('fastpull_verified_blobs_total', 'Blobs re-hashed and found intact, in any process (kept in the index)', (c) => c.verifiedBlobs, 'counter');
      fromIndex(
        'fastpull_quarantines_total',
        'Times a blob went into quarantine (damage found by the scrub or fastpull verify, a missing file by fsck --repair), in any process',
        (c) => c.quarantines,
        'counter',
      );
      // Deprecated names, kept one release so existing dashboards and alerts keep working.
      fromIndex('fastpull_blobs_stored', 'DEPRECATED: use fastpull_stored_blobs', (c) => c.blobs);
      fromIndex('fastpull_blob_bytes_stored', 'DEPRECATED: use fastpull_stored_blob_bytes', (c) => c.blobBytes);
      fromIndex('fastpull_blobs_quarantined', 'DEPRECATED: use fastpull_quarantined_blobs', (c) => c.quarantinedBlobs);
      fromIndex('fastpull_scrub_bytes_verified_total', 'DEPRECATED: use fastpull_verified_bytes_total (same value)', (c) => c.verifiedBytes, 'counter');
      fromIndex('fastpull_scrub_corrupt_total', 'DEPRECATED: use fastpull_quarantines_total (same value)', (c) => c.quarantines, 'counter');
    }
    if (dataDir) {
      new Gauge({
        name: 'fastpull_disk_free_bytes',
        // Every serving process reads the same index and disk: a cluster reports the value once.
        aggregator: 'max',
        help: 'Bytes available to the origin on the data directory filesystem',
        registers: [this.registry],
        async collect() {
          const s = await statfs(dataDir).catch(() => undefined);
          if (s) this.set(s.bavail * s.bsize);
        },
      });
    }
    if (sources.minFreeBytes !== undefined) {
      new Gauge({
        name: 'fastpull_min_free_bytes',
        aggregator: 'max',
        help: 'FASTPULL_MIN_FREE_BYTES: /readyz fails when fastpull_disk_free_bytes drops below it',
        registers: [this.registry],
      }).set(sources.minFreeBytes);
    }
    if (sources.highWatermarkBytes !== undefined) {
      new Gauge({
        name: 'fastpull_high_watermark_bytes',
        aggregator: 'max',
        help: 'FASTPULL_HIGH_WATERMARK_BYTES: uploads get 507 while fastpull_stored_blob_bytes is above it',
        registers: [this.registry],
      }).set(sources.highWatermarkBytes);
    }
    const scrub = () => this.scrubState();
    new Gauge({
      name: 'fastpull_scrub_enabled',
      aggregator: 'max',
      help: '1 when the background scrub is configured (FASTPULL_SCRUB_BYTES_PER_SECOND > 0) in this process',
      registers: [this.registry],
      collect() {
        this.set(scrub().enabled ? 1 : 0);
      },
    });
    new Gauge({
      name: 'fastpull_scrub_last_progress_timestamp_seconds',
      aggregator: 'max',
      help: 'When the background scrub last read a chunk, finished a blob or a pass (now while it rests between passes by design); stale while it is stuck or stopped',
      registers: [this.registry],
      collect() {
        const s = scrub();
        if (!s.enabled) return;
        this.set((s.running && s.resting ? Date.now() : s.lastProgressAt) / 1000);
      },
    });
    // Per pull-through mirror, by its credential-free label; each process has its own breakers, so a cluster reports the worst.
    const mirrors = () => this.mirrorStates();
    const perMirror = (name: string, help: string, value: (m: MirrorState) => number) =>
      new Gauge({
        name,
        help,
        aggregator: 'max',
        labelNames: ['mirror', 'kind'] as const,
        registers: [this.registry],
        collect() {
          this.reset();
          for (const m of mirrors()) this.labels(mirrorLabel(m.url), m.kind).set(value(m));
        },
      });
    perMirror('fastpull_upstream_breaker_open', 'Pull-through mirrors: 1 while the circuit breaker is open (the mirror is skipped), else 0', (m) =>
      m.open ? 1 : 0,
    );
    perMirror(
      'fastpull_upstream_consecutive_failures',
      'Pull-through mirrors: failures in a row (the breaker opens at FASTPULL_UPSTREAM_FAILURE_THRESHOLD)',
      (m) => m.failures,
    );
  }

  /** Where the scrub gauges read the background scrubber's state (it runs in the server process). */
  watchScrub(state: () => ScrubState): void {
    this.scrubState = state;
  }

  /** Where the breaker gauges read mirror states (pull-through, when configured). */
  watchMirrors(states: () => MirrorState[]): void {
    this.mirrorStates = states;
  }

  /**
   * Everything a completed response feeds: request and byte counters, the duration and
   * time-to-first-byte histograms, and the status page's last hour. Any serving path calls this
   * once per response (the fastify hooks below do for routed requests).
   */
  observeRequest(kind: string, status: number, seconds: number, ttfbSeconds: number | undefined, bytes: number): void {
    this.countRequest(kind, status, bytes);
    const key = `${kind} ${Math.floor(status / 100)}`;
    let h = this.durationChildren.get(key);
    if (!h) {
      const cls = statusClass(status);
      h = { total: this.requestDuration.labels(kind, cls), ttfb: this.timeToFirstByte.labels(kind, cls) };
      this.durationChildren.set(key, h);
    }
    h.total.observe(seconds);
    h.ttfb.observe(ttfbSeconds ?? seconds);
    this.traffic.record(status, bytes);
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

  private aggregate: (() => Promise<string>) | undefined;

  /** In a cluster, any serving process answers /metrics for all of them, through `aggregate`. */
  aggregateWith(aggregate: () => Promise<string>): void {
    this.aggregate = aggregate;
  }

  private aggregateTraffic: (() => Promise<TrafficMinute[]>) | undefined;

  /** In a cluster, the status page's last hour covers every serving process, through `aggregate`. */
  aggregateTrafficWith(aggregate: () => Promise<TrafficMinute[]>): void {
    this.aggregateTraffic = aggregate;
  }

  /** The last hour of traffic, per minute: this process's, or the cluster's. */
  async lastHour(): Promise<TrafficMinute[]> {
    return this.aggregateTraffic ? this.aggregateTraffic() : this.traffic.lastHour();
  }

  /**
   * One read of the counters per scrape. An index that cannot answer (closed at shutdown, PostgreSQL
   * unreachable) leaves its gauges out of this scrape rather than failing the whole of /metrics.
   */
  private async readCounts(): Promise<void> {
    try {
      this.counts = await this.counters?.read();
    } catch {
      this.counts = undefined;
    }
  }

  /** This process's metrics as JSON, for the cluster primary to add up. */
  async collect() {
    await this.readCounts();
    for (const hook of this.scrapeHooks) hook();
    return this.registry.getMetricsAsJSON();
  }

  async text(): Promise<string> {
    if (this.aggregate) return this.aggregate();
    await this.readCounts();
    for (const hook of this.scrapeHooks) hook();
    return this.registry.metrics();
  }
}

const SOCKET_BYTES_COUNTED = Symbol('fastpull.bytesCounted');
type CountedSocket = Socket & { [SOCKET_BYTES_COUNTED]?: number };

/**
 * Wire bytes of this response: the socket's bytesWritten since the previous response on the same
 * connection ended. True wire bytes (a HEAD or 304 costs its headers, a 206 only its range) for two
 * property reads. Content-Length would miss headers and chunked bodies. Computed once per request
 * and remembered, so the metrics hook and the log line agree. A response the client aborted is
 * counted by whichever of the two runs (the log line always does).
 */
export function responseBytes(request: FastifyRequest): number {
  request.bytesSent ??= socketBytesSinceLastResponse(request.raw.socket);
  return request.bytesSent;
}

/** The counting under responseBytes, for the lean download path, which has no fastify request. */
export function socketBytesSinceLastResponse(socket: Socket | null): number {
  const counted = socket as CountedSocket | null;
  if (!counted) return 0;
  const written = counted.bytesWritten;
  const bytes = written - (counted[SOCKET_BYTES_COUNTED] ?? 0);
  counted[SOCKET_BYTES_COUNTED] = written;
  return bytes;
}

/**
 * Observes every completed response (metrics.observeRequest). Time to first byte is taken in
 * onSend, which fastify runs right before it writes the headers (for a stream, before piping).
 * Responses the client aborted never reach onResponse; their bytes are counted with the next
 * response on that socket, if any.
 */
export function installHttpMetrics(app: FastifyInstance, metrics: Metrics): void {
  const { uploads } = metrics;
  app.addHook('onError', async (request, _reply, err) => {
    request.errorCode = isAppError(err) ? err.code : toAppError(err).code;
  });
  // Callback style, not async: no promise allocated per response on the download path.
  app.addHook('onSend', (request, reply, payload, done) => {
    request.ttfbSeconds = reply.elapsedTime / 1000;
    done(null, payload);
  });
  app.addHook('onResponse', (request, reply, done) => {
    const kind = request.routeKind ?? 'other';
    const status = reply.statusCode;
    metrics.observeRequest(kind, status, reply.elapsedTime / 1000, request.ttfbSeconds, responseBytes(request));
    if (kind === 'api' && request.method === 'PUT') {
      uploads.labels(String(status), request.errorCode ?? (status < 400 ? 'OK' : 'ERROR')).inc();
    }
    done();
  });
}

/** GET /metrics on the main app (used when no separate metrics port is configured). */
export function metricsRoute(app: FastifyInstance, metrics: Metrics): void {
  app.get('/metrics', async (request, reply) => {
    request.routeKind = 'other';
    return reply.header('cache-control', 'no-store').type(METRICS_CONTENT_TYPE).send(await metrics.text());
  });
}

/**
 * Counts hits and misses of the two download-path lookups by wrapping them on this instance; a lookup
 * answered synchronously (SQLite, a cache hit) is counted at once, without a promise.
 */
export function meterIndex(index: NameIndex, metrics: Metrics): void {
  const counted = (key: 'hash' | 'name') => {
    const hit = metrics.indexLookups.labels(key, 'hit');
    const miss = metrics.indexLookups.labels(key, 'miss');
    return (row: ServableBlob | undefined) => {
      (row ? hit : miss).inc();
      return row;
    };
  };
  const hashCounted = counted('hash');
  const nameCounted = counted('name');
  const byHash = index.servableByHash.bind(index);
  const byName = index.servableByName.bind(index);
  index.servableByHash = (sha512) => {
    const row = byHash(sha512);
    return isPromise(row) ? row.then(hashCounted) : hashCounted(row);
  };
  index.servableByName = (filename) => {
    const row = byName(filename);
    return isPromise(row) ? row.then(nameCounted) : nameCounted(row);
  };
}

/**
 * Counts every ingest, whatever started it (upload, fetch job, pull-through), by wrapping
 * the instance's method: the other subsystems need not know metrics exist.
 */
export function meterIngest(ingest: Ingest, metrics: Metrics): void {
  const original = ingest.ingest.bind(ingest);
  ingest.ingest = async (source, options) => {
    const started = performance.now();
    try {
      const result = await original(source, options);
      const label = result.created ? 'created' : 'existing';
      metrics.ingests.labels(label).inc();
      metrics.ingestedBytes.labels(label).inc(result.digests.size);
      metrics.ingestDuration.labels(label).observe((performance.now() - started) / 1000);
      return result;
    } catch (err) {
      const appError = toAppError(err);
      const code = appError.code;
      metrics.ingests.labels(code).inc();
      metrics.ingestDuration.labels(code).observe((performance.now() - started) / 1000);
      // A watermark refusal in mid-body is already counted as reason="watermark" by the storage guard.
      if (code === 'INSUFFICIENT_STORAGE' && appError.details?.highWatermarkBytes === undefined) {
        metrics.storageRefusals.labels('enospc').inc();
      }
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
