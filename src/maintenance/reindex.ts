import { statSync } from 'node:fs';
import { stat } from 'node:fs/promises';
import type { DB } from '../db/open.js';
import type { BlobStore } from '../store/blob-store.js';
import type { MaintenanceQueries } from './queries.js';

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
export async function reindex(store: BlobStore, db: DB, queries: MaintenanceQueries, hooks: ReindexHooks = {}): Promise<ReindexReport> {
  const report: ReindexReport = { indexed: 0, added: 0, bytes: 0, quarantined: [], dropped: [] };

  let files = 0;
  let totalBytes = 0;
  for await (const sha512 of store.list()) {
    const info = await stat(store.pathOf(sha512)).catch(() => undefined);
    if (!info) continue;
    files++;
    totalBytes += info.size;
  }
  hooks.onTotal?.(files, totalBytes);

  for await (const sha512 of store.list()) {
    const info = await stat(store.pathOf(sha512)).catch(() => undefined);
    if (!info) continue;
    let digests;
    try {
      digests = await store.hash(sha512);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') continue;
      throw err;
    }
    hooks.onBlob?.(sha512, info.size);
    if (digests.sha512 === sha512) {
      const existed = queries.blobState(sha512) !== undefined;
      queries.upsertFromDisk(digests, info.mtimeMs, { pinned: true });
      report.indexed++;
      report.bytes += digests.size;
      if (!existed) report.added++;
    } else {
      queries.markQuarantined(sha512);
      await store.quarantine(sha512);
      report.quarantined.push(sha512);
    }
  }

  // Rows whose blob is not on disk. Re-checked under the write lock so a blob an upload linked
  // after our walk keeps its row.
  const dropIfAbsent = db.transaction((sha512: string): boolean => {
    try {
      statSync(store.pathOf(sha512));
      return false;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }
    return queries.deleteBlob(sha512);
  });
  const absent: string[] = [];
  for (const row of queries.allRows()) {
    if (await stat(store.pathOf(row.sha512)).then(() => false, () => true)) absent.push(row.sha512);
  }
  for (const sha512 of absent) if (dropIfAbsent.immediate(sha512)) report.dropped.push(sha512);
  return report;
}
