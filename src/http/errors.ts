import type { FastifyError, FastifyReply, FastifyRequest } from 'fastify';
import { AppError, fromFsError, isAppError, type ErrorCode } from '../errors.js';
import { cutByIdleTimeout } from '../ops/timeouts.js';

/** The one mapping from error code to HTTP status. */
export const STATUS_BY_CODE: Record<ErrorCode, number> = {
  BAD_REQUEST: 400,
  BAD_FILENAME: 400,
  BAD_HASH: 400,
  BAD_URL: 400,
  BAD_QUERY: 400,
  UNAUTHORIZED: 401,
  FORBIDDEN: 403,
  NOT_FOUND: 404,
  BLOB_NOT_FOUND: 404,
  NAME_NOT_FOUND: 404,
  JOB_NOT_FOUND: 404,
  REQUEST_TIMEOUT: 408,
  PAYLOAD_TOO_LARGE: 413,
  PRECONDITION_FAILED: 412,
  RANGE_NOT_SATISFIABLE: 416,
  DIGEST_MISMATCH: 422,
  RATE_LIMITED: 429,
  INTERNAL: 500,
  UPSTREAM_FAILED: 502,
  READ_ONLY: 503,
  INSUFFICIENT_STORAGE: 507,
};

const CODE_BY_FRAMEWORK_STATUS: Record<number, ErrorCode> = {
  400: 'BAD_REQUEST',
  401: 'UNAUTHORIZED',
  403: 'FORBIDDEN',
  404: 'NOT_FOUND',
  413: 'PAYLOAD_TOO_LARGE',
  415: 'BAD_REQUEST',
  429: 'RATE_LIMITED',
};

/** Turns anything thrown into a client-safe AppError; 5xx never carry internals. */
export function toAppError(err: unknown): AppError {
  if (isAppError(err)) return err;
  // A full disk (ENOSPC, SQLite's "database or disk is full") is 507 wherever it surfaces.
  const full = fromFsError(err);
  if (isAppError(full)) return full;
  const fe = err as Partial<FastifyError> | undefined;
  if (fe?.validation) return new AppError('BAD_REQUEST', fe.message ?? 'invalid request');
  const status = fe?.statusCode;
  if (status !== undefined && status >= 400 && status < 500) {
    return new AppError(CODE_BY_FRAMEWORK_STATUS[status] ?? 'BAD_REQUEST', fe?.message ?? 'bad request');
  }
  return new AppError('INTERNAL', 'internal error');
}

export function sendError(
  request: FastifyRequest,
  reply: FastifyReply,
  err: unknown,
  options: { notFoundMaxAge?: number } = {},
): FastifyReply {
  const appError = toAppError(err);
  const status = STATUS_BY_CODE[appError.code];
  // A client that hung up mid-upload is not a server failure; the request line records the abort.
  const clientGone = request.raw.destroyed && !request.raw.complete;
  if (clientGone && cutByIdleTimeout(request.raw.socket)) request.log.info({ aborted: 'idle-timeout' }, 'request cut by the idle timeout');
  else if (clientGone) request.log.info({ code: (err as NodeJS.ErrnoException | undefined)?.code }, 'client closed the connection');
  else if (status >= 500) request.log.error({ err }, 'request failed');
  else if (appError.code === 'INTERNAL') request.log.warn({ err }, 'request failed');
  const cacheable404 = status === 404 && options.notFoundMaxAge !== undefined;
  reply.header('cache-control', cacheable404 ? `public, max-age=${options.notFoundMaxAge}` : 'no-store');
  // A rejected upload may still be streaming: closing the connection stops us reading gigabytes we will discard.
  if (!request.raw.complete && request.method !== 'GET' && request.method !== 'HEAD') reply.header('connection', 'close');
  if (status === 401) reply.header('www-authenticate', 'Bearer');
  const body: Record<string, unknown> = { error: appError.code, message: appError.message, ...appError.details };
  reply.code(status).type('application/json; charset=utf-8');
  return reply.send(request.method === 'HEAD' ? undefined : body);
}
