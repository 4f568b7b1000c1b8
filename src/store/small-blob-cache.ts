/**
 * Bytes of small blobs kept in memory, least recently used evicted first, within a byte budget.
 *
 * Two rules keep it from ever serving what it should not:
 * - only bytes whose sha512 was checked are put in (BlobReader hashes them on the way in), so a
 *   damaged file never enters;
 * - each entry remembers the index row's version it was filled under (ServableBlob.version, which
 *   every quarantine, release or repair changes, in whichever process it happens); a lookup with any
 *   other version drops the entry instead of answering from it.
 */
export class SmallBlobCache {
  private readonly entries = new Map<string, { version: string; bytes: Buffer }>();
  private bytes = 0;

  constructor(readonly budgetBytes: number) {}

  get(sha512: string, version: string): Buffer | undefined {
    const hit = this.entries.get(sha512);
    if (!hit) return undefined;
    this.entries.delete(sha512);
    if (hit.version !== version) {
      this.bytes -= hit.bytes.length;
      return undefined;
    }
    // Re-insert so Map order tracks recency.
    this.entries.set(sha512, hit);
    return hit.bytes;
  }

  set(sha512: string, version: string, bytes: Buffer): void {
    if (bytes.length > this.budgetBytes) return;
    this.delete(sha512);
    this.entries.set(sha512, { version, bytes });
    this.bytes += bytes.length;
    for (const [key, value] of this.entries) {
      if (this.bytes <= this.budgetBytes) break;
      this.entries.delete(key);
      this.bytes -= value.bytes.length;
    }
  }

  /** Forgets a blob (quarantine, removal in this process); other processes notice through the version. */
  delete(sha512: string): void {
    const hit = this.entries.get(sha512);
    if (!hit) return;
    this.entries.delete(sha512);
    this.bytes -= hit.bytes.length;
  }

  get size(): { entries: number; bytes: number } {
    return { entries: this.entries.size, bytes: this.bytes };
  }
}
