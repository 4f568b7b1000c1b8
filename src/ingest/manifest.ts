import { createReadStream } from 'node:fs';
import { createInterface } from 'node:readline';
import { isBlake2bHex, isSha512Hex } from '../domain/hashes.js';

/** One `DIST <name> <size> BLAKE2B <hex> SHA512 <hex>` line of a Gentoo Manifest. */
export interface DistEntry {
  filename: string;
  size: number;
  sha512?: string;
  blake2b?: string;
  /** `file:line`, for reports. */
  source: string;
}

export interface ManifestSet {
  entries: DistEntry[];
  byName: Map<string, DistEntry>;
  bySha512: Map<string, DistEntry[]>;
  /** Lines that are not valid DIST lines, and names two Manifests disagree about. */
  warnings: string[];
}

/**
 * Reads Manifests line by line (a thick tree's Manifests add up to many MiB).
 * Only DIST lines matter here; EBUILD/AUX/MISC lines describe repository files, not distfiles.
 */
export async function readManifests(files: string[]): Promise<ManifestSet> {
  const set: ManifestSet = { entries: [], byName: new Map(), bySha512: new Map(), warnings: [] };
  for (const file of files) {
    const lines = createInterface({ input: createReadStream(file, 'utf8'), crlfDelay: Infinity });
    let lineNo = 0;
    for await (const line of lines) {
      lineNo++;
      const source = `${file}:${lineNo}`;
      const entry = parseManifestLine(line, source);
      if (entry === undefined) continue;
      if (typeof entry === 'string') {
        set.warnings.push(`${source}: ${entry}`);
        continue;
      }
      const known = set.byName.get(entry.filename);
      if (known) {
        if (known.sha512 !== entry.sha512 || known.size !== entry.size) {
          set.warnings.push(`${source}: ${entry.filename} disagrees with ${known.source}; keeping the first`);
        }
        continue;
      }
      set.entries.push(entry);
      set.byName.set(entry.filename, entry);
      if (entry.sha512) set.bySha512.set(entry.sha512, [...(set.bySha512.get(entry.sha512) ?? []), entry]);
    }
  }
  return set;
}

/** A DistEntry, the reason a DIST line is malformed, or undefined for every other kind of line. */
export function parseManifestLine(line: string, source: string): DistEntry | string | undefined {
  const parts = line.trim().split(/\s+/);
  return parts[0] === 'DIST' ? parseDist(parts, source) : undefined;
}

function parseDist(parts: string[], source: string): DistEntry | string {
  const [, filename, sizeText, ...hashes] = parts;
  if (!filename || !sizeText || !/^\d{1,16}$/.test(sizeText)) return 'malformed DIST line';
  if (hashes.length % 2 !== 0) return 'DIST hashes must come in NAME value pairs';
  const entry: DistEntry = { filename, size: Number(sizeText), source };
  for (let i = 0; i < hashes.length; i += 2) {
    const algo = hashes[i]!;
    const value = hashes[i + 1]!.toLowerCase();
    if (algo === 'SHA512') {
      if (!isSha512Hex(value)) return 'SHA512 must be 128 hex digits';
      entry.sha512 = value;
    } else if (algo === 'BLAKE2B') {
      if (!isBlake2bHex(value)) return 'BLAKE2B must be 128 hex digits';
      entry.blake2b = value;
    }
    // Other algorithms (SHA256, RMD160, WHIRLPOOL in old Manifests) are not kept by the index.
  }
  return entry;
}
