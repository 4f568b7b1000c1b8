import { createHash, getHashes } from 'node:crypto';
import type { BlobTarget } from './target.js';

/** One GLEP 75 `[structure]` entry: how a mirror files distfiles under `distfiles/`. */
export type LayoutEntry =
  | { kind: 'flat' }
  | { kind: 'filename-hash' | 'content-hash'; algorithm: string; cutoffs: number[] };

/** What this origin publishes at /distfiles/layout.conf; Portage picks the first entry it supports. */
export const ORIGIN_LAYOUT_CONF = `[structure]
0=content-hash SHA512 8:8:8
1=filename-hash BLAKE2B 8
2=flat
`;

export const ORIGIN_LAYOUTS: readonly LayoutEntry[] = [
  { kind: 'content-hash', algorithm: 'SHA512', cutoffs: [8, 8, 8] },
  { kind: 'filename-hash', algorithm: 'BLAKE2B', cutoffs: [8] },
  { kind: 'flat' },
];

/**
 * Portage's checksum names (portage.checksum's hashfunc keys: upper case, exactly as spelled) → the Node
 * digest computing it. Portage accepts an entry naming any of them; WHIRLPOOL and STREEBOG have no Node
 * digest, so such an entry is valid yet cannot be followed here.
 */
const NODE_DIGESTS: Record<string, string | undefined> = {
  MD5: 'md5',
  SHA1: 'sha1',
  SHA256: 'sha256',
  SHA512: 'sha512',
  BLAKE2B: 'blake2b512',
  BLAKE2S: 'blake2s256',
  SHA3_256: 'sha3-256',
  SHA3_512: 'sha3-512',
  RMD160: 'ripemd160',
  WHIRLPOOL: undefined,
  STREEBOG256: undefined,
  STREEBOG512: undefined,
};
const AVAILABLE = new Set(getHashes());

export interface ParsedLayoutConf {
  /** The entries Portage considers valid, in the order it tries them. Empty means flat. */
  entries: LayoutEntry[];
  /** Why a file or an entry was not used, for operators. */
  problems: string[];
}

/**
 * GLEP 75 `layout.conf` read the way Portage reads it (MirrorLayoutConfig): Python's ConfigParser
 * (`=` or `:`, whole-line `#`/`;` comments, indented continuation lines, `[DEFAULT]` fallback, a
 * malformed or duplicated line rejects the whole file), then `structure` keys 0, 1, 2… until the first
 * missing number; an entry that fails Portage's validation is skipped, the next one tried.
 */
export function parseLayoutConf(text: string): ParsedLayoutConf {
  const ini = readIni(text);
  if (typeof ini === 'string') return { entries: [], problems: [`layout.conf unreadable: ${ini}`] };
  const structure = ini.get('structure');
  if (!structure) return { entries: [], problems: ['layout.conf has no [structure] section'] };
  const defaults = ini.get('DEFAULT');
  const entries: LayoutEntry[] = [];
  const problems: string[] = [];
  let n = 0;
  for (; ; n++) {
    const value = structure.get(String(n)) ?? defaults?.get(String(n));
    if (value === undefined) break;
    // Portage's parser interpolates values, and a stray '%' raises there, which ends its list.
    if (value.includes('%')) {
      problems.push(`entry ${n} and later ignored: '%' is not allowed in a value`);
      break;
    }
    const fields = value.split(/\s+/).filter(Boolean);
    const entry = portageEntry(fields);
    if (typeof entry === 'string') problems.push(`layout "${fields.join(' ')}" ignored: ${entry}`);
    else entries.push(entry);
  }
  for (const key of structure.keys()) {
    if (!(/^(0|[1-9]\d*)$/.test(key) && Number(key) < n)) {
      problems.push(`key "${key}" ignored: Portage reads 0, 1, 2… and stops at the first missing number`);
    }
  }
  return { entries, problems };
}

function portageEntry(fields: string[]): LayoutEntry | string {
  const [kind, algorithm, cutoffText] = fields;
  if (kind === 'flat') return fields.length === 1 ? { kind } : 'flat takes no arguments';
  if (kind !== 'filename-hash' && kind !== 'content-hash') return `unknown layout type ${kind ?? '(empty)'}`;
  if (fields.length !== 3 || algorithm === undefined || cutoffText === undefined) return 'expected an algorithm and cutoffs';
  if (!Object.hasOwn(NODE_DIGESTS, algorithm)) return `unknown algorithm ${algorithm}`;
  const cutoffs = cutoffText.split(':').map((c) => (/^\d+$/.test(c) ? Number(c) : NaN));
  // Portage only asks for multiples of 4; a zero cutoff would make it request `//name`, which no mirror serves.
  if (cutoffs.some((c) => !Number.isSafeInteger(c) || c <= 0 || c % 4 !== 0)) return 'cutoffs must be positive multiples of 4';
  return { kind, algorithm, cutoffs };
}

