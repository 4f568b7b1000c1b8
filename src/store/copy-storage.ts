import { AppError } from '../errors.js';
import type { ExpectedDigests } from './digests.js';
import type { BlobStorage } from './storage.js';

/** One blob to copy; `size` is what the index (or the source) says it holds. */
export interface CopyItem {
  sha512: string;
  size: number;
}

export interface CopyHooks {
  /** Declared digests (from the index) that the target's verified write must match; the hash alone otherwise. */
  declared(sha512: string): ExpectedDigests | undefined;
  /** Bytes read from the source so far for a blob in flight. */
  onBytes?(n: number): void;
  /** A blob is finished; `unreadBytes` were never read (it was already there, or failed early). */
  onDone?(item: CopyItem, outcome: CopyOutcome, unreadBytes: number): void;
}

export type CopyOutcome = { kind: 'copied' } | { kind: 'present' } | { kind: 'failed'; reason: string };

export interface CopyReport {
  copied: number;
  copiedBytes: number;
  present: number;
  presentBytes: number;
  failed: { sha512: string; reason: string }[];
}

/**
 * Copies blobs from one storage to another through the BlobStorage interface, `jobs` at a time. A blob the
 * target already holds at the expected size is skipped after a stat (HEAD on S3), so an interrupted copy
 * resumes where it stopped; every other blob goes through the target's verified write with the declared
 * digests, so damaged source bytes are refused (and reported) and never become visible in the target.
 */
export async function copyBlobs(source: BlobStorage, target: BlobStorage, items: Iterable<CopyItem>, jobs: number, hooks: CopyHooks): Promise<CopyReport> {
  const report: CopyReport = { copied: 0, copiedBytes: 0, present: 0, presentBytes: 0, failed: [] };
  const queue = items[Symbol.iterator]();
  const worker = async () => {
    for (let next = queue.next(); !next.done; next = queue.next()) {
      const item = next.value;
      let read = 0;
      const outcome = await copyOne(source, target, item, hooks, (n) => {
        read += n;
        hooks.onBytes?.(n);
      });
      if (outcome.kind === 'copied') {
        report.copied++;
        report.copiedBytes += item.size;
      } else if (outcome.kind === 'present') {
        report.present++;
        report.presentBytes += item.size;
      } else {
        report.failed.push({ sha512: item.sha512, reason: outcome.reason });
      }
      hooks.onDone?.(item, outcome, Math.max(0, item.size - read));
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, jobs) }, worker));
  return report;
}

async function copyOne(source: BlobStorage, target: BlobStorage, item: CopyItem, hooks: CopyHooks, counted: (n: number) => void): Promise<CopyOutcome> {
  try {
    const there = await target.stat(item.sha512);
    if (there && there.size === item.size) return { kind: 'present' };
    const body = await source.read(item.sha512);
    if (!body) return { kind: 'failed', reason: 'gone from the source since it was listed' };
    async function* counting(): AsyncGenerator<Buffer> {
      for await (const chunk of body!) {
        counted((chunk as Buffer).length);
        yield chunk as Buffer;
      }
    }
    try {
      // A copy of the wrong size in the target is not trusted: the verified bytes replace it.
      await target.write(counting(), {
        expected: hooks.declared(item.sha512) ?? { sha512: item.sha512 },
        ...(there ? { replaceExisting: () => true } : {}),
      });
    } finally {
      body.destroy();
    }
    return { kind: 'copied' };
  } catch (err) {
    if (err instanceof AppError && err.code === 'DIGEST_MISMATCH') {
      const fields = ((err.details as { mismatches?: { field: string }[] } | undefined)?.mismatches ?? []).map((m) => m.field);
      return { kind: 'failed', reason: `damaged in the source: its bytes do not match the ${fields.join(', ') || 'declared digests'} on record; not copied` };
    }
    return { kind: 'failed', reason: err instanceof Error ? err.message : String(err) };
  }
}
