import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { request, type Dispatcher } from 'undici';
import { shardedPath } from '../domain/layout.js';

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

export function normalizeOrigin(origin: string): string {
  const url = new URL(origin);
  if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new Error('--origin must be an http(s) URL');
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

type StringOptions = Record<string, { type: 'string'; default?: string }>;

/**
 * Parses the options every origin-talking command shares (--origin, --retries, --retry-delay-ms)
 * plus `extra`, requiring at least one positional and checking that `counts` are non-negative
 * integers. Returns the usage error's message instead of throwing.
 */
export function parseOriginArgs(
  args: string[],
  extra: StringOptions,
  counts: string[],
  noPositionals: string,
): { values: Record<string, string | undefined>; positionals: string[] } | { error: string } {
  try {
    const options: ParseArgsConfig['options'] = {
      origin: { type: 'string' },
      retries: { type: 'string', default: '3' },
      'retry-delay-ms': { type: 'string', default: '1000' },
      ...extra,
    };
    const { values, positionals } = parseArgs({ args, allowPositionals: true, options });
    if (positionals.length === 0) throw new Error(noPositionals);
    const strings = values as Record<string, string | undefined>;
    for (const opt of ['retries', 'retry-delay-ms', ...counts]) {
      if (!/^\d+$/.test(strings[opt]!)) throw new Error(`--${opt} must be a non-negative integer`);
    }
    return { values: strings, positionals };
  } catch (err) {
    return { error: (err as Error).message };
  }
}
