import { createHash, type Hash } from 'node:crypto';
import { Readable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { Agent, request, type Dispatcher } from 'undici';
import { ADDRESS_NOT_ALLOWED, AddressPolicy, guardedConnector } from './address-guard.js';
import { abortReason, Limiter } from './limiter.js';
import type { UpstreamStats } from './stats.js';

export type UpstreamFailure =
  | 'not-found'
  | 'client-error'
  | 'server-error'
  | 'network'
  | 'redirect'
  | 'protocol'
  | 'changed'
  | 'aborted'
  /** The address is not public and not in FASTPULL_FETCH_ALLOW_CIDRS: refused before connecting. */
  | 'not-allowed'
  /** Gave up while waiting for a free connection slot: our congestion, not the upstream's fault. */
  | 'busy';

/** Why an upstream transfer failed, in words safe to show to an operator (never a stack). */
export class UpstreamError extends Error {
  constructor(
    readonly failure: UpstreamFailure,
    message: string,
    readonly url: string,
    readonly status?: number,
  ) {
    super(message);
    this.name = 'UpstreamError';
  }

  /** Worth another attempt against the same URL. */
  get retryable(): boolean {
    return this.failure === 'server-error' || this.failure === 'network';
  }
}

export interface FetcherOptions {
  connectTimeoutMs: number;
  /** Longest wait for response headers, and longest silence inside a body. */
  idleTimeoutMs: number;
  maxRedirects: number;
  retries: number;
  concurrency: number;
  perHostConcurrency: number;
  /** First retry waits this long, doubling each time (with jitter). */
  backoffBaseMs?: number;
  backoffMaxMs?: number;
  stats?: UpstreamStats;
  /** Share one connection pool between fetchers with different limits. */
  dispatcher?: Dispatcher;
  /** For a fetcher's own pool (no `dispatcher`): non-public ranges it may reach (FASTPULL_FETCH_ALLOW_CIDRS). */
  allowCidrs?: readonly string[];
}

export interface OpenOptions {
  signal?: AbortSignal;
  retries?: number;
}

export interface UpstreamResponse {
  /** Where the bytes came from after redirects. */
  url: string;
  /** Total size when the server announced it. */
  size: number | undefined;
  /** Strong ETag of the first response, if any (another fastpull origin sends the sha512 here). */
  etag: string | undefined;
  /** The body: retries and resumes happen inside; each byte of the file is emitted exactly once. */
  body: Readable;
}

interface Opened {
  status: number;
  headers: Dispatcher.ResponseData['headers'];
  body: Dispatcher.ResponseData['body'];
  url: string;
  release: () => void;
}

const REDIRECTS = new Set([301, 302, 303, 307, 308]);
const NOT_FOUND = new Set([404, 410]);

const header = (headers: Dispatcher.ResponseData['headers'], name: string): string | undefined => {
  const v = headers[name];
  return Array.isArray(v) ? v[0] : v;
};

/** Every outbound connection goes through the address guard (see address-guard.ts). */
export function createAgent(connectTimeoutMs: number, idleTimeoutMs: number, policy: AddressPolicy): Agent {
  return new Agent({
    connect: guardedConnector(policy, { timeout: connectTimeoutMs }),
    headersTimeout: idleTimeoutMs,
    bodyTimeout: idleTimeoutMs,
    keepAliveTimeout: 4_000,
  });
}

/**
 * HTTP GET of distfiles from the outside world, with politeness limits and every failure
 * mode of real mirrors handled: retries with backoff, redirects with a cap, resumes with Range.
 */
export class Fetcher {
  readonly limiter: Limiter;
  private readonly dispatcher: Dispatcher;
  private readonly ownsDispatcher: boolean;
  private readonly backoffBaseMs: number;
  private readonly backoffMaxMs: number;

  constructor(readonly options: FetcherOptions) {
    this.limiter = new Limiter(options.concurrency, options.perHostConcurrency);
    this.ownsDispatcher = options.dispatcher === undefined;
    this.dispatcher = options.dispatcher ?? createAgent(options.connectTimeoutMs, options.idleTimeoutMs, new AddressPolicy(options.allowCidrs));
    this.backoffBaseMs = options.backoffBaseMs ?? 250;
    this.backoffMaxMs = options.backoffMaxMs ?? 10_000;
  }

  async close(): Promise<void> {
    if (this.ownsDispatcher) await this.dispatcher.destroy().catch(() => undefined);
  }

  backoff(attempt: number): number {
    const base = Math.min(this.backoffMaxMs, this.backoffBaseMs * 2 ** attempt);
    // Jitter spreads retries of many clients that failed together.
    return Math.round(base * (0.75 + Math.random() * 0.5));
  }

  /**
   * Resolves once a 200 arrived (after redirects and retries). Rejects with UpstreamError:
   * 'not-found' for 404/410, 'client-error' for other 4xx (never retried).
   */
  async open(url: string, options: OpenOptions = {}): Promise<UpstreamResponse> {
    const retries = options.retries ?? this.options.retries;
    const signal = options.signal;
    let lastError: UpstreamError | undefined;
    for (let attempt = 0; attempt <= retries; attempt++) {
      if (attempt > 0) {
        this.options.stats?.add('upstreamRetries');
        await sleep(this.backoff(attempt - 1), undefined, signal ? { signal } : {}).catch(() => {
          throw toUpstreamError(abortReason(signal!), url);
        });
      }
      let opened: Opened;
      try {
        opened = await this.request(url, {}, signal);
      } catch (err) {
        lastError = toUpstreamError(err, url);
        if (lastError.retryable && !signal?.aborted) continue;
        throw lastError;
      }
      if (opened.status === 200) {
        const length = header(opened.headers, 'content-length');
        const size = length !== undefined && /^\d+$/.test(length) ? Number(length) : undefined;
        const body = new UpstreamBody(this, opened, size, retries, signal);
        const etag = header(opened.headers, 'etag');
        return { url: opened.url, size, etag: etag && !etag.startsWith('W/') ? etag : undefined, body };
      }
      discard(opened);
      lastError = statusError(opened.status, opened.url);
      if (!lastError.retryable) throw lastError;
    }
    throw lastError!;
  }

  /** One request, following redirects; holds a limiter slot until the returned body is released. */
  async request(startUrl: string, headers: Record<string, string>, signal: AbortSignal | undefined): Promise<Opened> {
    const seen = new Set<string>();
    let url = startUrl;
    for (let hop = 0; ; hop++) {
      const parsed = parseHttpUrl(url);
      seen.add(parsed.href);
      const release = await this.limiter.acquire(parsed.host, signal).catch((err: unknown) => {
        throw signal?.aborted ? new UpstreamError('busy', 'no connection slot became free in time', parsed.href) : err;
      });
      let res: Dispatcher.ResponseData;
      try {
        this.options.stats?.add('upstreamRequests');
        res = await request(parsed, {
          dispatcher: this.dispatcher,
          method: 'GET',
          // Distfiles are stored byte for byte as served, the way wget would store them.
          headers: { 'accept-encoding': 'identity', 'user-agent': 'fastpull-origin', ...headers },
          ...(signal ? { signal } : {}),
        });
      } catch (err) {
        release();
        throw err;
      }
      const location = header(res.headers, 'location');
      if (!REDIRECTS.has(res.statusCode) || location === undefined) {
        return { status: res.statusCode, headers: res.headers, body: res.body, url: parsed.href, release };
      }
      discard({ body: res.body, release });
      let next: URL;
      try {
        next = new URL(location, parsed);
      } catch {
        throw new UpstreamError('redirect', `redirect to an invalid location`, parsed.href, res.statusCode);
      }
      if (next.protocol !== 'http:' && next.protocol !== 'https:') {
        throw new UpstreamError('redirect', `redirect to a non-http(s) URL`, parsed.href, res.statusCode);
      }
      if (seen.has(next.href)) throw new UpstreamError('redirect', 'redirect loop', startUrl, res.statusCode);
      if (hop + 1 > this.options.maxRedirects) {
        throw new UpstreamError('redirect', `more than ${this.options.maxRedirects} redirects`, startUrl, res.statusCode);
      }
      url = next.href;
    }
  }
}

function parseHttpUrl(url: string): URL {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    throw new UpstreamError('client-error', 'not a valid URL', url);
  }
  if (parsed.protocol !== 'http:' && parsed.protocol !== 'https:') {
    throw new UpstreamError('client-error', 'only http and https URLs can be fetched', url);
  }
  return parsed;
}

