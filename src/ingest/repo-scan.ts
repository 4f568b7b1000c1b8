import { open, readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { parseManifestLine } from './manifest.js';
import {
  expandMirrorUri,
  filePolicy,
  parseMd5CacheEntry,
  parseRestrict,
  parseSrcUri,
  parseThirdpartyMirrors,
  type FilePolicy,
} from './repo-metadata.js';

/** One DIST entry of a repository, joined with what its ebuilds' SRC_URI say about it. */
export interface RepoDistfile {
  repository: string;
  filename: string;
  size: number;
  sha512?: string;
  blake2b?: string;
  /** `Manifest:line`, for reports. */
  source: string;
  /** SRC_URI URIs naming the file, mirror:// expanded, in order (any scheme: the caller keeps what it can fetch). */
  srcUrls: string[];
  policy: FilePolicy;
  /** No md5-cache entry names the file (a stale Manifest, or a repository without metadata). */
  unreferenced: boolean;
}

export type Warn = (message: string) => void;

/** Files read at once: enough to hide latency on a cold disk, few enough to stay polite to it. */
const READ_AHEAD = 16;
/** Directories at the top of a repository that are never categories. */
const NOT_CATEGORIES = new Set(['metadata', 'profiles', 'eclass', 'licenses', 'scripts', 'distfiles', 'packages']);

async function listDir(dir: string, kind: 'dirs' | 'files'): Promise<string[]> {
  const entries = await readdir(dir, { withFileTypes: true }).catch((err: NodeJS.ErrnoException) =>
    err.code === 'ENOENT' || err.code === 'ENOTDIR' ? [] : Promise.reject(err),
  );
  return entries
    .filter((e) => (kind === 'dirs' ? e.isDirectory() : e.isFile()) && !e.name.startsWith('.'))
    .map((e) => e.name)
    .sort();
}

async function readOptional(file: string): Promise<string | undefined> {
  return readFile(file, 'utf8').catch((err: NodeJS.ErrnoException) => (err.code === 'ENOENT' ? undefined : Promise.reject(err)));
}

/** thirdpartymirrors of the masters, then the repository's own (which win, as in Portage's stacking). */
export async function loadThirdpartyMirrors(dirs: string[]): Promise<Map<string, string[]>> {
  const merged = new Map<string, string[]>();
  for (const dir of dirs) {
    const text = await readOptional(path.join(dir, 'profiles', 'thirdpartymirrors'));
    if (text !== undefined) for (const [name, urls] of parseThirdpartyMirrors(text)) merged.set(name, urls);
  }
  return merged;
}

/** profiles/categories plus whatever md5-cache has; failing both, the top-level directories. */
async function categories(root: string): Promise<string[]> {
  const listed = (await readOptional(path.join(root, 'profiles', 'categories')))?.split('\n').map((l) => l.trim()).filter((l) => l && !l.startsWith('#')) ?? [];
  const cached = await listDir(path.join(root, 'metadata', 'md5-cache'), 'dirs');
  const found = new Set([...listed, ...cached]);
  if (found.size === 0) for (const dir of await listDir(root, 'dirs')) if (!NOT_CATEGORIES.has(dir)) found.add(dir);
  return [...found].sort();
}

/** Runs `work` over `items` with a bounded number in flight, keeping results in input order. */
async function mapBounded<T, R>(items: T[], work: (item: T) => Promise<R>): Promise<R[]> {
  const out = new Array<R>(items.length);
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(READ_AHEAD, items.length) }, async () => {
      while (next < items.length) {
        const i = next++;
        out[i] = await work(items[i]!);
      }
    }),
  );
  return out;
}

interface Reference {
  srcUrls: string[];
  /** Combined over every ebuild naming the file: restricted only if every one of them restricts it. */
  fetchRestricted: boolean;
  mirrorRestricted: boolean;
  primaryUriFirst: boolean;
}