/** The subset of Python's ConfigParser (strict, default options) that layout.conf files use; a string is the error. */
function readIni(text: string): Map<string, Map<string, string>> | string {
  const sections = new Map<string, Map<string, string>>();
  let current: Map<string, string> | undefined;
  let lastKey: string | undefined;
  let keyIndent = 0;
  // Portage decodes as plain UTF-8, so a byte-order mark stays in front of the first header and spoils it.
  if (text.startsWith('\uFEFF')) return 'line 1 starts with a byte-order mark';
  const lines = text.split(/\r\n|\r|\n/);
  for (let i = 0; i < lines.length; i++) {
    const raw = lines[i]!;
    const line = raw.trim();
    if (line.startsWith('#') || line.startsWith(';')) continue;
    if (line === '') {
      lastKey = undefined;
      continue;
    }
    const indent = raw.length - raw.trimStart().length;
    if (current && lastKey !== undefined && indent > keyIndent) {
      current.set(lastKey, `${current.get(lastKey)!}\n${line}`);
      continue;
    }
    const header = /^\[(.+)\]/.exec(line);
    if (header) {
      const name = header[1]!;
      if (sections.has(name)) return `section [${name}] appears twice`;
      current = new Map();
      sections.set(name, current);
      lastKey = undefined;
      continue;
    }
    if (!current) return `line ${i + 1} comes before any [section]`;
    const option = /^(.*?)\s*[=:]\s*(.*)$/.exec(line);
    if (!option || option[1] === '') return `line ${i + 1} is not "key = value"`;
    const key = option[1]!.toLowerCase();
    if (current.has(key)) return `key "${key}" appears twice in one section`;
    current.set(key, option[2]!);
    lastKey = key;
    keyIndent = indent;
  }
  return sections;
}

export function describeLayout(entry: LayoutEntry): string {
  return entry.kind === 'flat' ? 'flat' : `${entry.kind} ${entry.algorithm} ${entry.cutoffs.join(':')}`;
}

/** The leading directories a hex digest is filed under: cutoffs 8:8:8 → ['ab', 'cd', 'ef']. */
export function shardDirs(hex: string, cutoffs: readonly number[]): string[] {
  const dirs: string[] = [];
  let at = 0;
  for (const bits of cutoffs) {
    dirs.push(hex.slice(at, at + bits / 4));
    at += bits / 4;
  }
  return dirs;
}

/** `ab/cd/ef/<hash>`: the GLEP 75 `content-hash SHA512 8:8:8` shape; depends on the hash alone. */
export function shardedPath(sha512: string): string {
  return `${sha512.slice(0, 2)}/${sha512.slice(2, 4)}/${sha512.slice(4, 6)}/${sha512}`;
}

/** First two hex digits of BLAKE2B-512 over the UTF-8 name: GLEP 75 `filename-hash BLAKE2B 8`. */
export function filenameHashDir(filename: string): string {
  return createHash('blake2b512').update(filename, 'utf8').digest('hex').slice(0, 2);
}

/** Hex digest of a file name with a Portage-named algorithm; undefined when Node cannot compute it. */
export function filenameDigest(filename: string, algorithm: string): string | undefined {
  const node = Object.hasOwn(NODE_DIGESTS, algorithm) ? NODE_DIGESTS[algorithm] : undefined;
  if (node === undefined || !AVAILABLE.has(node)) return undefined;
  return createHash(node).update(filename, 'utf8').digest('hex');
}

/**
 * The path segments (under `distfiles/`, not yet percent-encoded) at which a mirror using `entry` files
 * `target`; undefined when that layout cannot address it (a hash target carries only its SHA512).
 */
export function layoutSegments(entry: LayoutEntry, target: BlobTarget): string[] | undefined {
  if (target.kind === 'hash') {
    if (entry.kind !== 'content-hash' || entry.algorithm !== 'SHA512') return undefined;
    return [...shardDirs(target.sha512, entry.cutoffs), target.sha512];
  }
  if (entry.kind === 'flat') return [target.filename];
  if (entry.kind === 'content-hash') return undefined;
  const hex = filenameDigest(target.filename, entry.algorithm);
  return hex === undefined ? undefined : [...shardDirs(hex, entry.cutoffs), target.filename];
}
