import { createReadStream } from 'node:fs';
import { statfs } from 'node:fs/promises';
import type { NameIndex } from '../db/index.js';
import { AppError, isAppError } from '../errors.js';
import { compareDigests, type Digests, type ExpectedDigests, type Mismatch } from '../store/digests.js';
import type { BlobStorage } from '../store/storage.js';
import type { DistEntry, ManifestSet } from './manifest.js';
import type { Candidate, TreeNote, TreeScan } from './tree.js';

export type Outcome = 'imported' | 'present' | 'corrupt' | 'failed';

export interface ImportOptions {
  /** Hard-link verified files into the store instead of copying them. */
  link?: boolean;
  manifests?: ManifestSet;
  /** Files verified at once (hashing is CPU-bound; the machine's cores are the natural limit). */
  jobs?: number;
  /** Skip the resume shortcut and re-hash every file, even ones the index already has. */
  rehash?: boolean;
  /** Recorded as `attached_by` for every name this import attaches. */
  by?: string;
  /** A copy that would leave less free space than this on the store's filesystem stops the import. */
  minFreeBytes?: number;
  /** Aborting stops handing out files; those in progress finish, and the summary covers what was done. */
  signal?: AbortSignal;
  onBytes?: (n: number) => void;
  /** `bytesRead`: how much of the file was read (less than its size when it was skipped or failed early). */
  onFile?: (candidate: Candidate, outcome: Outcome, reason: string | undefined, bytesRead: number) => void;
}

export interface ImportSummary {
  files: number;
  bytes: number;
  /** Files dealt with, whatever the outcome; less than `files` when the run stopped early. */
  processed: number;
  imported: number;
  present: number;
  linked: number;
  /** Names attached from Manifest entries to blobs stored by hash only. */
  namesAttached: number;
  /** Manifest entries whose file is neither in the tree nor already stored. */
  manifestMissing: DistEntry[];
  problems: TreeNote[];
  /** Why the run stopped before the end of the tree (interrupted, disk full); undefined when it finished. */
  stopped?: string;
}

const short = (hex: string) => `${hex.slice(0, 16)}…`;

function describeMismatches(mismatches: Mismatch[], claimSource: string): string {
  return mismatches
    .map((m) => {
      const show = (v: string | number) => (typeof v === 'string' && v.length > 20 ? short(v) : String(v));
      return `${m.field} is ${show(m.actual)}, ${claimSource} says ${show(m.expected)}`;
    })
    .join('; ');
}

/**
 * Where an import puts verified bytes: the local BlobStore (hard links possible, free space checked on its
 * filesystem) or any BlobStorage through `storageImportTarget`.
 */
export interface ImportTarget {
  importFile(
    source: string,
    options: { expected?: ExpectedDigests; link?: boolean; onBytes?: (n: number) => void },
  ): Promise<{ digests: Digests; created: boolean; linked: boolean }>;
  sizeOf(sha512: string): Promise<number | undefined>;
  /** The directory whose filesystem a copy must leave `minFreeBytes` on; undefined for an object store. */
  readonly root?: string | undefined;
}

/** Any BlobStorage (a bucket) as an import target: every file is copied (streamed, verified), never linked. */
export function storageImportTarget(storage: BlobStorage): ImportTarget {
  return {
    root: undefined,
    async importFile(source, { expected = {}, onBytes }) {
      const counted = async function* (stream: AsyncIterable<Buffer>): AsyncGenerator<Buffer> {
        for await (const chunk of stream) {
          onBytes?.(chunk.length);
          yield chunk;
        }
      };
      const result = await storage.write(counted(createReadStream(source, { highWaterMark: 1024 * 1024 })), { expected });
      return { ...result, linked: false };
    },
    async sizeOf(sha512) {
      return (await storage.stat(sha512))?.size;
    },
  };
}

/**
 * Bulk import of a scanned tree into the store and index (the import counterpart of Ingest).
 *
 * Resume rule (what a re-run skips without reading bytes):
 * - a named file whose name currently resolves, in the index, to a stored, unquarantined blob of the
 *   same size (and to the Manifest's sha512 when a Manifest names it);
 * - a hash-addressed file (content-hash path, BLOS) whose sha512 is indexed, unquarantined and on
 *   disk with the file's size.
 * Both are safe because the index only ever records a blob after its bytes were verified and made
 * durable, so an interrupted run leaves either a complete, verified entry or nothing (stale temp files
 * are removed on the next start). The one thing the shortcut cannot see is a named source file replaced
 * by different bytes of exactly the same size; `--rehash` covers that.
 */
