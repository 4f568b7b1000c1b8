import { pino, type Logger } from 'pino';

/** JSON logs; anything that might hold a credential is redacted even if a caller logs it by mistake. */
export function createLogger(level: string): Logger {
  return pino({
    level,
    redact: {
      paths: ['req.headers.authorization', 'headers.authorization', 'authorization', 'token', '*.token', 'secret'],
      censor: '[redacted]',
    },
  });
}
