import { isSha512Hex } from '../domain/hashes.js';
import { filenameProblem } from '../domain/names.js';
import { filenameHashDir } from '../domain/layout.js';
import type { BlobTarget } from '../domain/target.js';

export type { BlobTarget };
export { ORIGIN_LAYOUT_CONF as LAYOUT_CONF } from '../domain/layout.js';

export type ReadTarget =
  | BlobTarget
  | { kind: 'layout' }
  | { kind: 'bad'; code: 'BAD_FILENAME' | 'BAD_REQUEST'; message: string }
  | { kind: 'none' };

const HEX2 = /^[0-9a-f]{2}$/;

/**
 * Maps a request path to what it names, following GLEP 75 and Funtoo's direct URLs:
 *   /distfiles/layout.conf, /layout.conf
 *   /distfiles/ab/cd/ef/<sha512>, /ab/cd/ef/<sha512>, /distfiles/<sha512>, /<sha512>
 *   /distfiles/<blake2b 2 hex>/<name>, /distfiles/<name>
 * Each segment is percent-decoded exactly once; '+' stays '+'.
 */
export function parseReadPath(url: string): ReadTarget {
  const q = url.indexOf('?');
  const rawPath = q === -1 ? url : url.slice(0, q);
  const rawSegments = rawPath.split('/').slice(1);
  let segments: string[];
  try {
    segments = rawSegments.map((s) => (s.includes('%') ? decodeURIComponent(s) : s));
  } catch {
    return { kind: 'bad', code: 'BAD_REQUEST', message: 'path is not valid percent-encoded UTF-8' };
  }
  const inDistfiles = segments[0] === 'distfiles';
  const rest = inDistfiles ? segments.slice(1) : segments;

  if (rest.length === 1) {
    const only = rest[0]!;
    if (only === 'layout.conf') return { kind: 'layout' };
    if (isSha512Hex(only)) return { kind: 'hash', sha512: only };
    if (!inDistfiles) return { kind: 'none' };
    const problem = filenameProblem(only);
    if (problem) return { kind: 'bad', code: 'BAD_FILENAME', message: problem };
    return { kind: 'name', filename: only, form: 'flat' };
  }
  if (rest.length === 4) {
    const [a, b, c, hash] = rest as [string, string, string, string];
    // The shards must be the hash's own first six digits; anything else names nothing.
    if (isSha512Hex(hash) && a + b + c === hash.slice(0, 6) && a.length === 2 && b.length === 2) {
      return { kind: 'hash', sha512: hash };
    }
    return { kind: 'none' };
  }
  if (rest.length === 2 && inDistfiles) {
    const [dir, name] = rest as [string, string];
    if (!HEX2.test(dir)) return { kind: 'none' };
    const problem = filenameProblem(name);
    if (problem) return { kind: 'bad', code: 'BAD_FILENAME', message: problem };
    if (filenameHashDir(name) !== dir) return { kind: 'none' };
    return { kind: 'name', filename: name, form: 'filename-hash' };
  }
  return { kind: 'none' };
}