/** SRC_URI of every md5-cache entry of one category, by file name. */
async function categoryReferences(root: string, category: string, mirrors: ReadonlyMap<string, readonly string[]>, warn: Warn) {
  const dir = path.join(root, 'metadata', 'md5-cache', category);
  const refs = new Map<string, Reference>();
  const entries = await listDir(dir, 'files');
  // Parsed as read, so only the small results of a category are held, never its entries' text.
  const parsedEntries = await mapBounded(entries, async (name) => {
    const { srcUri, restrict } = parseMd5CacheEntry(await readFile(path.join(dir, name), 'utf8'));
    return { parsed: parseSrcUri(srcUri), restrictions: parseRestrict(restrict) };
  });
  entries.forEach((name, i) => {
    const { parsed, restrictions } = parsedEntries[i]!;
    const where = `${category}/${name}`;
    for (const problem of parsed.problems) warn(`${where}: SRC_URI: ${problem}`);
    for (const file of parsed.files) {
      const policy = filePolicy(restrictions, file);
      const urls = file.uris.flatMap((uri) => {
        const expanded = expandMirrorUri(uri, mirrors);
        if (expanded.length === 0) warn(`${where}: ${uri}: no such mirror in thirdpartymirrors`);
        return expanded;
      });
      const ref = refs.get(file.filename);
      if (!ref) {
        refs.set(file.filename, { srcUrls: [...new Set(urls)], ...policy });
        continue;
      }
      for (const url of urls) if (!ref.srcUrls.includes(url)) ref.srcUrls.push(url);
      ref.fetchRestricted &&= policy.fetchRestricted;
      ref.mirrorRestricted &&= policy.mirrorRestricted;
      ref.primaryUriFirst ||= policy.primaryUriFirst;
    }
  });
  return refs;
}

/**
 * Every DIST entry of a repository, category by category: only one category's md5-cache index is
 * held at a time and Manifests are streamed line by line, so a 10,000-ebuild tree never sits in
 * memory whole. Malformed lines and entries are reported through `warn` and skipped.
 */
export async function* scanRepository(
  root: string,
  mirrors: ReadonlyMap<string, readonly string[]>,
  warn: Warn,
): AsyncGenerator<RepoDistfile> {
  if ((await listDir(path.join(root, 'metadata', 'md5-cache'), 'dirs')).length === 0) {
    warn(`${root}: no metadata/md5-cache (generate it with egencache): SRC_URI is unknown, only the configured upstreams can be asked`);
  }
  for (const category of await categories(root)) {
    const refs = await categoryReferences(root, category, mirrors, warn);
    for (const pkg of await listDir(path.join(root, category), 'dirs')) {
      // A package directory without a Manifest (nothing to fetch) is normal in thin trees.
      const handle = await open(path.join(root, category, pkg, 'Manifest')).catch((err: NodeJS.ErrnoException) =>
        err.code === 'ENOENT' ? undefined : Promise.reject(err),
      );
      if (!handle) continue;
      const lines = createInterface({ input: handle.createReadStream({ encoding: 'utf8' }), crlfDelay: Infinity });
      let lineNo = 0;
      try {
        for await (const line of lines) {
          lineNo++;
          const source = `${path.join(category, pkg, 'Manifest')}:${lineNo}`;
          const entry = parseManifestLine(line, source);
          if (entry === undefined) continue;
          if (typeof entry === 'string') {
            warn(`${source}: ${entry}`);
            continue;
          }
          const ref = refs.get(entry.filename);
          yield {
            repository: root,
            filename: entry.filename,
            size: entry.size,
            ...(entry.sha512 !== undefined ? { sha512: entry.sha512 } : {}),
            ...(entry.blake2b !== undefined ? { blake2b: entry.blake2b } : {}),
            source,
            srcUrls: ref?.srcUrls ?? [],
            policy: {
              fetchRestricted: ref?.fetchRestricted ?? false,
              mirrorRestricted: ref?.mirrorRestricted ?? false,
              primaryUriFirst: ref?.primaryUriFirst ?? false,
            },
            unreferenced: ref === undefined,
          };
        }
      } finally {
        lines.close();
        await handle.close().catch(() => undefined);
      }
    }
  }
}
