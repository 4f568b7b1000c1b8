import { readdir } from 'node:fs/promises';
import { allRows, type MaintenanceIndex } from '../db/maintenance.js';
import type { BlobStorage } from '../store/storage.js';
import { hashStored, localStoreOf, quarantineStored, stillAbsent } from './storage-ops.js';

export type FsckIssueKind =
  /** A blob file with no index row. */
  | 'unindexed-blob'
  /** A file under blobs/ whose bytes do not hash to its name. */
  | 'misnamed-blob'
  /** An index row (not quarantined) whose file is gone. */
  | 'missing-blob'
  /** An index row whose file has another size: damaged. */
  | 'size-mismatch'
  /** A quarantined row whose file is still (or again) in the serving tree. */
  | 'quarantined-present'
  /** A temp file no running upload owns. */
  | 'stale-temp';

export interface FsckIssue {
  kind: FsckIssueKind;
  /** sha512 for blob issues, the file name for temps. */
  subject: string;
  detail: string;
  repaired: boolean;
  /** What --repair did (or would do). */
  action: string;
}

export interface FsckReport {
  blobsOnDisk: number;
  rows: number;
  tempsInFlight: number;
  issues: FsckIssue[];
}

const ORPHAN_RULE = 'not pinned: gc reclaims it after the grace period unless a name or a hash upload claims it';
const ORPHAN_ACTION = `re-hash and index it as an orphan (${ORPHAN_RULE})`;
const ORPHAN_DONE = `indexed as an orphan (${ORPHAN_RULE})`;

/** Reconciles the store and the index both ways; temp files are a local-disk concept (a bucket's are swept at start). */
export async function fsck(storage: BlobStorage, queries: MaintenanceIndex, options: { repair: boolean }): Promise<FsckReport> {
  const { repair } = options;
  const report: FsckReport = { blobsOnDisk: 0, rows: 0, tempsInFlight: 0, issues: [] };
  const add = (issue: FsckIssue) => report.issues.push(issue);

  // Store → index.
  for await (const sha512 of storage.list()) {
    report.blobsOnDisk++;
    const info = await storage.stat(sha512);
    if (info === undefined) continue; // removed (gc, quarantine) since it was listed
    const row = await queries.blobState(sha512);
    if (row && row.quarantined_at === null) {
      if (row.size !== info.size) {
        let repaired = false;
        if (repair && (await queries.markQuarantined(sha512))) {
          await quarantineStored(storage, sha512);
          repaired = true;
        }
        add({
          kind: 'size-mismatch',
          subject: sha512,
          detail: `index says ${row.size} bytes, file has ${info.size}`,
          repaired,
          action: 'quarantine (404 until re-uploaded)',
        });
      }
      continue;
    }
    if (row === undefined) {
      // An upload links its file just before it records the row: hashing takes a moment, so by the
      // time we judge, an in-flight upload has long recorded it.
      const digests = repair ? await hashStored(storage, sha512) : undefined;
      if ((await queries.blobState(sha512)) !== undefined) continue;
      if (!repair) {
        add({ kind: 'unindexed-blob', subject: sha512, detail: `${info.size} bytes on disk, no index row`, repaired: false, action: ORPHAN_ACTION });
        continue;
      }
      if (digests === undefined) continue;
      if (digests.sha512 === sha512) {
        // An upload that died between placing its file and recording its row, or whose row could not
        // be written: its client saw an error and will retry. Aged from the file, so gc reclaims it
        // after the grace period unless that retry (a name or a hash upload) or a link claims it.
        await queries.upsertFromDisk(digests, info.mtimeMs, { pinned: false });
        add({ kind: 'unindexed-blob', subject: sha512, detail: `${info.size} bytes on disk, no index row`, repaired: true, action: ORPHAN_DONE });
      } else {
        await quarantineStored(storage, sha512);
        add({ kind: 'misnamed-blob', subject: sha512, detail: `bytes hash to ${digests.sha512}`, repaired: true, action: 'moved to quarantine' });
      }
      continue;
    }
    // Quarantined row, file still in blobs/: a crash between marking and moving, or a re-upload that
    // deduplicated against the damaged file. Only the bytes can tell which.
    if (!repair) {
      add({ kind: 'quarantined-present', subject: sha512, detail: 'quarantined in the index but still under blobs/', repaired: false, action: 're-hash: clear the quarantine if good, else move the file to quarantine' });
      continue;
    }
    const digests = await hashStored(storage, sha512);
    if (digests === undefined) continue;
    if (digests.sha512 === sha512) {
      await queries.clearQuarantine(sha512);
      await queries.markVerified(sha512);
      add({ kind: 'quarantined-present', subject: sha512, detail: 'quarantined in the index but still under blobs/', repaired: true, action: 'bytes are good: quarantine cleared, servable again' });
    } else {
      await quarantineStored(storage, sha512);
      add({ kind: 'quarantined-present', subject: sha512, detail: 'quarantined in the index but still under blobs/', repaired: true, action: 'bytes are bad: moved to quarantine' });
    }
  }

  // Index → store.
  for await (const row of allRows(queries)) {
    report.rows++;
    if (row.quarantined_at !== null) continue;
    if ((await storage.stat(row.sha512)) !== undefined) continue;
    // Re-checked with the row locked: a re-upload that put the blob back meanwhile wins.
    const repaired = repair ? await queries.markQuarantinedIfAbsent(row.sha512, stillAbsent(storage, row.sha512)) : false;
    if (repair && !repaired && (await queries.blobState(row.sha512))?.quarantined_at === null) continue; // blob is back
    add({
      kind: 'missing-blob',
      subject: row.sha512,
      detail: `indexed (${row.size} bytes${namesSuffix(await queries.attachedNames(row.sha512))}) but not on disk`,
      repaired,
      action: 'mark quarantined: 404 until re-uploaded, name history kept',
    });
  }

  const store = localStoreOf(storage);
  if (!store) return report;
  // Temps.
  for (const temp of await store.temps()) {
    if (temp.stale) add({ kind: 'stale-temp', subject: temp.name, detail: 'temp file owned by no running upload', repaired: false, action: 'delete' });
    else report.tempsInFlight++;
  }
  if (repair && report.issues.some((i) => i.kind === 'stale-temp')) {
    await store.removeStaleTemps();
    const left = new Set(await readdir(store.tmpDir));
    for (const issue of report.issues) if (issue.kind === 'stale-temp') issue.repaired = !left.has(issue.subject);
  }
  return report;
}

function namesSuffix(names: string[]): string {
  return names.length > 0 ? `, names ${names.join(', ')}` : '';
}
