import type { FastifyRequest, RouteOptions } from 'fastify';
import { AppError } from '../errors.js';

const WRITE_METHODS = new Set(['PUT', 'POST', 'DELETE', 'PATCH']);

declare module 'fastify' {
  interface FastifyContextConfig {
    /** Query parameters a write route understands; any other one, or one given twice, is refused. */
    query?: readonly string[];
  }
}

/**
 * onRoute hook (installed by buildApp before any route): every write route, in whatever plugin,
 * refuses a query parameter it does not declare in `config.query` (a misspelt digest such as
 * `sha521=`, `SHA512=`, `sha512[]=`) or one given twice, with 400 BAD_QUERY — as its first
 * route-level onRequest hook, before authentication and before a byte of the body is read. A
 * misspelt digest would otherwise be ignored and the body stored unverified. Reads are left alone
 * (CDNs and browsers add cache-busters) and pay nothing.
 */
export function strictQueryOnWrites(route: RouteOptions): void {
  const methods = Array.isArray(route.method) ? route.method : [route.method];
  if (!methods.some((m) => WRITE_METHODS.has(m))) return;
  const existing = route.onRequest === undefined ? [] : Array.isArray(route.onRequest) ? route.onRequest : [route.onRequest];
  route.onRequest = [strictWriteQuery, ...existing] as RouteOptions['onRequest'];
}

/** The message names the parameter, never its value (a credential may have been put in the URL). */
async function strictWriteQuery(request: FastifyRequest): Promise<void> {
  if (!WRITE_METHODS.has(request.method)) return;
  const q = request.url.indexOf('?');
  if (q === -1) return;
  const allowed = request.routeOptions.config.query ?? [];
  const seen = new Set<string>();
  for (const pair of request.url.slice(q + 1).split('&')) {
    if (pair === '') continue;
    const eq = pair.indexOf('=');
    const raw = eq === -1 ? pair : pair.slice(0, eq);
    let name: string;
    try {
      // Capped: the name goes back in the error and into the log.
      name = decodeURIComponent(raw.replace(/\+/g, ' ')).slice(0, 100);
    } catch {
      throw new AppError('BAD_QUERY', 'a query parameter name is not valid percent-encoding', { parameter: raw.slice(0, 100) });
    }
    if (!allowed.includes(name)) {
      throw new AppError(
        'BAD_QUERY',
        allowed.length === 0
          ? `unknown query parameter "${name}": this endpoint takes none`
          : `unknown query parameter "${name}": this endpoint takes ${allowed.join(', ')}`,
        { parameter: name },
      );
    }
    if (seen.has(name)) throw new AppError('BAD_QUERY', `query parameter "${name}" may be given only once`, { parameter: name });
    seen.add(name);
  }
}
