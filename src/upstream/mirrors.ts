import type { UpstreamKind, UpstreamMirror } from '../config.js';
import type { BlobTarget } from '../http/read-path.js';
import { filenameHashDir } from '../store/paths.js';
import { createHash } from 'node:crypto';
import { UpstreamError, type Fetcher } from './fetcher.js';

export type LayoutEntry =
  | { kind: 'content-hash'; algorithm: string; cutoffs: number[] }
  | { kind: 'filename-hash'; algorithm: string; cutoffs: number[] }
  | { kind: 'flat' };

/** GLEP 75 layout.conf `[structure]`, in priority order; entries we cannot use are dropped. */
export function parseLayoutConf(text: string): LayoutEntry[] {
  const entries: [number, LayoutEntry][] = [];
  let inStructure = false;
  for (const rawLine of text.split(/\r?\n/)) {
    const line = rawLine.replace(/[#;].*$/, '').trim();
    if (line === '') continue;
    const section = /^\[(.+)\]$/.exec(line);
    if (section) {
      inStructure = section[1]!.trim() === 'structure';
      continue;
    }
    if (!inStructure) continue;
    const m = /^(\d+)\s*=\s*(.+)$/.exec(line);
    if (!m) continue;
    const [kind, algorithm, cutoffText] = m[2]!.trim().split(/\s+/);
    const cutoffs = (cutoffText ?? '').split(':').filter(Boolean).map(Number);
    const cutoffsOk = cutoffs.length > 0 && cutoffs.every((c) => Number.isInteger(c) && c > 0 && c % 4 === 0);
    let entry: LayoutEntry | undefined;
    if (kind === 'flat') entry = { kind: 'flat' };
    else if (kind === 'content-hash' && algorithm === 'SHA512' && cutoffsOk) entry = { kind, algorithm, cutoffs };
    else if (kind === 'filename-hash' && (algorithm === 'BLAKE2B' || algorithm === 'SHA512') && cutoffsOk) {
      entry = { kind, algorithm, cutoffs };
    }
    if (entry) entries.push([Number(m[1]), entry]);
  }
  return entries.sort((a, b) => a[0] - b[0]).map(([, e]) => e);
}

function shards(hex: string, cutoffs: number[]): string {
  const parts: string[] = [];
  let at = 0;
  for (const bits of cutoffs) {
    parts.push(hex.slice(at, at + bits / 4));
    at += bits / 4;
  }
  return parts.join('/');
}

function filenameHash(name: string, algorithm: string): string {
  return createHash(algorithm === 'SHA512' ? 'sha512' : 'blake2b512').update(name, 'utf8').digest('hex');
}

/** The path (under `<base>/distfiles/`) a GLEP 75 mirror with `layout` uses for `target`, if any. */
export function gentooPath(layout: LayoutEntry[], target: BlobTarget): string | undefined {
  for (const entry of layout) {
    if (target.kind === 'hash') {
      if (entry.kind === 'content-hash') return `${shards(target.sha512, entry.cutoffs)}/${target.sha512}`;
      continue;
    }
    const name = encodeURIComponent(target.filename);
    if (entry.kind === 'flat') return name;
    if (entry.kind === 'filename-hash') {
      const dir =
        entry.algorithm === 'BLAKE2B' && entry.cutoffs.length === 1 && entry.cutoffs[0] === 8
          ? filenameHashDir(target.filename)
          : shards(filenameHash(target.filename, entry.algorithm), entry.cutoffs);
      return `${dir}/${name}`;
    }
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
          ? `${this.base}/distfiles/${shards(target.sha512, [8, 8, 8])}/${target.sha512}`
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
      entries = parseLayoutConf(Buffer.concat(chunks).toString('utf8'));
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
