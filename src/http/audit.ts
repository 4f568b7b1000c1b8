import type { FastifyInstance, FastifyReply, FastifyRequest, RouteOptions } from 'fastify';
import type { AuditArea } from '../db/audit.js';
import { isPromise } from '../db/awaitable.js';

declare module 'fastify' {
  interface FastifyRequest {
    auditSha512?: string;
  }
}

const SAFE = new Set(['GET', 'HEAD', 'OPTIONS']);
const SHA512_FIELD = /"sha512":"([0-9a-f]{128})"/;

type Hook = (request: FastifyRequest, reply: FastifyReply, ...rest: never[]) => unknown;

function appendHook(route: RouteOptions, name: 'onSend' | 'onResponse', hook: Hook): void {
  const current = route[name] as Hook | Hook[] | undefined;
  (route as unknown as Record<string, Hook[]>)[name] = current === undefined ? [hook] : Array.isArray(current) ? [...current, hook] : [current, hook];
}

function bodyFilename(body: unknown): string | undefined {
  const f = body && typeof body === 'object' ? (body as Record<string, unknown>).filename : undefined;
  return typeof f === 'string' ? f : undefined;
}

/**
 * Records every authenticated write (upload, link, deletion, job…) with the token name in
 * audit_log. Hooks are attached only to routes that accept a write method, so downloads run
 * no audit code at all. Must be installed before routes are registered.
 */
export function installAudit(app: FastifyInstance, audit: AuditArea): void {
  app.addHook('onRoute', (route) => {
    const methods = Array.isArray(route.method) ? route.method : [route.method];
    if (methods.every((m) => SAFE.has(m))) return;
    const action = (method: string) => `${method} ${route.url}`;

    // An upload by name answers with the stored hash, which no request field carries.
    appendHook(route, 'onSend', async (request: FastifyRequest, reply: FastifyReply, payload: unknown) => {
      if (request.principal && reply.statusCode < 300 && typeof payload === 'string') {
        const m = SHA512_FIELD.exec(payload);
        if (m) request.auditSha512 = m[1];
      }
      return payload;
    });
    appendHook(route, 'onResponse', async (request: FastifyRequest, reply: FastifyReply) => {
      if (!request.principal || SAFE.has(request.method)) return;
      const params = (request.params ?? {}) as Record<string, string | undefined>;
      try {
        const recorded = audit.record({
          actor: request.principal.name,
          action: action(request.method),
          status: reply.statusCode,
          filename: params.filename ?? bodyFilename(request.body) ?? null,
          sha512: params.sha512 ?? request.auditSha512 ?? null,
          detail: request.errorCode ?? null,
        });
        if (isPromise(recorded)) await recorded;
      } catch (err) {
        request.log.error({ err }, 'could not write the audit record');
      }
    });
  });
}
