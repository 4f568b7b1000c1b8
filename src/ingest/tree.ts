import type { Dirent, Stats } from 'node:fs';
import { lstat, readdir, readFile, realpath, stat } from 'node:fs/promises';
import path from 'node:path';
import type { ExpectedDigests } from '../store/digests.js';
import { isBlake2bHex, isSha256Hex, isSha512Hex } from '../domain/hashes.js';
import { describeLayout, filenameDigest, ORIGIN_LAYOUTS, parseLayoutConf, shardDirs, type LayoutEntry } from '../domain/layout.js';
import { filenameProblem } from '../domain/names.js';

export type TreeKind = 'flat' | 'glep75' | 'blos';
export const TREE_KINDS: readonly TreeKind[] = ['flat', 'glep75', 'blos'];

/** One file the tree offers for import, and what the tree claims about it. */
export interface Candidate {
  /** Path relative to the tree root, as shown in reports. */
  rel: string;
  /** Resolved path of the bytes (symlinks followed: a hard link to a symlink would store the link). */
  abs: string;
  size: number;
  /** Identity of the bytes on disk: the same inode reached by two paths is hashed once. */
  inode: string;
  /** Name to attach (flat file, filename-hash entry). */
  filename?: string;
  /** Digests the tree asserts (content-hash file name, BLOS record); verified, never trusted. */
  claimed?: ExpectedDigests;
  claimSource?: string;
}

export interface TreeNote {
  rel: string;
  /** `ignored`: not a distfile (partial download, lock dir, unknown path); `corrupt`/`failed` count as errors. */
  kind: 'ignored' | 'corrupt' | 'failed';
  reason: string;
}

export interface TreeScan {
  kind: TreeKind;
  /** Human-readable description of the layouts found (GLEP 75). */
  layouts: string[];
  candidates: Candidate[];
  notes: TreeNote[];
}

const HEX2 = /^[0-9a-f]{2}$/;
const BLOB_SUFFIX = '.blob';

/**
 * Whether a layout Portage accepts can be imported here: names need a filename digest Node computes;
 * content-hash paths must name a digest the index keeps, so the file's bytes can be checked against it.
 */
function importProblem(entry: LayoutEntry): string | undefined {
  if (entry.kind === 'filename-hash' && filenameDigest('', entry.algorithm) === undefined) return `unsupported algorithm ${entry.algorithm}`;
  if (entry.kind === 'content-hash' && entry.algorithm !== 'SHA512' && entry.algorithm !== 'BLAKE2B') return `unsupported algorithm ${entry.algorithm}`;
  return undefined;
}

function sameDirs(segments: string[], dirs: string[]): boolean {
  return dirs.length === segments.length - 1 && dirs.every((d, i) => segments[i] === d);
}

type Match = { filename: string } | { claimed: ExpectedDigests; claimSource: string };

export function matchLayout(layout: LayoutEntry, segments: string[]): Match | undefined {
  const name = segments[segments.length - 1]!;
  switch (layout.kind) {
    case 'flat':
      return segments.length === 1 && !filenameProblem(name) ? { filename: name } : undefined;
    case 'filename-hash': {
      if (filenameProblem(name)) return undefined;
      const hex = filenameDigest(name, layout.algorithm);
      return hex !== undefined && sameDirs(segments, shardDirs(hex, layout.cutoffs)) ? { filename: name } : undefined;
    }
    case 'content-hash': {
      if (!/^[0-9a-f]{128}$/.test(name) || !sameDirs(segments, shardDirs(name, layout.cutoffs))) return undefined;
      const claimed = layout.algorithm === 'SHA512' ? { sha512: name } : { blake2b: name };
      return { claimed, claimSource: `its content-hash ${layout.algorithm} path` };
    }
  }
}

/** Portage's own leftovers in a DISTDIR: partial downloads and files it renamed after a failed check. */
function portageLeftover(name: string): string | undefined {
  if (name.startsWith('.')) return 'hidden file';
  if (name.endsWith('.__download__')) return 'partial download';
  if (name.includes('._checksum_failure_.')) return 'file Portage set aside after a checksum failure';
  return undefined;
}

async function readdirSorted(dir: string): Promise<Dirent[]> {
  return (await readdir(dir, { withFileTypes: true })).sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
}

/** Regular file (through symlinks) → its stats and resolved path; anything else → undefined. */
async function regularFile(file: string): Promise<{ abs: string; info: Stats } | undefined> {
  const own = await lstat(file);
  if (own.isFile()) return { abs: file, info: own };
  if (!own.isSymbolicLink()) return undefined;
  const abs = await realpath(file);
  const info = await stat(abs);
  return info.isFile() ? { abs, info } : undefined;
}

/**
 * Every file under root as path segments, depth first and sorted, skipping hidden directories.
 * An unreadable subdirectory is noted as failed (its files were not imported) and the walk goes on.
 */