export class Importer {
  constructor(
    readonly store: ImportTarget,
    readonly index: NameIndex,
  ) {}

  async run(scan: TreeScan, options: ImportOptions = {}): Promise<ImportSummary> {
    const summary: ImportSummary = {
      files: scan.candidates.length,
      bytes: scan.candidates.reduce((sum, c) => sum + c.size, 0),
      processed: 0,
      imported: 0,
      present: 0,
      linked: 0,
      namesAttached: 0,
      manifestMissing: [],
      problems: [...scan.notes],
    };
    const byInode = new Map<string, Promise<Digests | undefined>>();
    let next = 0;
    const worker = async () => {
      while (next < scan.candidates.length && summary.stopped === undefined) {
        if (options.signal?.aborted) {
          summary.stopped = 'interrupted';
          break;
        }
        const candidate = scan.candidates[next++]!;
        let outcome: Outcome;
        let reason: string | undefined;
        let bytesRead = 0;
        const counting: ImportOptions = {
          ...options,
          onBytes: (n) => {
            bytesRead += n;
            options.onBytes?.(n);
          },
        };
        try {
          ({ outcome, reason } = await this.importOne(candidate, counting, byInode, summary));
        } catch (err) {
          outcome = 'failed';
          reason = (err as Error).message;
          // A full disk fails every later file too: stop rather than report thousands of failures.
          if (isAppError(err) && err.code === 'INSUFFICIENT_STORAGE') summary.stopped = reason;
        }
        summary.processed++;
        if (outcome === 'imported') summary.imported++;
        else if (outcome === 'present') summary.present++;
        else summary.problems.push({ rel: candidate.rel, kind: outcome, reason: reason ?? outcome });
        options.onFile?.(candidate, outcome, reason, bytesRead);
      }
    };
    await Promise.all(Array.from({ length: Math.max(1, options.jobs ?? 2) }, worker));
    if (summary.stopped === undefined && options.signal?.aborted) summary.stopped = 'interrupted';
    if (options.manifests) await this.attachManifestNames(options.manifests, options.by ?? 'import', summary);
    return summary;
  }

  private async alreadyPresent(candidate: Candidate, manifest: DistEntry | undefined): Promise<string | undefined> {
    if (candidate.filename !== undefined) {
      const current = await this.index.servableByName(candidate.filename);
      if (!current || current.quarantined_at !== null || current.size !== candidate.size) return undefined;
      if (manifest?.sha512 !== undefined && manifest.sha512 !== current.sha512) return undefined;
      return current.sha512;
    }
    const sha512 = candidate.claimed?.sha512;
    if (sha512 === undefined) return undefined;
    const row = await this.index.blob(sha512);
    if (!row || row.quarantined_at !== null || row.size !== candidate.size) return undefined;
    return candidate.claimed?.size === undefined || candidate.claimed.size === candidate.size ? sha512 : undefined;
  }

