import type { EventView } from '../db/events.js';
import { filenameHashDir, shardedPath } from '../domain/layout.js';

/** Python's urllib.parse.quote leaves these bytes alone (its always-safe set plus the default safe '/'). */
const QUOTE_SAFE = /[A-Za-z0-9_.\-~/]/;

/**
 * Percent-encodes a path exactly like Portage does before requesting it from a mirror
 * (`urllib.parse.quote(path)` in fetch.py's get_mirror_url): UTF-8 bytes, upper-case hex, only
 * `A-Z a-z 0-9 _ . - ~ /` left as they are. A CDN caches by the URL it was asked for, so a purge
 * must name exactly that URL: `+` as `%2B`, `@` as `%40`, and also `!'()*`, which
 * encodeURIComponent would leave alone.
 */
export function portageQuote(path: string): string {
  let out = '';
  for (const ch of path) {
    if (QUOTE_SAFE.test(ch)) {
      out += ch;
      continue;
    }
    for (const byte of Buffer.from(ch, 'utf8')) out += `%${byte.toString(16).toUpperCase().padStart(2, '0')}`;
  }
  return out;
}

/** Every path that serves a blob by its hash: content-hash under /distfiles/ and bare, hash under /distfiles/ and bare. */
export function hashPaths(sha512: string): string[] {
  const sharded = shardedPath(sha512);
  return [`/distfiles/${sharded}`, `/${sharded}`, `/distfiles/${sha512}`, `/${sha512}`];
}

/** The flat and filename-hash paths of a name, as Portage requests them. */
export function namePaths(filename: string): string[] {
  return [portageQuote(`/distfiles/${filename}`), portageQuote(`/distfiles/${filenameHashDir(filename)}/${filename}`)];
}

export type CdnAction = 'purge' | 'prefetch';

/**
 * What the CDN must be told about an event, or undefined when nothing.
 * - quarantine: every path that could have served the damaged bytes (hash forms and every name then attached);
 * - re-point, detach: the name's paths (edges would keep serving the old bytes under the name);
 * - new blob, with prefetch on: its content-hash path, so the first user gets a hit.
 */
export function cdnWork(event: Pick<EventView, 'type' | 'sha512' | 'names'>, prefetch: boolean): { action: CdnAction; paths: string[] } | undefined {
  switch (event.type) {
    case 'blob.quarantined':
      return { action: 'purge', paths: [...hashPaths(event.sha512), ...event.names.flatMap(namePaths)] };
    case 'name.repointed':
    case 'name.detached':
      return { action: 'purge', paths: event.names.flatMap(namePaths) };
    case 'blob.stored':
      return prefetch ? { action: 'prefetch', paths: [`/distfiles/${shardedPath(event.sha512)}`] } : undefined;
    default:
      return undefined;
  }
}

/** Event types the CDN target needs deliveries for. */
export function cdnEventTypes(prefetch: boolean): EventView['type'][] {
  return ['blob.quarantined', 'name.repointed', 'name.detached', ...(prefetch ? (['blob.stored'] as const) : [])];
}

/** What `fastpull purge` sends for a sha512 (hash forms plus the given names) or a name. */
export function purgePathsFor(subject: { sha512: string; names: string[] } | { filename: string }): string[] {
  return 'filename' in subject ? namePaths(subject.filename) : [...hashPaths(subject.sha512), ...subject.names.flatMap(namePaths)];
}
