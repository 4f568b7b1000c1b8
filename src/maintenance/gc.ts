import { link, rename, stat, unlink } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { DB } from '../db/open.js';
import type { BlobStore } from '../store/blob-store.js';
import type { MaintenanceQueries } from './queries.js';

export interface GcCandidate {
  sha512: string;
  size: number;
  ingestedAt: number;
  quarantined: boolean;
  /** A file under blobs/ with no index row; ingestedAt is its mtime. */
  orphan?: boolean;
}

export interface GcResult {
  removed: GcCandidate[];
  /** Selected, but a name was attached (or it was pinned or re-ingested) before we got to it. */
  kept: GcCandidate[];
  /** Removed rows whose file a concurrent re-upload needed: put back. */
  restored: string[];
}

/** Blobs no attached name references, not pinned, ingested before `cutoff` (ms). */
export function gcCandidates(queries: MaintenanceQueries, cutoff: number): GcCandidate[] {
  return queries.gcCandidates(cutoff).map((r) => ({
    sha512: r.sha512,
    size: r.size,
    ingestedAt: r.ingested_at,
    quarantined: r.quarantined_at !== null,
  }));
}

/**
 * Blob files with no index row, last written before `cutoff` (ms): left by an upload that died
 * between placing its file and recording its row, or whose row could not be written. A retry of that
 * upload (by name or by hash) records a row and so claims the file; until then nothing refers to it.
 */
export async function orphanCandidates(store: BlobStore, queries: MaintenanceQueries, cutoff: number): Promise<GcCandidate[]> {
  const out: GcCandidate[] = [];
  for await (const sha512 of store.list()) {
    if (queries.blobState(sha512) !== undefined) continue;
    const info = await stat(store.pathOf(sha512)).catch((err: unknown) => (isMissing(err) ? undefined : Promise.reject(err)));
    if (info === undefined || info.mtimeMs >= cutoff) continue;
    out.push({ sha512, size: info.size, ingestedAt: Math.floor(info.mtimeMs), quarantined: false, orphan: true });
  }
  return out;
}

function isMissing(err: unknown): boolean {
  return (err as NodeJS.ErrnoException | undefined)?.code === 'ENOENT';
}

/**
 * Default settle time: longer than the index's busy_timeout (5 s), the longest an upload that
 * deduplicated against a file can wait for the write lock before recording its row (or failing).
 */
export const GC_SETTLE_MS = 6000;

/**
 * Removes the candidates, in three phases:
 * 1. Per blob, in one write transaction: re-check it is still collectable (no name attached since
 *    the selection, not pinned, not re-ingested) and delete the row. From then on no name can be
 *    attached (attach needs the row) and downloads 404. Then rename the file out of blobs/ into
 *    tmp/ (atomic; after a crash it is a stale temp that the next start removes). The path is now
 *    free, so a re-upload of the same bytes links a fresh copy of its own.
 * 2. Wait `settleMs`. The dangerous writer is a re-upload whose link(2) hit EEXIST on the file
 *    just before phase 1 moved it: it skipped writing, and is about to record a row that points
 *    at our file. It records within busy_timeout, or fails.
 * 3. Look at each row again. If one came back, put the file back (link; EEXIST means the
 *    re-upload already placed its own copy), then unlink the moved file.
 * Unlinking right after deleting the row would leave such a re-upload's row pointing at nothing.
 */
export async function collect(
  store: BlobStore,
  db: DB,
  queries: MaintenanceQueries,
  candidates: GcCandidate[],
  cutoff: number,
  settleMs = GC_SETTLE_MS,
): Promise<GcResult> {
  const result: GcResult = { removed: [], kept: [], restored: [] };
  const deleteIfCollectable = db.transaction((candidate: GcCandidate): boolean => {
    // An orphan is still one while no upload has recorded a row for it.
    if (candidate.orphan) return queries.blobState(candidate.sha512) === undefined;
    if (!queries.gcStillCollectable(candidate.sha512, cutoff)) return false;
    return queries.deleteBlob(candidate.sha512);
  });
  const moved: { sha512: string; final: string; trash: string }[] = [];
  for (const candidate of candidates) {
    // On a full disk the deletion may need the reserve's room: gc is what gives space back.
    if (!(await store.reserve.whenFull(() => deleteIfCollectable.immediate(candidate)))) {
      result.kept.push(candidate);
      continue;
    }
    result.removed.push(candidate);
    const final = store.pathOf(candidate.sha512);
    const trash = path.join(store.tmpDir, `${process.pid}-gc-${randomBytes(8).toString('hex')}.tmp`);
    try {
      await rename(final, trash);
      moved.push({ sha512: candidate.sha512, final, trash });
    } catch (err) {
      // Quarantined blobs live in quarantine/; a file already gone has nothing to remove.
      if (!isMissing(err)) throw err;
    }
  }
  if (moved.length > 0 && settleMs > 0) await sleep(settleMs);
  for (const { sha512, final, trash } of moved) {
    if (queries.blobState(sha512) !== undefined) {
      try {
        await link(trash, final);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      }
      result.restored.push(sha512);
    }
    await unlink(trash);
  }
  // With space back, the reserve returns (and with it, uploads) if it had been used.
  await store.reserve.ensure();
  return result;
}
