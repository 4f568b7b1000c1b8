import { randomUUID } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { performance } from 'node:perf_hooks';
import type { Logger } from 'pino';
import type { Config } from '../config.js';
import type { NameIndex, ServableBlob } from '../db/index.js';
import { isPromise, type Awaitable } from '../db/awaitable.js';
import { SMALL_BLOB_BYTES, type BlobReader, type OpenFile } from '../store/blob-reader.js';
import type { BlobSource } from '../store/remote-reader.js';
import { socketBytesSinceLastResponse, type Metrics } from './metrics.js';
import { LAYOUT_CONF, parseReadPath, type BlobTarget } from './read-path.js';
import { clientAddress, trustFunction } from './client-address.js';
import { requestLogFields } from './request-log.js';
import { decide, fixedHeaders, IMMUTABLE, type BodyWatch, type ByteRange } from './send.js';

export type { BodyWatch };

const REQUEST_ID = /^[\w.:-]{1,64}$/;

/** The request id: the caller's X-Request-Id when it is sane (a CDN's, for correlation), else a fresh UUID. */
export function requestIdOf(req: IncomingMessage): string {
  const given = req.headers['x-request-id'];
  return typeof given === 'string' && REQUEST_ID.test(given) ? given : randomUUID();
}

/** What the lean path already looked up when it hands a request over to fastify (so it is not looked up twice). */
export const HOT_LOOKUP = Symbol('fastpull.hotLookup');
export interface HotLookup {
  target: BlobTarget;
  blob: ServableBlob | undefined;
}
export type HandedOver = IncomingMessage & { [HOT_LOOKUP]?: HotLookup };

/** The servable blob a path names; synchronous when the index answers synchronously (SQLite, a cache hit). */
export function lookup(index: NameIndex, target: BlobTarget): Awaitable<ServableBlob | undefined> {
  const found = target.kind === 'hash' ? index.servableByHash(target.sha512) : index.servableByName(target.filename);
  return isPromise(found) ? found.then(servable) : servable(found);
}

const servable = (blob: ServableBlob | undefined) => (blob && blob.quarantined_at === null ? blob : undefined);

export interface HotPathDeps {
  config: Config;
  index: NameIndex;
  /** Local files are answered here; a blob only a remote storage holds is handed to fastify's route. */
  source: BlobSource;
  logger: Logger;
  metrics?: Metrics | undefined;
  /** True once the server is draining: answers then carry Connection: close, as fastify's do. */
  closing(): boolean;
  /** Verification on serve, when FASTPULL_VERIFY_ON_SERVE is on. */
  watch?: BodyWatch | undefined;
}

const shardPath = (h: string) => `${h.slice(0, 2)}/${h.slice(2, 4)}/${h.slice(4, 6)}/${h}`;

/**
 * Whether nginx may finish a request whose answer fastpull decided is a 200 or 206: only when nginx,
 * reading the same request, cannot decide differently. It evaluates Range itself (the same single-range
 * rules), but with its own validators (the file's mtime, no ETag) for If-Range and the conditionals, so
 * any of those keeps the request here; so does a Range fastpull chose to ignore (several ranges, another unit).
 */
function offloadable(req: IncomingMessage, status: 200 | 206): boolean {
  const h = req.headers;
  if (h['if-range'] !== undefined || h['if-match'] !== undefined || h['if-none-match'] !== undefined) return false;
  if (h['if-modified-since'] !== undefined || h['if-unmodified-since'] !== undefined) return false;
  return status === 206 || h.range === undefined;
}

export type HotHandler = (req: IncomingMessage, res: ServerResponse, fallback: (req: IncomingMessage, res: ServerResponse) => void) => void;

/**
 * The download hot path, in front of fastify: GET and HEAD of layout.conf, hash paths and name paths
 * that resolve to a servable blob and need a 200, 206 or 304 are answered here, with the same headers,
 * log line, request id and metrics fastify's route would give, but none of its per-request machinery
 * (hooks, promises, reply objects, header rebuilding). Everything else (errors, misses, pull-through,
 * every other route) goes to fastify untouched; nothing is written before that decision.
 */
