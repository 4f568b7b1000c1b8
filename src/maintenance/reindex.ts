import { allRows, type MaintenanceIndex } from '../db/maintenance.js';
import type { BlobStorage } from '../store/storage.js';
import { hashStored, quarantineStored, stillAbsent } from './storage-ops.js';

export interface ReindexReport {
  /** Files under blobs/ whose bytes match their name: now indexed. */
  indexed: number;
  /** Of those, rows that did not exist before. */
  added: number;
  bytes: number;
  /** Files whose bytes did not match their name: moved to quarantine. */
  quarantined: string[];
  /** Rows dropped because their blob is not on disk (their name rows go with them). */
  dropped: string[];
}

export interface ReindexHooks {
  /** Called before hashing, with the total the walk found (for a progress bar). */
  onTotal?: (files: number, bytes: number) => void;
  onBlob?: (sha512: string, size: number) => void;
}

/**
 * Rebuilds the blob table from the files alone. Every file is re-hashed: its name is only a claim.
 * New rows are pinned, because without names nothing proves a blob is unreferenced and gc
 * would otherwise delete the whole store once the grace period passed.
 */
export async function reindex(storage: BlobStorage, queries: MaintenanceIndex, hooks: ReindexHooks = {}): Promise<ReindexReport> {
  const report: ReindexReport = { indexed: 0, added: 0, bytes: 0, quarantined: [], dropped: [] };

  let files = 0;
  let totalBytes = 0;
  for await (const sha512 of storage.list()) {
    const info = await storage.stat(sha512);
    if (!info) continue;
    files++;
    totalBytes += info.size;
  }
  hooks.onTotal?.(files, totalBytes);

  for await (const sha512 of storage.list()) {
    const info = await storage.stat(sha512);
    if (!info) continue;
    const digests = await hashStored(storage, sha512);
    if (digests === undefined) continue;
    hooks.onBlob?.(sha512, info.size);
    if (digests.sha512 === sha512) {
      const existed = (await queries.blobState(sha512)) !== undefined;
      await queries.upsertFromDisk(digests, info.mtimeMs, { pinned: true });
      report.indexed++;
      report.bytes += digests.size;
      if (!existed) report.added++;
    } else {
      await queries.markQuarantined(sha512);
      await quarantineStored(storage, sha512);
      report.quarantined.push(sha512);
    }
  }

  // Rows whose blob is not stored. Re-checked with the row locked so a blob an upload placed
  // after our walk keeps its row.
  const absent: string[] = [];
  for await (const row of allRows(queries)) {
    if ((await storage.stat(row.sha512)) === undefined) absent.push(row.sha512);
  }
  for (const sha512 of absent) {
    if (await queries.deleteIfAbsent(sha512, stillAbsent(storage, sha512))) report.dropped.push(sha512);
  }
  return report;
}