/** Unwanted bodies are drained briefly (keeps the connection reusable) or destroyed. */
function discard(opened: Pick<Opened, 'body' | 'release'>): void {
  opened.body.dump({ limit: 64 * 1024 }).catch(() => undefined).finally(opened.release);
}

function statusError(status: number, url: string): UpstreamError {
  if (NOT_FOUND.has(status)) return new UpstreamError('not-found', `upstream answered ${status}`, url, status);
  if (status >= 500) return new UpstreamError('server-error', `upstream answered ${status}`, url, status);
  if (status >= 400) return new UpstreamError('client-error', `upstream answered ${status}`, url, status);
  return new UpstreamError('protocol', `unexpected upstream status ${status}`, url, status);
}

export function toUpstreamError(err: unknown, url: string): UpstreamError {
  if (err instanceof UpstreamError) return err;
  const e = err as { name?: string; code?: string; message?: string } | undefined;
  // One wording for every refused address, whatever listens there: no port scanning through job reasons.
  if (e?.code === ADDRESS_NOT_ALLOWED) return new UpstreamError('not-allowed', 'address not allowed', url);
  if (e?.name === 'AbortError' || e?.code === 'UND_ERR_ABORTED' || e?.name === 'TimeoutError') {
    return new UpstreamError('aborted', 'the transfer was aborted', url);
  }
  // undici's codes are stable and say what happened without leaking anything internal.
  const code = e?.code ?? 'unknown';
  const what: Record<string, string> = {
    UND_ERR_CONNECT_TIMEOUT: 'connect timeout',
    UND_ERR_HEADERS_TIMEOUT: 'no response headers in time',
    UND_ERR_BODY_TIMEOUT: 'the body stalled',
    UND_ERR_SOCKET: 'the connection dropped',
    ECONNREFUSED: 'connection refused',
    ECONNRESET: 'connection reset',
    ENOTFOUND: 'host not found',
    EAI_AGAIN: 'DNS lookup failed',
  };
  return new UpstreamError('network', what[code] ?? `network error (${code})`, url);
}

