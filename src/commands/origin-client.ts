import { setTimeout as sleep } from 'node:timers/promises';
import { request, type Dispatcher } from 'undici';
import { shardedPath } from '../domain/layout.js';
import { intOption, UsageError } from './args.js';

/** The spider side of the upload API: HEAD by hash, link, upload; retried where a retry can help. */

export interface RetryPolicy {
  retries: number;
  /** First backoff; doubled per attempt, with jitter so many clients do not retry in step. */
  baseDelayMs: number;
  onRetry?: (what: string, attempt: number, reason: string) => void;
}

/** A 4xx: the request itself is wrong (bad token, digest mismatch); repeating it cannot help. */
export class ClientError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly code?: string,
  ) {
    super(message);
  }
}

export interface Answer {
  status: number;
  headers: Dispatcher.ResponseData['headers'];
  json: Record<string, unknown> | undefined;
}

/** Retries network errors and 5xx; returns 2xx and the 4xx listed in `accept`; throws ClientError otherwise. */
export async function withRetries(
  what: string,
  policy: RetryPolicy,
  send: () => Promise<Dispatcher.ResponseData>,
  accept: number[] = [],
): Promise<Answer> {
  for (let attempt = 0; ; attempt++) {
    let reason: string;
    try {
      const res = await send();
      // Every body is consumed, or undici keeps the connection busy.
      const text = await res.body.text();
      let json: Record<string, unknown> | undefined;
      try {
        json = text ? (JSON.parse(text) as Record<string, unknown>) : undefined;
      } catch {
        json = undefined;
      }
      if ((res.statusCode >= 200 && res.statusCode < 300) || accept.includes(res.statusCode)) {
        return { status: res.statusCode, headers: res.headers, json };
      }
      const message = typeof json?.message === 'string' ? json.message : text.slice(0, 200) || `HTTP ${res.statusCode}`;
      if (res.statusCode < 500) {
        throw new ClientError(res.statusCode, `${what}: HTTP ${res.statusCode}: ${message}`, json?.error as string | undefined);
      }
      reason = `HTTP ${res.statusCode}: ${message}`;
    } catch (err) {
      if (err instanceof ClientError) throw err;
      const e = err as NodeJS.ErrnoException & { cause?: NodeJS.ErrnoException };
      reason = e.cause?.code ?? e.code ?? e.message;
    }
    if (attempt >= policy.retries) throw new Error(`${what}: ${reason} (gave up after ${attempt + 1} attempts)`);
    policy.onRetry?.(what, attempt + 1, reason);
    const delay = policy.baseDelayMs * 2 ** attempt;
    await sleep(delay / 2 + Math.random() * (delay / 2));
  }
}

/** `--origin` as typed, checked: an address without a scheme gets a message saying so, not "Invalid URL". */
export function normalizeOrigin(origin: string): string {
  if (!/^[a-z][a-z0-9+.-]*:\/\//i.test(origin)) {
    throw new UsageError(`--origin "${origin}" has no scheme: write http://${origin} or https://${origin}`);
  }
  let url: URL;
  try {
    url = new URL(origin);
  } catch {
    throw new UsageError(`--origin "${origin}" is not a valid URL`);
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new UsageError(`--origin must be an http:// or https:// URL, not ${url.protocol}//`);
  return url.href.replace(/\/+$/, '');
}

/** HEAD on the content-hash path: the origin has the blob when it answers 200 with the expected size. */
export async function originHas(
  origin: string,
  sha512: string,
  policy: RetryPolicy,
): Promise<{ present: boolean; size: number | undefined }> {
  const answer = await withRetries(
    `HEAD ${sha512.slice(0, 16)}…`,
    policy,
    () => request(`${origin}/distfiles/${shardedPath(sha512)}`, { method: 'HEAD' }),
    [404],
  );
  const length = answer.headers['content-length'];
  const size = typeof length === 'string' ? Number(length) : undefined;
  return { present: answer.status === 200, size };
}

/** Options every origin-talking command (push, coverage) shares. */
export const ORIGIN_OPTIONS = {
  origin: { type: 'string' },
  retries: { type: 'string' },
  'retry-delay-ms': { type: 'string' },
} as const;

export const ORIGIN_USAGE = `  --origin URL          the origin (default FASTPULL_ORIGIN), with its scheme: https://origin.example
  --retries N           retries of a request after a network error or a 5xx, with backoff (default 3)
  --retry-delay-ms MS   first backoff; doubled on each retry, with jitter (default 1000)`;

/** The origin (flag, else FASTPULL_ORIGIN) and the retry policy; throws UsageError for bad values. */
export function originSettings(
  values: { origin?: string | undefined; retries?: string | undefined; 'retry-delay-ms'?: string | undefined },
  configOrigin: string | undefined,
  onRetry: RetryPolicy['onRetry'],
): { origin: string; policy: RetryPolicy } {
  const retries = intOption(values.retries ?? '3', 'retries', 0, 100);
  const baseDelayMs = intOption(values['retry-delay-ms'] ?? '1000', 'retry-delay-ms', 0);
  const text = values.origin ?? configOrigin;
  if (!text) throw new UsageError('no origin (--origin or FASTPULL_ORIGIN)');
  return { origin: normalizeOrigin(text), policy: { retries, baseDelayMs, ...(onRetry ? { onRetry } : {}) } };
}
