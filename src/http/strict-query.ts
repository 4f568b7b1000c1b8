import type { FastifyRequest } from 'fastify';
import { AppError } from '../errors.js';

const READ_METHODS = new Set(['GET', 'HEAD', 'OPTIONS']);

declare module 'fastify' {
  interface FastifyContextConfig {
    /** Query parameters a write route understands; any other one, or one given twice, is refused. */
    query?: readonly string[];
  }
}

/**
 * onRequest hook for the API plugins: a write whose query string holds a parameter the route does
 * not know (`sha521=`, `SHA512=`, `sha512[]=`) or holds one twice is refused with 400 BAD_QUERY
 * before authentication reads a byte of the body. A misspelt digest would otherwise be ignored
 * and the body stored unverified. Reads stay tolerant: CDNs and browsers add cache-busters.
 * The message names the parameter, never its value (it might be a credential put in the URL).
 */
export async function strictWriteQuery(request: FastifyRequest): Promise<void> {
  if (READ_METHODS.has(request.method)) return;
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
