import type { FastifyReply, FastifyRequest, onRequestHookHandler } from 'fastify';
import { hasScope, type Authenticator, type Principal, type Scope } from '../auth/tokens.js';
import { AppError } from '../errors.js';

declare module 'fastify' {
  interface FastifyRequest {
    principal?: Principal;
  }
}

/**
 * onRequest hook: runs before any body is read, so an unauthenticated 4 GiB upload is refused at once.
 * Missing credentials → 401; a token we do not know → 403; a known token without the scope → 403.
 * A valid token proves the API enabled, so the common case asks the index once, not twice.
 */
export function requireScope(auth: Authenticator, scope: Scope): onRequestHookHandler {
  const disabled = () => new AppError('FORBIDDEN', 'the admin API is disabled: no FASTPULL_ADMIN_TOKEN and no tokens are configured');
  return async function checkScope(request: FastifyRequest, _reply: FastifyReply) {
    const header = request.headers.authorization;
    const match = header ? /^Bearer\s+(\S+)\s*$/i.exec(header) : null;
    if (!match) {
      if (!(await auth.enabled())) throw disabled();
      throw new AppError('UNAUTHORIZED', 'send "Authorization: Bearer <token>"');
    }
    const principal = await auth.authenticate(match[1]!);
    if (!principal) {
      if (!(await auth.enabled())) throw disabled();
      throw new AppError('FORBIDDEN', 'the token is not valid');
    }
    if (!hasScope(principal, scope)) throw new AppError('FORBIDDEN', `the token lacks the "${scope}" scope`, { scope });
    request.principal = principal;
  };
}