/**
 * The body of one logical download. When the connection drops it reconnects with
 * `Range: bytes=N-` (and If-Range) and continues only on a 206 whose Content-Range starts at N;
 * when the server ignores Range and sends the whole file again, the first N bytes are read,
 * checked against what was already emitted (a running hash) and skipped, so the consumer's
 * one-pass hash sees every byte once and a file that changed meanwhile is never spliced.
 */
class UpstreamBody extends Readable {
  private current: Opened | undefined;
  private delivered = 0;
  private readonly prefix: Hash = createHash('sha256');
  private skip = 0;
  private skipHash: Hash | undefined;
  private skipExpected = '';
  private attempts = 0;
  private validator: string | undefined;
  private readonly controller = new AbortController();
  private readonly url: string;
  private readonly onExternalAbort: () => void;

  constructor(
    private readonly fetcher: Fetcher,
    first: Opened,
    private total: number | undefined,
    private readonly retries: number,
    private readonly external: AbortSignal | undefined,
  ) {
    super({ highWaterMark: 256 * 1024 });
    this.url = first.url;
    const etag = header(first.headers, 'etag');
    // Only a strong validator may guard a byte-range splice (RFC 9110 §13.1.5).
    this.validator = etag && !etag.startsWith('W/') ? etag : header(first.headers, 'last-modified');
    this.onExternalAbort = () => this.destroy(new UpstreamError('aborted', 'the transfer was aborted', this.url));
    external?.addEventListener('abort', this.onExternalAbort, { once: true });
    this.attach(first);
  }

