import type { IncomingMessage, ServerResponse } from 'node:http';
import { cutByIdleTimeout } from '../ops/timeouts.js';
import { STATUS_BY_CODE } from './errors.js';
import { redactUrl } from './redact.js';

/** What only the caller knows: who the client is, how many bytes went out, and who wrote. */
export interface RequestLogContext {
  remote: string | undefined;
  bytes: number;
  /** The token's name on an authenticated write (never the token). */
  tokenName?: string | undefined;
}

/** True when the idle timeout, not the client, ended a transfer that had not finished. */
export function timedOut(req: IncomingMessage, res: ServerResponse): boolean {
  return !res.writableFinished && cutByIdleTimeout(req.socket);
}

/**
 * The fields of the one log line per request, for fastify's routes (app.ts) and the lean download
 * path (hot-path.ts) alike, so the two can never drift apart.
 */
export function requestLogFields(req: IncomingMessage, res: ServerResponse, kind: string | undefined, ms: number, ctx: RequestLogContext) {
  const finished = res.writableFinished;
  const cut = timedOut(req, res);
  return {
    method: req.method,
    url: redactUrl(req.url ?? ''),
    // A stalled transfer the idle timeout ended is a 408 (when no answer had started), not the default 200.
    status: cut && !res.headersSent ? STATUS_BY_CODE.REQUEST_TIMEOUT : res.statusCode,
    kind,
    range: req.headers.range,
    ms: Math.round(ms * 10) / 10,
    bytes: ctx.bytes,
    remote: ctx.remote,
    ua: req.headers['user-agent'],
    ...(ctx.tokenName !== undefined ? { tokenName: ctx.tokenName } : {}),
    ...(finished ? {} : { aborted: cut ? 'idle-timeout' : true }),
  };
}