export function createHotPath(deps: HotPathDeps): HotHandler | undefined {
  const { config, index, source, logger, metrics, closing, watch } = deps;
  const trust = trustFunction(config.trustProxy);
  const nameCacheControl = `public, max-age=${config.nameMaxAge}`;
  const layoutBody = Buffer.from(LAYOUT_CONF);
  const layoutHeaders = [
    'content-type',
    'text/plain; charset=utf-8',
    'cache-control',
    `public, max-age=${config.layoutMaxAge}`,
    'content-length',
    String(layoutBody.length),
  ];
  const logs = logger.isLevelEnabled('info');
  // Verification on serve needs the bytes to pass through here: it wins over the offload.
  const accel = config.accelRedirect !== undefined && !watch ? config.accelRedirect.replace(/\/*$/, '/') : undefined;

  // The same rule fastify's request.ip follows (FASTPULL_TRUST_PROXY), so both log the same client.
  const remoteOf = (req: IncomingMessage): string | undefined => clientAddress(req, trust);

  /** When head() wrote the status line: time to first byte for the histogram. */
  const headWrittenAt = new WeakMap<ServerResponse, number>();

  /** The one log line and the metrics of a request answered here, exactly as app.ts's hooks write them. */
  const account = (req: IncomingMessage, res: ServerResponse, reqId: string, kind: string, started: number) => {
    // Wire bytes are read once, by whichever of the two runs first, so the metric and the log agree.
    let bytes: number | undefined;
    const bytesSent = () => (bytes ??= socketBytesSinceLastResponse(req.socket));
    if (metrics) {
      res.once('finish', () => {
        const headAt = headWrittenAt.get(res);
        metrics.observeRequest(kind, res.statusCode, (performance.now() - started) / 1000, headAt === undefined ? undefined : (headAt - started) / 1000, bytesSent());
      });
    }
    if (!logs) return;
    res.once('close', () => {
      logger.info({ reqId, ...requestLogFields(req, res, kind, performance.now() - started, { remote: remoteOf(req), bytes: bytesSent() }) }, 'request');
    });
  };

  const head = (res: ServerResponse, status: number, fixed: string[], reqId: string, extra: string[]) => {
    const all = fixed.concat('x-request-id', reqId, ...extra);
    if (closing()) all.push('connection', 'close');
    res.writeHead(status, all);
    headWrittenAt.set(res, performance.now());
  };

  const lengthHeaders = (range: ByteRange | undefined, size: number): string[] =>
    range
      ? ['content-range', `bytes ${range.start}-${range.end}/${size}`, 'content-length', String(range.end - range.start + 1)]
      : ['content-length', String(size)];

  return (req, res, fallback) => {
    const method = req.method;
    if (method !== 'GET' && method !== 'HEAD') return fallback(req, res);
    const target = parseReadPath(req.url ?? '/');
    if (target.kind === 'bad' || target.kind === 'none') return fallback(req, res);
    const started = performance.now();

    if (target.kind === 'layout') {
      const reqId = requestIdOf(req);
      account(req, res, reqId, 'layout', started);
      head(res, 200, layoutHeaders, reqId, []);
      res.end(method === 'HEAD' ? undefined : layoutBody);
      return;
    }

    const found = lookup(index, target);
    // SQLite answers at once and the request goes on in this tick; a database on the network is awaited.
    if (!isPromise(found)) return serve(req, res, fallback, target, found, started);
    found.then(
      (blob) => serve(req, res, fallback, target, blob, started),
      (err: unknown) => {
        logger.error({ err }, 'index lookup failed');
        fallback(req, res);
      },
    );
  };

  function serve(
    req: IncomingMessage,
    res: ServerResponse,
    fallback: (req: IncomingMessage, res: ServerResponse) => void,
    target: BlobTarget,
    blob: ServableBlob | undefined,
    started: number,
  ): void {
    const method = req.method;
    const handOver = () => {
      (req as HandedOver)[HOT_LOOKUP] = { target, blob };
      fallback(req, res);
    };
    if (!blob) return handOver();
    const fixed = fixedHeaders(blob, target.kind === 'hash' ? IMMUTABLE : nameCacheControl);
    const decision = decide(req.headers, fixed, blob.size);
    if (decision.status === 412 || decision.status === 416) return handOver();

    const reqId = requestIdOf(req);
    if (decision.status === 304) {
      account(req, res, reqId, target.kind, started);
      head(res, 304, fixed.flat, reqId, []);
      res.end();
      return;
    }
    const range = decision.status === 206 ? decision.range : undefined;
    const status = decision.status;

    if (accel && method === 'GET' && blob.size > SMALL_BLOB_BYTES && offloadable(req, decision.status)) {
      // nginx sends the bytes (sendfile) from the internal location, cutting the range itself from the
      // client's own Range header; fastpull's headers ride along (config/nginx-offload.conf copies them).
      account(req, res, reqId, target.kind, started);
      // nginx copies Cache-Control, Content-Disposition and Accept-Ranges itself (the offload config the
      // rest); on a whole file its static module adds its own Accept-Ranges, on a range it does not.
      head(res, 200, status === 206 ? fixed.flat : fixed.accel, reqId, ['x-accel-redirect', accel + shardPath(blob.sha512), 'content-length', '0']);
      res.end();
      return;
    }

    const reader = source.local(blob);
    if (!reader) return handOver();
    if (blob.size <= SMALL_BLOB_BYTES) {
      reader.small(blob).then(
        (read) => {
          // Missing, wrong size or damaged: fastify's route logs it and answers 404.
          if (!('bytes' in read)) {
            // A damaged read-cache copy says nothing of the stored blob: the route drops it and reads the storage.
            if ('damaged' in read && !source.remote) watch?.damaged(blob, logger, read.damaged);
            return handOver();
          }
          account(req, res, reqId, target.kind, started);
          head(res, status, fixed.flat, reqId, lengthHeaders(range, blob.size));
          if (method === 'HEAD') res.end();
          else res.end(range ? read.bytes.subarray(range.start, range.end + 1) : read.bytes);
        },
        () => handOver(),
      );
      return;
    }

    reader.acquire(blob).then(
      (file) => {
        if (!file || file.size !== blob.size) {
          file?.release();
          return handOver();
        }
        account(req, res, reqId, target.kind, started);
        head(res, status, fixed.flat, reqId, lengthHeaders(range, blob.size));
        if (method === 'HEAD') {
          file.release();
          res.end();
          return;
        }
        send(reader, file, blob, range, res, !range && watch ? watch.body(blob, logger) : undefined);
      },
      () => handOver(),
    );
  }

  function send(
    reader: BlobReader,
    file: OpenFile,
    blob: ServableBlob,
    range: ByteRange | undefined,
    res: ServerResponse,
    onChunk?: (chunk: Buffer, last: boolean) => boolean,
  ) {
    const start = range ? range.start : 0;
    const end = range ? range.end : blob.size - 1;
    reader.pump(
      file,
      start,
      end,
      res,
      (outcome) => {
        file.release();
        if (outcome === undefined) return;
        // A short file or a failed read must cut the connection: a clean end after too few bytes would
        // let a cache keep a truncated file (and a pipelined response be read as its missing bytes).
        if (outcome === 'short') logger.error({ sha512: blob.sha512, expected: end - start + 1 }, 'blob shrank while being sent');
        else if (outcome !== 'refused' && !res.destroyed) logger.error({ err: outcome, sha512: blob.sha512 }, 'reading a blob failed mid-response');
        res.destroy();
      },
      onChunk,
    );
  }
}