async function* walk(root: string, notes: TreeNote[], segments: string[] = []): AsyncGenerator<string[]> {
  let entries: Dirent[];
  try {
    entries = await readdirSorted(path.join(root, ...segments));
  } catch (err) {
    if (segments.length === 0) throw err;
    notes.push({ rel: `${segments.join('/')}/`, kind: 'failed', reason: `cannot list directory: ${(err as Error).message}` });
    return;
  }
  for (const entry of entries) {
    if (entry.isDirectory()) {
      if (!entry.name.startsWith('.')) yield* walk(root, notes, [...segments, entry.name]);
    } else {
      yield [...segments, entry.name];
    }
  }
}

/** layout.conf → GLEP 75; `ab/cd/ef/<sha512>.blob` → BLOS; anything else → a flat DISTDIR. */
export async function detectTreeKind(root: string): Promise<TreeKind> {
  if (await regularFile(path.join(root, 'layout.conf')).catch(() => undefined)) return 'glep75';
  for (const a of await readdirSorted(root)) {
    if (!a.isDirectory() || !HEX2.test(a.name)) continue;
    for (const b of await readdirSorted(path.join(root, a.name))) {
      if (!b.isDirectory() || !HEX2.test(b.name)) continue;
      for (const c of await readdirSorted(path.join(root, a.name, b.name))) {
        if (!c.isDirectory() || !HEX2.test(c.name)) continue;
        const leaf = await readdir(path.join(root, a.name, b.name, c.name));
        if (leaf.some((n) => n.endsWith(BLOB_SUFFIX) && isSha512Hex(n.slice(0, -BLOB_SUFFIX.length)))) return 'blos';
      }
    }
  }
  return 'flat';
}

async function candidate(root: string, segments: string[], extra: Partial<Candidate>): Promise<Candidate | TreeNote> {
  const rel = segments.join('/');
  let file: Awaited<ReturnType<typeof regularFile>>;
  try {
    file = await regularFile(path.join(root, ...segments));
  } catch (err) {
    // A dangling symlink, or a file removed while the tree was being scanned.
    return { rel, kind: 'failed', reason: (err as Error).message };
  }
  if (!file) return { rel, kind: 'ignored', reason: 'not a regular file' };
  return { rel, abs: file.abs, size: file.info.size, inode: `${file.info.dev}:${file.info.ino}`, ...extra };
}

function push(scan: TreeScan, item: Candidate | TreeNote): void {
  if ('abs' in item) scan.candidates.push(item);
  else scan.notes.push(item);
}

export async function scanTree(root: string, kind: TreeKind): Promise<TreeScan> {
  const scan: TreeScan = { kind, layouts: [], candidates: [], notes: [] };
  if (kind === 'flat') await scanFlat(root, scan);
  else if (kind === 'glep75') await scanGlep75(root, scan);
  else await scanBlos(root, scan);
  return scan;
}

async function scanFlat(root: string, scan: TreeScan): Promise<void> {
  for (const entry of await readdirSorted(root)) {
    // DISTDIRs hold Portage's lock and VCS directories beside the distfiles; they are not distfiles.
    if (entry.isDirectory()) continue;
    const leftover = portageLeftover(entry.name) ?? filenameProblem(entry.name);
    if (leftover) push(scan, { rel: entry.name, kind: 'ignored', reason: leftover });
    else push(scan, await candidate(root, [entry.name], { filename: entry.name }));
  }
}

async function scanGlep75(root: string, scan: TreeScan): Promise<void> {
  let layouts: readonly LayoutEntry[] = ORIGIN_LAYOUTS;
  const conf = await readFile(path.join(root, 'layout.conf'), 'utf8').catch(() => undefined);
  if (conf !== undefined) {
    const parsed = parseLayoutConf(conf);
    const usable: LayoutEntry[] = [];
    for (const problem of parsed.problems) scan.notes.push({ rel: 'layout.conf', kind: 'ignored', reason: problem });
    for (const entry of parsed.entries) {
      const problem = importProblem(entry);
      if (problem) scan.notes.push({ rel: 'layout.conf', kind: 'ignored', reason: `layout "${describeLayout(entry)}" ignored: ${problem}` });
      else usable.push(entry);
    }
    // A layout.conf without a usable [structure] means flat to Portage, so it means flat here too.
    layouts = usable.length > 0 ? usable : [{ kind: 'flat' }];
  }
  scan.layouts = layouts.map(describeLayout);
  for await (const segments of walk(root, scan.notes)) {
    const rel = segments.join('/');
    if (rel === 'layout.conf') continue;
    const name = segments[segments.length - 1]!;
    const leftover = portageLeftover(name);
    if (leftover) {
      push(scan, { rel, kind: 'ignored', reason: leftover });
      continue;
    }
    let match: Match | undefined;
    for (const layout of layouts) if ((match = matchLayout(layout, segments))) break;
    if (!match) push(scan, { rel, kind: 'ignored', reason: 'matches no layout of layout.conf' });
    else push(scan, await candidate(root, segments, match));
  }
}

