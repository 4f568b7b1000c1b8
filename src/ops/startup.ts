import { constants } from 'node:fs';
import { access, mkdir } from 'node:fs/promises';
import { isIP } from 'node:net';
import path from 'node:path';

/** The server cannot start as configured (data directory unusable); the message says what to change. */
export class StartupError extends Error {}

const DENIED = new Set(['EACCES', 'EPERM', 'EROFS']);

/**
 * Before anything is created: the data directory (and what already exists in it) must be writable by
 * this process. Otherwise the first failure would be a bare `EACCES: mkdir '/data/blobs'`, which says
 * neither which user needs access nor that the Docker image runs as uid 1000.
 */
export async function assertDataDirWritable(dataDir: string): Promise<void> {
  const uid = process.getuid?.();
  try {
    await mkdir(dataDir, { recursive: true });
    for (const entry of ['', 'blobs', 'tmp', 'quarantine', 'index.sqlite']) {
      await access(path.join(dataDir, entry), constants.W_OK).catch((err: NodeJS.ErrnoException) => {
        if (err.code !== 'ENOENT') throw err;
      });
    }
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    if (!e.code || !DENIED.has(e.code)) throw err;
    throw new StartupError(
      `the data directory ${dataDir} is not writable by this process (uid ${uid ?? '?'}): ${e.code} on ${e.path ?? dataDir}. ` +
        (e.code === 'EROFS'
          ? 'It is on a read-only filesystem; mount it read-write.'
          : `Give uid ${uid ?? '?'} write access to it (the Docker image runs as uid 1000, user node: chown -R 1000:1000 the ` +
            'host directory, or use a named volume), or set FASTPULL_DATA_DIR to a directory it owns.'),
      { cause: err },
    );
  }
}

function isLoopback(host: string): boolean {
  const h = host.replace(/^\[|\]$/g, '').toLowerCase();
  if (h === 'localhost' || h === '::1') return true;
  if (isIP(h) === 4) return h.startsWith('127.');
  return h.startsWith('::ffff:127.');
}

export interface PublicListener {
  address: string;
  serves: string;
}

/**
 * Listeners bound to an address other hosts can reach, and what each serves. The quick start binds
 * every interface (a distfile origin is there to be downloaded from), so the server says at start that
 * the token-protected admin API and /metrics are reachable too, rather than leaving it implied.
 */
export function publicListeners(config: { host: string; metricsPort: number | undefined }, port: number, metricsPort: number | undefined): PublicListener[] {
  if (isLoopback(config.host)) return [];
  // The configured address, not the one the socket reports: 0.0.0.0 is exactly what the operator must see.
  const at = (p: number) => `http://${isIP(config.host) === 6 ? `[${config.host}]` : config.host}:${p}`;
  const main = config.metricsPort === undefined ? 'downloads, status page, admin API (/api/v1, token required) and /metrics' : 'downloads, status page and admin API (/api/v1, token required)';
  return [{ address: at(port), serves: main }, ...(metricsPort !== undefined ? [{ address: at(metricsPort), serves: '/metrics' }] : [])];
}
