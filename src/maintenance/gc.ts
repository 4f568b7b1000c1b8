import { link, rename, unlink } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import type { DB } from '../db/open.js';
import type { BlobStore } from '../store/blob-store.js';
import type { MaintenanceQueries } from './queries.js';

export interface GcCandidate {
  sha512: string;
  size: number;
  ingestedAt: number;
  quarantined: boolean;
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

function isMissing(err: unknown): boolean {
  return (err as NodeJS.ErrnoException | undefined)?.code === 'ENOENT';
}

/**
 * Removes the candidates. Per blob:
 * 1. In one write transaction: re-check it is still collectable (no name attached since the
 *    selection, not pinned, not re-ingested) and delete the row. From then on no name can be
 *    attached (attach needs the row), and downloads 404.
 * 2. Rename the file out of blobs/ into tmp/ (atomic; a crash leaves a stale temp that init removes).
 *    The path is now free: a re-upload of the same bytes links a fresh copy there.
 * 3. Look at the row again. A re-upload that deduplicated against the file just before step 2
 *    (its link saw EEXIST) records its row after step 1; if that row exists now, link the file
 *    back (EEXIST: the re-upload already put its own copy in place). Only then unlink.
 * Unlinking straight after step 1 would leave that re-upload's row pointing at nothing.
 * The remaining window, an upload stalled between its link and its row past step 3, needs the
 * ingest side to check the file after recording it.
 */
export async function collect(store: BlobStore, db: DB, queries: MaintenanceQueries, candidates: GcCandidate[], cutoff: number): Promise<GcResult> {
  const result: GcResult = { removed: [], kept: [], restored: [] };
  const deleteIfCollectable = db.transaction((sha512: string): boolean => {
    if (!queries.gcStillCollectable(sha512, cutoff)) return false;
    return queries.deleteBlob(sha512);
  });
  for (const candidate of candidates) {
    if (!deleteIfCollectable.immediate(candidate.sha512)) {
      result.kept.push(candidate);
      continue;
    }
    const final = store.pathOf(candidate.sha512);
    const trash = path.join(store.tmpDir, `${process.pid}-gc-${randomBytes(8).toString('hex')}.tmp`);
    let moved = true;
    try {
      await rename(final, trash);
    } catch (err) {
      if (!isMissing(err)) throw err;
      moved = false; // quarantined blobs live elsewhere; a missing file has nothing to remove
    }
    if (moved) {
      if (queries.blobState(candidate.sha512) !== undefined) {
        try {
          await link(trash, final);
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
        }
        result.restored.push(candidate.sha512);
      }
      await unlink(trash);
    }
    result.removed.push(candidate);
  }
  return result;
}
