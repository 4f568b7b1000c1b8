import { createHash } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';

export type Handler = (req: IncomingMessage, res: ServerResponse, hit: number) => void | Promise<void>;

export interface SeenRequest {
  path: string;
  headers: IncomingMessage['headers'];
}

/** A local stand-in for the outside internet: routes by exact path, records every request. */
export interface Upstream {
  url: string;
  requests: SeenRequest[];
  /** Requests seen for one path. */
  count(path: string): number;
  route(path: string, handler: Handler): void;
  /** Concurrent requests being handled right now (and the most ever seen). */
  active: number;
  maxActive: number;
  close(): Promise<void>;
}

/**
 * Upstreams here are local servers, and the origin refuses non-public addresses by default (SSRF
 * guard): every test that fetches from one sets this allow-list (FASTPULL_FETCH_ALLOW_CIDRS).
 */
export const LOOPBACK_CIDRS = ['127.0.0.0/8', '::1/128'];

export async function startUpstream(routes: Record<string, Handler> = {}, host = '127.0.0.1'): Promise<Upstream> {
  const table = new Map(Object.entries(routes));
  const hits = new Map<string, number>();
  const box: { server?: Server } = {};
  const up: Upstream = {
    url: '',
    requests: [],
    active: 0,
    maxActive: 0,
    count: (path) => up.requests.filter((r) => r.path === path).length,
    route: (path, handler) => void table.set(path, handler),
    close: () =>
      new Promise<void>((resolve) => {
        box.server!.closeAllConnections();
        box.server!.close(() => resolve());
      }),
  };
  const server = (box.server = createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0]!;
    up.requests.push({ path, headers: req.headers });
    const hit = (hits.get(path) ?? 0) + 1;
    hits.set(path, hit);
    up.active++;
    up.maxActive = Math.max(up.maxActive, up.active);
    res.on('close', () => up.active--);
    const handler = table.get(path);
    if (!handler) {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('not here');
      return;
    }
    Promise.resolve(handler(req, res, hit)).catch(() => res.destroy());
  }));
  await new Promise<void>((resolve) => server.listen(0, host, resolve));
  up.url = `http://${host}:${(server.address() as AddressInfo).port}`;
  return up;
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
export const sha512 = (b: Buffer | string) => createHash('sha512').update(b).digest('hex');
export const blake2b = (b: Buffer | string) => createHash('blake2b512').update(b).digest('hex');

/** Deterministic pseudo-random bytes: distinct content per seed, no two tests share a blob by accident. */
export function bytes(size: number, seed = 1): Buffer {
  const out = Buffer.alloc(size);
  let x = seed * 2654435761;
  for (let i = 0; i < size; i++) {
    x = (x * 1103515245 + 12345) >>> 0;
    out[i] = x >>> 24;
  }
  return out;
}

export interface ServeOptions {
  /** Honour `Range: bytes=N-` with 206 (default true). */
  ranges?: boolean;
  /** Write this many bytes, then cut the connection (only for full-body responses on these hits). */
  dropAfter?: number;
  dropOnHits?: number[];
  /** Split the body into chunks with pauses between them. */
  chunkSize?: number;
  delayMs?: number;
  /** Wait before sending headers. */
  headerDelayMs?: number;
  etag?: string;
}

/** Serves `data` the way real mirrors do (or misbehave), Range-aware. */
export function serve(data: Buffer, options: ServeOptions = {}): Handler {
  const { ranges = true, dropOnHits = [1] } = options;
  return async (req, res, hit) => {
    if (options.headerDelayMs) await sleep(options.headerDelayMs);
    let start = 0;
    const m = /^bytes=(\d+)-$/.exec(req.headers.range ?? '');
    const headers: Record<string, string | number> = { 'content-type': 'application/octet-stream' };
    if (options.etag) headers.etag = options.etag;
    if (ranges) headers['accept-ranges'] = 'bytes';
    if (ranges && m) {
      start = Number(m[1]);
      headers['content-range'] = `bytes ${start}-${data.length - 1}/${data.length}`;
      headers['content-length'] = data.length - start;
      res.writeHead(206, headers);
    } else {
      headers['content-length'] = data.length;
      res.writeHead(200, headers);
    }
    let body = data.subarray(start);
    const drop = options.dropAfter !== undefined && start === 0 && dropOnHits.includes(hit);
    if (drop) body = body.subarray(0, options.dropAfter);
    const chunk = options.chunkSize ?? body.length;
    for (let i = 0; i < body.length; i += Math.max(chunk, 1)) {
      if (res.destroyed) return;
      // No pause after the last piece: the client may count a request as done once all bytes arrived.
      if (options.delayMs && i > 0) await sleep(options.delayMs);
      if (res.destroyed) return;
      res.write(body.subarray(i, i + chunk));
    }
    if (drop) {
      // Let the bytes leave before the connection is cut, so the client really has a partial body.
      await sleep(20);
      res.destroy();
    } else {
      res.end();
    }
  };
}

export const status =
  (code: number, headers: Record<string, string> = {}): Handler =>
  (_req, res) =>
    void res.writeHead(code, headers).end(`status ${code}`);

/** Accepts the request and never answers. */
export const hang: Handler = () => new Promise<void>(() => undefined);

