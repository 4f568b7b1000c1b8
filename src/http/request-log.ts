import type { IncomingMessage, ServerResponse } from 'node:http';
import { redactUrl } from './redact.js';

/**
 * The fields of the one log line per request, for fastify's routes (app.ts) and the lean download
 * path (hot-path.ts) alike, so the two can never drift apart.
 */
export function requestLogFields(req: IncomingMessage, res: ServerResponse, kind: string | undefined, ms: number, remote: string | undefined) {
  return {
    method: req.method,
    url: redactUrl(req.url ?? ''),
    status: res.statusCode,
    kind,
    range: req.headers.range,
    ms: Math.round(ms * 10) / 10,
    remote,
    ...(res.writableFinished ? {} : { aborted: true }),
  };
}