  private async importOne(
    candidate: Candidate,
    options: ImportOptions,
    byInode: Map<string, Promise<Digests | undefined>>,
    summary: ImportSummary,
  ): Promise<{ outcome: Outcome; reason?: string }> {
    const manifest = candidate.filename !== undefined ? options.manifests?.byName.get(candidate.filename) : undefined;
    const present = options.rehash ? undefined : await this.alreadyPresent(candidate, manifest);
    // The index row alone is not proof: the blob file must still be there with its size.
    if (present !== undefined && (await this.store.sizeOf(present)) === candidate.size) return { outcome: 'present' };

    const expected: ExpectedDigests = { ...candidate.claimed };
    let claimSource = candidate.claimSource ?? 'the tree';
    if (manifest) {
      expected.size = manifest.size;
      if (manifest.sha512) expected.sha512 = manifest.sha512;
      if (manifest.blake2b) expected.blake2b = manifest.blake2b;
      claimSource = `the Manifest (${manifest.source})`;
    }

    // A mirror often hard-links one file into several layouts; its bytes need reading only once.
    let digests: Digests | undefined;
    let created = false;
    const seen = byInode.get(candidate.inode);
    if (seen) digests = await seen;
    if (digests) {
      const mismatches = compareDigests(expected, digests);
      if (mismatches.length > 0) return { outcome: 'corrupt', reason: describeMismatches(mismatches, claimSource) };
    } else {
      if (!options.link && options.minFreeBytes !== undefined && this.store.root !== undefined) {
        await this.assertRoom(this.store.root, candidate.size, options.minFreeBytes);
      }
      let settle: (d: Digests | undefined) => void = () => undefined;
      byInode.set(candidate.inode, new Promise((resolve) => (settle = resolve)));
      try {
        const result = await this.store.importFile(candidate.abs, {
          expected,
          link: options.link ?? false,
          ...(options.onBytes ? { onBytes: options.onBytes } : {}),
        });
        digests = result.digests;
        created = result.created;
        if (result.linked) summary.linked++;
        settle(digests);
      } catch (err) {
        byInode.delete(candidate.inode);
        settle(undefined);
        if (isAppError(err) && err.code === 'DIGEST_MISMATCH') {
          const mismatches = (err.details?.mismatches ?? []) as Mismatch[];
          return { outcome: 'corrupt', reason: describeMismatches(mismatches, claimSource) };
        }
        throw err;
      }
    }

    const wasCurrent =
      candidate.filename !== undefined && (await this.index.servableByName(candidate.filename))?.sha512 === digests.sha512;
    await this.index.recordBlob(digests, {
      ...(candidate.filename !== undefined && !wasCurrent ? { filename: candidate.filename } : {}),
      by: options.by ?? 'import',
      // Stored by hash alone (BLOS, content-hash): referenced by hash URLs, so kept even without a name.
      pinned: candidate.filename === undefined,
    });
    const newName = candidate.filename !== undefined && !wasCurrent;
    return { outcome: created || newName ? 'imported' : 'present' };
  }

  private async assertRoom(root: string, size: number, minFreeBytes: number): Promise<void> {
    const fs = await statfs(root);
    const free = fs.bavail * fs.bsize;
    if (free - size < minFreeBytes) {
      throw new AppError(
        'INSUFFICIENT_STORAGE',
        `copying ${size} bytes would leave less than the configured minimum free space (${minFreeBytes} bytes, ${free} free)`,
      );
    }
  }

  /**
   * Every Manifest entry whose blob is stored (imported now or earlier) gets its name, once the stored
   * blob's size and BLAKE2B agree with the entry; a disagreement is reported and nothing is attached.
   */
  private async attachManifestNames(manifests: ManifestSet, by: string, summary: ImportSummary): Promise<void> {
    for (const entry of manifests.entries) {
      const row = entry.sha512 ? await this.index.blob(entry.sha512) : undefined;
      if (!row || row.quarantined_at !== null) {
        // Only a BLAKE2B in the Manifest: the name (if the tree gave it) is all there is to check.
        const byName = entry.sha512 ? undefined : await this.index.servableByName(entry.filename);
        if (byName && byName.size === entry.size && (!entry.blake2b || byName.blake2b === entry.blake2b)) continue;
        summary.manifestMissing.push(entry);
        continue;
      }
      const mismatches: Mismatch[] = [];
      if (row.size !== entry.size) mismatches.push({ field: 'size', expected: entry.size, actual: row.size });
      if (entry.blake2b && row.blake2b !== entry.blake2b) {
        mismatches.push({ field: 'blake2b', expected: entry.blake2b, actual: row.blake2b });
      }
      if (mismatches.length > 0) {
        summary.problems.push({
          rel: entry.filename,
          kind: 'corrupt',
          reason: `stored blob ${short(row.sha512)}: ${describeMismatches(mismatches, `the Manifest (${entry.source})`)}`,
        });
        continue;
      }
      const attached = (await this.index.history(entry.filename)).some((h) => h.sha512 === row.sha512 && h.detached_at === null);
      if (!attached) {
        await this.index.attach(entry.filename, row.sha512, by);
        summary.namesAttached++;
      }
    }
  }
}
