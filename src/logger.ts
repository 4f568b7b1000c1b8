import { pino, type Logger } from 'pino';

/**
 * JSON logs; anything that might hold a credential is redacted even if a caller logs it by mistake.
 * One line per request means one write(2) per request with pino's default synchronous stdout; the
 * buffered destination batches lines (4 KiB, or whatever is pending every 250 ms, so a quiet server
 * still shows its lines promptly) and pino flushes it on exit.
 */
export function createLogger(level: string): Logger {
  return pino(
    {
      level,
      redact: {
        paths: ['req.headers.authorization', 'headers.authorization', 'authorization', 'token', '*.token', 'secret'],
        censor: '[redacted]',
      },
    },
    pino.destination({ dest: 1, sync: false, minLength: 4096, periodicFlush: 250 }),
  );
}
