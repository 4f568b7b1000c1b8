import { request, type Dispatcher } from 'undici';
import { AddressPolicy } from '../upstream/address-guard.js';
import { createAgent } from '../upstream/fetcher.js';

/**
 * The one undici dispatcher for outbound event traffic (webhooks, CDN APIs): the upstream fetcher's
 * agent, so the outbound address guard (FASTPULL_FETCH_ALLOW_CIDRS) that applies to fetching applies here.
 */
export function createEventAgent(timeoutMs: number, allowCidrs: readonly string[]): Dispatcher {
  return createAgent(timeoutMs, timeoutMs, new AddressPolicy(allowCidrs));
}

export interface PostResult {
  status: number;
  /** From Retry-After (seconds or an HTTP date), when the answer had one. */
  retryAfterMs?: number;
  /** The start of the answer, for error messages. */
  excerpt: string;
}

const EXCERPT_BYTES = 300;

export function parseRetryAfter(value: string | string[] | undefined, now = Date.now()): number | undefined {
  const raw = Array.isArray(value) ? value[0] : value;
  if (raw === undefined) return undefined;
  if (/^\s*\d+\s*$/.test(raw)) return Number(raw) * 1000;
  const at = Date.parse(raw);
  return Number.isNaN(at) ? undefined : Math.max(0, at - now);
}

/**
 * POSTs a JSON body; the whole exchange is bounded by `timeoutMs` (a hung endpoint is a failure,
 * retried later, never a stuck dispatcher). Only the first few hundred bytes of the answer are kept.
 */
export async function postJson(
  dispatcher: Dispatcher,
  url: string,
  body: string,
  headers: Record<string, string>,
  timeoutMs: number,
  signal: AbortSignal,
): Promise<PostResult> {
  const res = await request(url, {
    method: 'POST',
    dispatcher,
    body,
    headers: { 'content-type': 'application/json', 'user-agent': 'fastpull-origin', ...headers },
    signal: AbortSignal.any([signal, AbortSignal.timeout(timeoutMs)]),
  });
  let excerpt = '';
  try {
    for await (const chunk of res.body as AsyncIterable<Buffer>) {
      excerpt += chunk.toString('utf8', 0, Math.min(chunk.length, EXCERPT_BYTES - excerpt.length));
      if (excerpt.length >= EXCERPT_BYTES) break;
    }
  } finally {
    res.body.destroy();
  }
  const retryAfterMs = parseRetryAfter(res.headers['retry-after']);
  return { status: res.statusCode, excerpt, ...(retryAfterMs !== undefined ? { retryAfterMs } : {}) };
}
