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

/** Maps filesystem failures that mean "the disk cannot take this" to a client-visible code. */
export function fromFsError(err: unknown): unknown {
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  if (code === 'ENOSPC' || code === 'EDQUOT') {
    return new AppError('INSUFFICIENT_STORAGE', 'the store has no space left for this blob');
  }
  return err;
}
