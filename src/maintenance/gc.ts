import { setTimeout as sleep } from 'node:timers/promises';
import type { MaintenanceIndex } from '../db/maintenance.js';
import { isPromise, type Awaitable } from '../db/awaitable.js';
import type { BlobStorage, TrashedBlob } from '../store/storage.js';
import { localStoreOf } from './storage-ops.js';

export interface GcCandidate {
  sha512: string;
  size: number;
  ingestedAt: number;
  quarantined: boolean;
  /** A stored blob with no index row; ingestedAt is when it was written. */
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
export async function gcCandidates(queries: MaintenanceIndex, cutoff: number): Promise<GcCandidate[]> {
  return (await queries.gcCandidates(cutoff)).map((r) => ({
    sha512: r.sha512,
    size: r.size,
    ingestedAt: r.ingested_at,
    quarantined: r.quarantined_at !== null,
  }));
}

/**
 * Stored blobs with no index row, last written before `cutoff` (ms): left by an upload that died
 * between placing its blob and recording its row, or whose row could not be written. A retry of that
 * upload (by name or by hash) records a row and so claims the blob; until then nothing refers to it.
 * The listing is paged (S3 answers a thousand keys a request).
 */
export async function orphanCandidates(storage: BlobStorage, queries: MaintenanceIndex, cutoff: number): Promise<GcCandidate[]> {
  const out: GcCandidate[] = [];
  for await (const sha512 of storage.list()) {
    if ((await queries.blobState(sha512)) !== undefined) continue;
    const info = await storage.stat(sha512);
    if (info === undefined || info.mtimeMs >= cutoff) continue;
    out.push({ sha512, size: info.size, ingestedAt: Math.floor(info.mtimeMs), quarantined: false, orphan: true });
  }
  return out;
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
 *    attached (attach needs the row) and downloads 404. Then move the blob to the store's trash
 *    (on disk: a rename into tmp/, which after a crash is a stale temp the next start removes; in a
 *    bucket: trash/gc/, swept the same way). The hash is now free, so a re-upload of the same bytes
 *    places a fresh copy of its own.
 * 2. Wait `settleMs`. The dangerous writer is a re-upload whose link(2) hit EEXIST on the file
 *    just before phase 1 moved it: it skipped writing, and is about to record a row that points
 *    at our file. It records within busy_timeout, or fails.
 * 3. Look at each row again. If one came back, restore the blob (unless the re-upload already
 *    placed its own copy), else purge it from the trash.
 * Unlinking right after deleting the row would leave such a re-upload's row pointing at nothing.
 */
export async function collect(
  storage: BlobStorage,
  queries: MaintenanceIndex,
  candidates: GcCandidate[],
  cutoff: number,
  settleMs = GC_SETTLE_MS,
): Promise<GcResult> {
  const result: GcResult = { removed: [], kept: [], restored: [] };
  // Full-disk headroom is a local-disk concept: a bucket has no reserve file to give back.
  const reserve = localStoreOf(storage)?.reserve;
  const deleteIfCollectable = (candidate: GcCandidate): Awaitable<boolean> => {
    // An orphan is still one while no upload has recorded a row for it.
    if (!candidate.orphan) return queries.deleteIfCollectable(candidate.sha512, cutoff);
    const state = queries.blobState(candidate.sha512);
    return isPromise(state) ? state.then((s) => s === undefined) : state === undefined;
  };
  const moved: TrashedBlob[] = [];
  for (const candidate of candidates) {
    // On a full disk the deletion may need the reserve's room: gc is what gives space back.
    const deleted = reserve ? await reserve.whenFull(() => deleteIfCollectable(candidate)) : await deleteIfCollectable(candidate);
    if (!deleted) {
      result.kept.push(candidate);
      continue;
    }
    result.removed.push(candidate);
    // Quarantined blobs live in the quarantine; one already gone has nothing to remove.
    const trashed = await storage.trash(candidate.sha512, 'gc');
    if (trashed) moved.push(trashed);
  }
  if (moved.length > 0 && settleMs > 0) await sleep(settleMs);
  for (const trashed of moved) {
    if ((await queries.blobState(trashed.sha512)) !== undefined) {
      await storage.restore(trashed);
      result.restored.push(trashed.sha512);
    } else {
      await storage.purge(trashed);
    }
  }
  // With space back, the reserve returns (and with it, uploads) if it had been used.
  await reserve?.ensure();
  return result;
}
