import type { UpstreamKind, UpstreamMirror } from '../config.js';
import { layoutSegments, parseLayoutConf, shardedPath, type LayoutEntry } from '../domain/layout.js';
import type { BlobTarget } from '../domain/target.js';
import { UpstreamError, type Fetcher } from './fetcher.js';

/**
 * The path (under `<base>/distfiles/`) a GLEP 75 mirror with `layout` uses for `target`, if any. A hash can
 * only be asked for by content-hash; a name by the first name layout we can compute.
 */
export function gentooPath(layout: readonly LayoutEntry[], target: BlobTarget): string | undefined {
  for (const entry of layout) {
    const segments = layoutSegments(entry, target);
    if (segments) return segments.map(encodeURIComponent).join('/');
  }
  return undefined;
}

const LAYOUT_TTL_MS = 3600_000;
const LAYOUT_RETRY_MS = 60_000;
const LAYOUT_MAX_BYTES = 64 * 1024;

/** One configured upstream: how to address files on it, and whether it is currently worth asking. */
export class Mirror {
  readonly kind: UpstreamKind;
  readonly base: string;
  private failures = 0;
  private openUntil = 0;
  private layout: { entries: LayoutEntry[]; expires: number } | undefined;
  private layoutLoading: Promise<LayoutEntry[]> | undefined;

  constructor(
    config: UpstreamMirror,
    private readonly breaker: { threshold: number; cooldownMs: number },
  ) {
    this.kind = config.kind;
    this.base = config.url.replace(/\/+$/, '');
  }

  /** Circuit breaker: closed, or open until its cooldown passes; then one attempt decides (half-open). */
  available(now = Date.now()): boolean {
    return now >= this.openUntil;
  }

  succeeded(): void {
    this.failures = 0;
    this.openUntil = 0;
  }

  failed(now = Date.now()): void {
    this.failures++;
    if (this.failures >= this.breaker.threshold) {
      this.openUntil = now + this.breaker.cooldownMs;
      // Half-open after the cooldown: a single further failure reopens it.
      this.failures = this.breaker.threshold - 1;
    }
  }

  get state(): { kind: UpstreamKind; url: string; open: boolean; failures: number } {
    return { kind: this.kind, url: this.base, open: !this.available(), failures: this.failures };
  }

  /**
   * The URL to ask for `target`, or undefined when this mirror cannot be addressed by that key
   * (a flat mirror by hash; a gentoo mirror whose layout has no content-hash entry).
   * Throws UpstreamError when the mirror could not be reached to read its layout.
   */
  async urlFor(target: BlobTarget, fetcher: Fetcher, signal: AbortSignal): Promise<string | undefined> {
    switch (this.kind) {
      case 'fastpull':
        return target.kind === 'hash'
          ? `${this.base}/distfiles/${shardedPath(target.sha512)}`
          : `${this.base}/distfiles/${encodeURIComponent(target.filename)}`;
      case 'flat':
        return target.kind === 'name' ? `${this.base}/${encodeURIComponent(target.filename)}` : undefined;
      case 'gentoo': {
        const path = gentooPath(await this.getLayout(fetcher, signal), target);
        return path === undefined ? undefined : `${this.base}/distfiles/${path}`;
      }
    }
  }

  private async getLayout(fetcher: Fetcher, signal: AbortSignal): Promise<LayoutEntry[]> {
    if (this.layout && Date.now() < this.layout.expires) return this.layout.entries;
    this.layoutLoading ??= this.loadLayout(fetcher, signal).finally(() => (this.layoutLoading = undefined));
    return this.layoutLoading;
  }

  private async loadLayout(fetcher: Fetcher, signal: AbortSignal): Promise<LayoutEntry[]> {
    let entries: LayoutEntry[] = [];
    try {
      const res = await fetcher.open(`${this.base}/distfiles/layout.conf`, { signal, retries: 0 });
      const chunks: Buffer[] = [];
      let size = 0;
      for await (const chunk of res.body as AsyncIterable<Buffer>) {
        size += chunk.length;
        if (size > LAYOUT_MAX_BYTES) {
          res.body.destroy();
          break;
        }
        chunks.push(chunk);
      }
      entries = parseLayoutConf(Buffer.concat(chunks).toString('utf8')).entries;
    } catch (err) {
      // Like Portage: no layout.conf (a 404) means flat. A mirror we cannot reach is a failure, not a layout.
      if (!(err instanceof UpstreamError) || err.failure !== 'not-found') throw err;
    }
    if (entries.length === 0) {
      this.layout = { entries: [{ kind: 'flat' }], expires: Date.now() + LAYOUT_RETRY_MS };
    } else {
      this.layout = { entries, expires: Date.now() + LAYOUT_TTL_MS };
    }
    return this.layout.entries;
  }
}
