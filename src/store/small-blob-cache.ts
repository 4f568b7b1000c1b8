/**
 * Bytes of small blobs kept in memory, least recently used evicted first, within a byte budget.
 * Safe because the store is content-addressed: the bytes of a sha512 never change, so an entry
 * can never go stale. Whether a blob may be served at all (quarantined, collected) is still decided
 * by the index on every request, before this cache is asked.
 */
export class SmallBlobCache {
  private readonly entries = new Map<string, Buffer>();
  private bytes = 0;

  constructor(readonly budgetBytes: number) {}

  get(sha512: string): Buffer | undefined {
    const hit = this.entries.get(sha512);
    if (hit) {
      // Re-insert so Map order tracks recency.
      this.entries.delete(sha512);
      this.entries.set(sha512, hit);
    }
    return hit;
  }

  set(sha512: string, bytes: Buffer): void {
    if (bytes.length > this.budgetBytes || this.entries.has(sha512)) return;
    this.entries.set(sha512, bytes);
    this.bytes += bytes.length;
    for (const [key, value] of this.entries) {
      if (this.bytes <= this.budgetBytes) break;
      this.entries.delete(key);
      this.bytes -= value.length;
    }
  }

  /** Forgets a blob (quarantine, removal): not needed for correctness, but frees its memory. */
  delete(sha512: string): void {
    const hit = this.entries.get(sha512);
    if (!hit) return;
    this.entries.delete(sha512);
    this.bytes -= hit.length;
  }

  get size(): { entries: number; bytes: number } {
    return { entries: this.entries.size, bytes: this.bytes };
  }
}
