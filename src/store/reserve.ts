import { randomBytes } from 'node:crypto';
import { open, rename, stat, statfs, unlink } from 'node:fs/promises';
import path from 'node:path';
import { isStorageFull } from '../errors.js';

/** Default headroom kept for index maintenance (detach, gc) when the disk fills up. */
export const DEFAULT_RESERVE_BYTES = 64 * 1024 * 1024;
/** On a small filesystem the reserve takes at most this share of it (30 MiB → ~1.9 MiB). */
const MAX_SHARE_OF_FILESYSTEM = 1 / 16;
const ZEROS = Buffer.alloc(1024 * 1024);

/**
 * A file of real (written, not sparse) bytes at `<data>/reserve` that holds back space the blob
 * store may not use. When the index cannot record a detach or a gc deletion because the disk is
 * full, the reserve is deleted so that write can proceed; uploads are refused until it can be
 * written again in full (after gc frees space). It is re-created through a temp file in tmp/ and
 * rename(2), so a crash never leaves a half reserve under its name and several processes (server,
 * `fastpull gc`) may race to re-create it without harm.
 */
export class Reserve {
  readonly file: string;
  private ensuring: Promise<boolean> | undefined;
  private targetBytes: number | undefined;

  constructor(
    readonly root: string,
    private readonly tmpDir: string,
    private readonly requestedBytes = DEFAULT_RESERVE_BYTES,
  ) {
    this.file = path.join(root, 'reserve');
  }

  /** How large the reserve is meant to be: the setting, capped to a share of the filesystem. */
  async bytes(): Promise<number> {
    if (this.targetBytes === undefined) {
      const fs = await statfs(this.root);
      const cap = Math.floor(fs.blocks * fs.bsize * MAX_SHARE_OF_FILESYSTEM);
      this.targetBytes = Math.min(this.requestedBytes, cap);
    }
    return this.targetBytes;
  }

  /** True when the reserve is in place (re-creating it if needed); false when the disk has no room for it. */
  ensure(): Promise<boolean> {
    return (this.ensuring ??= this.ensureOnce().finally(() => (this.ensuring = undefined)));
  }

  private async ensureOnce(): Promise<boolean> {
    const want = await this.bytes();
    if (want === 0) return true;
    const have = await stat(this.file).then(
      (s) => s.size,
      () => 0,
    );
    if (have >= want) return true;
    const tmp = path.join(this.tmpDir, `${process.pid}-reserve-${randomBytes(8).toString('hex')}.tmp`);
    let handle;
    try {
      handle = await open(tmp, 'wx', 0o600);
      for (let written = 0; written < want; ) {
        const n = Math.min(ZEROS.length, want - written);
        const { bytesWritten } = await handle.write(ZEROS, 0, n);
        if (bytesWritten === 0) throw Object.assign(new Error('short write'), { code: 'ENOSPC' });
        written += bytesWritten;
      }
      await handle.sync();
      await handle.close();
      handle = undefined;
      await rename(tmp, this.file);
      return true;
    } catch (err) {
      if (isStorageFull(err)) return false;
      throw err;
    } finally {
      await handle?.close().catch(() => undefined);
      await unlink(tmp).catch(() => undefined);
    }
  }

  /** Gives the reserved space back to the filesystem; false when there was none to give. */
  async release(): Promise<boolean> {
    try {
      await unlink(this.file);
      return true;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false;
      throw err;
    }
  }

  /**
   * Runs an index write that must not fail for lack of space (detach, gc). When the disk is full it
   * releases the reserve and tries once more; `onRelease` lets the caller log that it happened.
   */
  async whenFull<T>(write: () => T | Promise<T>, onRelease?: () => void): Promise<T> {
    try {
      return await write();
    } catch (err) {
      if (!isStorageFull(err) || !(await this.release())) throw err;
      onRelease?.();
      return write();
    }
  }
}
