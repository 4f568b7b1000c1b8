import { createHash } from 'node:crypto';
import type { Logger } from 'pino';
import type { MaintenanceIndex } from '../db/maintenance.js';
import type { BlobStorage } from '../store/storage.js';
import { verifyBlob } from './verify.js';

/** Counted like the scrub's finds (plain totals; the metrics bridge reads them). */
export const serveVerifyCounters = { bytesVerified: 0, corruptFound: 0 };

export interface ServedBlob {
  sha512: string;
  size: number;
}

/**
 * FASTPULL_VERIFY_ON_SERVE: every full body the download path sends is hashed as it streams. The check
 * runs before the last chunk is written, so a body that does not hash to its name never completes:
 * the caller destroys the connection (a CDN keeps nothing), and the blob is then judged by the very
 * code `fastpull verify` runs (re-hash from the store, quarantine, move aside), which logs what it found.
 */
export function createServeVerifier(deps: { storage: BlobStorage; maintenance: MaintenanceIndex; logger: Logger }) {
  const queries = deps.maintenance;
  const judging = new Set<string>();

  /** Re-hashes the blob from disk as `verify` would, and quarantines it if damaged. */
  const judge = (blob: ServedBlob, log: Logger, seen: string | undefined) => {
    if (judging.has(blob.sha512)) return;
    judging.add(blob.sha512);
    verifyBlob(deps.storage, queries, { sha512: blob.sha512, size: blob.size })
      .then((outcome) => {
        if (outcome.status === 'corrupt') {
          serveVerifyCounters.corruptFound++;
          log.error(
            { sha512: blob.sha512, actualSha512: outcome.actualSha512, actualSize: outcome.actualSize, quarantinedTo: outcome.quarantinedTo, names: outcome.names },
            'served blob failed verification: connection cut before the last byte, blob quarantined',
          );
        } else {
          log.error({ sha512: blob.sha512, served: seen, outcome: outcome.status }, 'served bytes did not match their hash');
        }
      })
      .catch((err: unknown) => log.error({ err, sha512: blob.sha512 }, 'verification after a bad served body failed'))
      .finally(() => judging.delete(blob.sha512));
  };

  return {
    /** A per-response chunk checker for a full body of `blob`; false on the last chunk means "do not send it". */
    body(blob: ServedBlob, log: Logger): (chunk: Buffer, last: boolean) => boolean {
      const hash = createHash('sha512');
      return (chunk, last) => {
        hash.update(chunk);
        serveVerifyCounters.bytesVerified += chunk.length;
        if (!last) return true;
        const actual = hash.digest('hex');
        if (actual === blob.sha512) return true;
        judge(blob, log, actual);
        return false;
      };
    },
    /** A small blob whose bytes (hashed on their way into memory) do not match: judge it the same way. */
    damaged(blob: ServedBlob, log: Logger, actual: string): void {
      judge(blob, log, actual);
    },
  };
}

export type ServeVerifier = ReturnType<typeof createServeVerifier>;