async function scanBlos(root: string, scan: TreeScan): Promise<void> {
  // Records and blobs sit side by side; pair them up per leaf directory.
  const leaves = new Map<string, { record?: string[]; blob?: string[] }>();
  for await (const segments of walk(root, scan.notes)) {
    const rel = segments.join('/');
    const name = segments[segments.length - 1]!;
    const isBlob = name.endsWith(BLOB_SUFFIX);
    const sha512 = isBlob ? name.slice(0, -BLOB_SUFFIX.length) : name;
    if (!isSha512Hex(sha512) || !sameDirs(segments, shardDirs(sha512, [8, 8, 8]))) {
      push(scan, { rel, kind: 'ignored', reason: 'not a BLOS record or blob at its hash path' });
      continue;
    }
    const pair = leaves.get(sha512) ?? {};
    if (isBlob) pair.blob = segments;
    else pair.record = segments;
    leaves.set(sha512, pair);
  }
  for (const [sha512, pair] of leaves) {
    if (!pair.blob) {
      push(scan, { rel: pair.record!.join('/'), kind: 'failed', reason: `record without its ${sha512.slice(0, 12)}….blob` });
      continue;
    }
    if (!pair.record) {
      // The path names the hash, so the bytes can still be verified in full.
      push(scan, await candidate(root, pair.blob, { claimed: { sha512 }, claimSource: 'its BLOS path' }));
      continue;
    }
    let claimed: ExpectedDigests | string;
    try {
      claimed = parseBlosRecord(await readFile(path.join(root, ...pair.record), 'utf8'));
    } catch (err) {
      claimed = `unreadable record: ${(err as Error).message}`;
    }
    if (typeof claimed === 'string') {
      push(scan, { rel: pair.record.join('/'), kind: 'corrupt', reason: claimed });
      continue;
    }
    if (claimed.sha512 !== undefined && claimed.sha512 !== sha512) {
      push(scan, { rel: pair.record.join('/'), kind: 'corrupt', reason: 'record names a different sha512 than its path' });
      continue;
    }
    push(scan, await candidate(root, pair.blob, { claimed: { ...claimed, sha512 }, claimSource: 'its BLOS record' }));
  }
}

/**
 * A BLOS record: {sha512, blake2b, sha256, size}, written by MongoDB tooling, so numbers may be canonical
 * extended JSON ({"$numberInt": "3"}, {"$numberLong": "…"}, {"$numberDouble": "3.0"}). Returns the
 * digests it claims, or why it cannot be used.
 */
export function parseBlosRecord(text: string): ExpectedDigests | string {
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch {
    return 'record is not JSON';
  }
  if (typeof doc !== 'object' || doc === null || Array.isArray(doc)) return 'record is not a JSON object';
  const record = doc as Record<string, unknown>;
  // Some writers nest the digests; accept both shapes, the top level winning.
  const nested = typeof record.hashes === 'object' && record.hashes !== null ? (record.hashes as Record<string, unknown>) : {};
  const field = (key: string) => record[key] ?? nested[key];
  const out: ExpectedDigests = {};
  for (const [key, valid] of [
    ['sha512', isSha512Hex],
    ['blake2b', isBlake2bHex],
    ['sha256', isSha256Hex],
  ] as const) {
    const value = field(key);
    if (value === undefined || value === null) continue;
    if (typeof value !== 'string' || !valid(value.toLowerCase())) return `record has a malformed ${key}`;
    out[key] = value.toLowerCase();
  }
  const size = field('size');
  if (size !== undefined && size !== null) {
    const n = extendedJsonNumber(size);
    if (n === undefined) return 'record has a malformed size';
    out.size = n;
  }
  return out;
}

/** A non-negative safe integer from plain JSON or MongoDB canonical extended JSON; undefined otherwise. */
export function extendedJsonNumber(value: unknown): number | undefined {
  let n: number;
  if (typeof value === 'number') n = value;
  else if (typeof value === 'object' && value !== null) {
    const keys = Object.keys(value);
    const key = keys[0];
    if (keys.length !== 1 || (key !== '$numberInt' && key !== '$numberLong' && key !== '$numberDouble')) return undefined;
    const inner = (value as Record<string, unknown>)[key];
    // Canonical form quotes the digits; relaxed writers sometimes leave a bare number inside.
    if (typeof inner === 'number') n = inner;
    else if (typeof inner === 'string' && /^\d+(\.0*)?$/.test(inner.trim())) n = Number(inner);
    else return undefined;
  } else return undefined;
  return Number.isSafeInteger(n) && n >= 0 ? n : undefined;
}
