import type { Readable } from 'node:stream';
import type { BlobRef, MaintenanceIndex } from '../db/maintenance.js';
import type { BlobStorage } from '../store/storage.js';
import { hashStored, quarantineStored, storedIdentity } from './storage-ops.js';

export type VerifyOutcome =
  | { status: 'ok'; sha512: string; size: number }
  | { status: 'corrupt'; sha512: string; size: number; actualSha512: string; actualSize: number; quarantinedTo: string | undefined; names: string[] }
  | { status: 'missing'; sha512: string; size: number; names: string[] }
  /** Removed (gc) or quarantined by someone else while we looked: not ours to report. */
  | { status: 'skipped'; sha512: string; size: number };

export interface VerifyOptions {
  wrap?: (stream: Readable) => Readable | AsyncIterable<Buffer>;
}

/**
 * Re-hashes one blob and acts on the result: records verified_at, or quarantines it.
 * Abort errors (from a throttling wrapper) propagate so a scrub stops promptly.
 */
export async function verifyBlob(
  storage: BlobStorage,
  queries: MaintenanceIndex,
  ref: BlobRef,
  options: VerifyOptions = {},
  retried = false,
): Promise<VerifyOutcome> {
  const { sha512, size } = ref;
  const missing = async (): Promise<VerifyOutcome> => {
    const state = await queries.blobState(sha512);
    if (!state || state.quarantined_at !== null) return { status: 'skipped', sha512, size };
    return { status: 'missing', sha512, size, names: await queries.attachedNames(sha512) };
  };

  const before = await storedIdentity(storage, sha512);
  if (before === undefined) return missing();
  const digests = await hashStored(storage, sha512, options.wrap);
  if (digests === undefined) return missing();
  if (digests.sha512 === sha512) {
    await queries.markVerified(sha512);
    return { status: 'ok', sha512, size };
  }

  // A damaged blob of the wrong size is replaced (renamed over) by a re-upload of good bytes.
  // If the file changed under us, judge the new one instead of quarantining good bytes.
  const after = await storedIdentity(storage, sha512);
  if (after === undefined) return missing();
  if (after !== before && !retried) return verifyBlob(storage, queries, ref, options, true);

  // Index first: from this commit on, reads 404 even before the file has moved; a crash between
  // the two steps leaves a quarantined row over a file that fsck reports, never a served bad blob.
  if (!(await queries.markQuarantined(sha512))) return { status: 'skipped', sha512, size };
  const quarantinedTo = await quarantineStored(storage, sha512);
  // A re-upload whose link(2) met the damaged file (same size) skipped writing, then cleared the
  // quarantine; the file it relied on has just moved. Quarantined again, the row 404s and the
  // next re-upload (which will write, the path being free) heals it.
  if ((await queries.blobState(sha512))?.quarantined_at === null && (await storedIdentity(storage, sha512)) === undefined) {
    await queries.markQuarantined(sha512);
  }
  return {
    status: 'corrupt',
    sha512,
    size,
    actualSha512: digests.sha512,
    actualSize: digests.size,
    quarantinedTo,
    names: await queries.attachedNames(sha512),
  };
}

export interface VerifySelection {
  /** Only blobs never verified or last verified before this time (ms). */
  since?: number;
  /** A random sample of this many blobs. */
  sample?: number;
}

/** The blobs a verify run covers, paged so no statement is open while verification writes. */
export async function selectForVerify(
  queries: MaintenanceIndex,
  selection: VerifySelection,
): Promise<{ total: { blobs: number; bytes: number }; refs: AsyncIterable<BlobRef> | Iterable<BlobRef> }> {
  if (selection.sample !== undefined) {
    const refs = await queries.sample(selection.sample);
    return { total: { blobs: refs.length, bytes: refs.reduce((s, r) => s + r.size, 0) }, refs };
  }
  // Without --since every blob qualifies: nothing can have been verified after the far future.
  const cutoff = selection.since ?? Number.MAX_SAFE_INTEGER;
  return {
    total: await queries.count(cutoff),
    refs: (async function* () {
      let after = '';
      for (;;) {
        const page = await queries.page(after, cutoff, 500);
        if (page.length === 0) return;
        yield* page;
        after = page[page.length - 1]!.sha512;
      }
    })(),
  };
}