  private attach(opened: Opened): void {
    this.current = opened;
    const body = opened.body;
    body.on('data', (chunk: Buffer) => {
      if (this.current !== opened || this.destroyed) return;
      this.onChunk(chunk, body);
    });
    body.on('end', () => {
      if (this.current !== opened || this.destroyed) return;
      this.detach();
      if (this.skip > 0 || (this.total !== undefined && this.delivered < this.total)) {
        this.retry(new UpstreamError('network', 'the body ended early', this.url));
      } else {
        this.push(null);
      }
    });
    body.on('error', (err) => {
      if (this.current !== opened || this.destroyed) return;
      this.detach();
      this.retry(toUpstreamError(err, this.url));
    });
  }

  private onChunk(chunk: Buffer, body: Opened['body']): void {
    this.fetcher.options.stats?.add('upstreamBytes', chunk.length);
    if (this.skip > 0) {
      const head = chunk.subarray(0, this.skip);
      this.skipHash!.update(head);
      this.skip -= head.length;
      if (this.skip > 0) return;
      if (this.skipHash!.digest('hex') !== this.skipExpected) {
        this.destroy(new UpstreamError('changed', 'the file changed upstream during the download', this.url));
        return;
      }
      chunk = chunk.subarray(head.length);
      if (chunk.length === 0) return;
    }
    this.delivered += chunk.length;
    this.attempts = 0;
    if (this.total !== undefined && this.delivered > this.total) {
      this.destroy(new UpstreamError('protocol', 'the body is longer than announced', this.url));
      return;
    }
    this.prefix.update(chunk);
    if (!this.push(chunk)) body.pause();
  }

  override _read(): void {
    this.current?.body.resume();
  }

  private detach(): void {
    const opened = this.current;
    this.current = undefined;
    if (!opened) return;
    if (!opened.body.destroyed) opened.body.destroy();
    opened.release();
  }

  private retry(err: UpstreamError): void {
    if (!err.retryable || this.attempts >= this.retries || this.external?.aborted) {
      this.destroy(err);
      return;
    }
    this.attempts++;
    this.fetcher.options.stats?.add('upstreamResumes');
    this.reconnect(err).catch((e: unknown) => this.retry(toUpstreamError(e, this.url)));
  }

  private async reconnect(cause: UpstreamError): Promise<void> {
    await sleep(this.fetcher.backoff(this.attempts - 1), undefined, { signal: this.controller.signal });
    if (this.destroyed) return;
    const from = this.delivered;
    const headers: Record<string, string> = {};
    if (from > 0) {
      headers.range = `bytes=${from}-`;
      if (this.validator) headers['if-range'] = this.validator;
    }
    const opened = await this.fetcher.request(this.url, headers, this.controller.signal);
    if (this.destroyed) {
      discard(opened);
      return;
    }
    if (opened.status === 206 && from > 0) {
      const range = /^bytes (\d+)-(\d+)\/(\d+|\*)$/.exec(header(opened.headers, 'content-range') ?? '');
      const total = range && range[3] !== '*' ? Number(range[3]) : undefined;
      if (!range || Number(range[1]) !== from || (this.total !== undefined && total !== this.total)) {
        discard(opened);
        throw new UpstreamError('protocol', 'the resumed response does not continue where the drop happened', this.url, 206);
      }
      this.total ??= total;
      this.attach(opened);
      return;
    }
    if (opened.status === 200) {
      const length = header(opened.headers, 'content-length');
      const total = length !== undefined && /^\d+$/.test(length) ? Number(length) : undefined;
      if (this.total !== undefined && total !== undefined && total !== this.total) {
        discard(opened);
        throw new UpstreamError('changed', 'the file changed upstream during the download', this.url, 200);
      }
      this.total ??= total;
      if (from > 0) {
        this.skip = from;
        this.skipHash = createHash('sha256');
        this.skipExpected = this.prefix.copy().digest('hex');
      }
      this.attach(opened);
      return;
    }
    discard(opened);
    const err = statusError(opened.status, this.url);
    // A 404 in the middle of a transfer is not the file's verdict; the earlier cause is more telling.
    throw err.retryable ? err : new UpstreamError(err.failure, `${cause.message}; resuming: ${err.message}`, this.url, err.status);
  }

  override _destroy(err: Error | null, callback: (error?: Error | null) => void): void {
    this.controller.abort();
    this.external?.removeEventListener('abort', this.onExternalAbort);
    this.detach();
    callback(err);
  }
}
