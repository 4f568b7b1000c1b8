/**
 * The one list of error codes. Every layer throws AppError with one of these;
 * only src/http/errors.ts decides which HTTP status a code becomes.
 */
export const ERROR_CODES = [
  'BAD_REQUEST',
  'BAD_FILENAME',
  'BAD_HASH',
  'BAD_URL',
  'BAD_QUERY',
  'UNAUTHORIZED',
  'FORBIDDEN',
  'NOT_FOUND',
  'BLOB_NOT_FOUND',
  'NAME_NOT_FOUND',
  'JOB_NOT_FOUND',
  'DIGEST_MISMATCH',
  'REQUEST_TIMEOUT',
  'PAYLOAD_TOO_LARGE',
  'RANGE_NOT_SATISFIABLE',
  'PRECONDITION_FAILED',
  'RATE_LIMITED',
  'READ_ONLY',
  'INSUFFICIENT_STORAGE',
  'UPSTREAM_FAILED',
  'INTERNAL',
] as const;

export type ErrorCode = (typeof ERROR_CODES)[number];

export class AppError extends Error {
  readonly code: ErrorCode;
  readonly details: Record<string, unknown> | undefined;

  constructor(code: ErrorCode, message: string, details?: Record<string, unknown>) {
    super(message);
    this.name = 'AppError';
    this.code = code;
    this.details = details;
  }
}

export function isAppError(err: unknown): err is AppError {
  return err instanceof AppError;
}

/** True for every way "the disk is full" reaches us: the filesystem's and SQLite's (database or disk is full). */
export function isStorageFull(err: unknown): boolean {
  const code = (err as { code?: unknown } | undefined)?.code;
  return code === 'ENOSPC' || code === 'EDQUOT' || code === 'SQLITE_FULL';
}

/** Maps failures that mean "the disk cannot take this" to a client-visible code. */
export function fromFsError(err: unknown): unknown {
  if (isStorageFull(err)) return new AppError('INSUFFICIENT_STORAGE', 'the store has no space left for this write');
  return err;
}
