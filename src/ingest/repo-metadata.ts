/**
 * Pure parsing of Portage repository metadata: md5-cache entries (SRC_URI, RESTRICT),
 * profiles/thirdpartymirrors and mirror:// expansion. No I/O here; repo-scan.ts reads the files.
 *
 * An origin must hold every file any configuration can ask for, so every USE-conditional branch
 * (`flag? ( … )`, `!flag? ( … )`) and every alternative of `|| ( … )` is taken.
 */

/** One file named by SRC_URI, with the URIs that can provide it (in SRC_URI order). */
export interface SrcUriFile {
  filename: string;
  /** As written, after mirror:// is left unexpanded and EAPI 8 `fetch+`/`mirror+` prefixes are stripped. */
  uris: string[];
  /** EAPI 8: some URI carried `fetch+` (lifts fetch and mirror restriction) or `mirror+` (lifts mirror restriction). */
  fetchLifted: boolean;
  mirrorLifted: boolean;
}

export interface Restrictions {
  fetch: boolean;
  mirror: boolean;
  /** Portage tries SRC_URI before GENTOO_MIRRORS. */
  primaryuri: boolean;
}

const GROUP_OPERATORS = new Set(['||', '^^', '??']);

function isConditional(token: string): boolean {
  return token.endsWith('?') && token.length > 1 && !GROUP_OPERATORS.has(token);
}

/**
 * The leaves of a dependency-style string, every branch taken: parentheses, conditionals and
 * group operators are structure, everything else is a leaf. Structure errors (unbalanced
 * parentheses, a conditional not followed by a group) are reported, not thrown: one broken
 * cache entry must not stop a repository-wide sync.
 */
export function leaves(text: string): { tokens: string[]; problems: string[] } {
  const tokens: string[] = [];
  const problems: string[] = [];
  let depth = 0;
  const words = text.split(/\s+/).filter(Boolean);
  for (let i = 0; i < words.length; i++) {
    const word = words[i]!;
    if (word === '(') depth++;
    else if (word === ')') {
      if (depth === 0) problems.push('unbalanced ")"');
      else depth--;
    } else if (isConditional(word) || GROUP_OPERATORS.has(word)) {
      if (words[i + 1] !== '(') problems.push(`"${word}" is not followed by "("`);
    } else tokens.push(word);
  }
  if (depth > 0) problems.push('unbalanced "("');
  return { tokens, problems };
}

/** The file name Portage gives a URI without an arrow: everything after the last slash, as written. */
export function uriBasename(uri: string): string {
  return uri.slice(uri.lastIndexOf('/') + 1);
}

/**
 * SRC_URI as written in an md5-cache entry. A URI may be followed by `-> name`; a bare word with
 * no scheme is a file name without a URI (fetch-restricted packages). Names are taken literally:
 * a Go module file's `%2F` or `!` is part of the name, never decoded.
 */
export function parseSrcUri(text: string): { files: SrcUriFile[]; problems: string[] } {
  const { tokens, problems } = leaves(text);
  const byName = new Map<string, SrcUriFile>();
  const add = (filename: string, uri: string | undefined, prefix: 'fetch' | 'mirror' | undefined) => {
    let file = byName.get(filename);
    if (!file) byName.set(filename, (file = { filename, uris: [], fetchLifted: false, mirrorLifted: false }));
    if (uri !== undefined && !file.uris.includes(uri)) file.uris.push(uri);
    if (prefix === 'fetch') file.fetchLifted = true;
    if (prefix === 'mirror') file.mirrorLifted = true;
  };
  for (let i = 0; i < tokens.length; i++) {
    let word = tokens[i]!;
    if (word === '->') {
      problems.push('"->" without a URI before it');
      i++;
      continue;
    }
    let prefix: 'fetch' | 'mirror' | undefined;
    const lifted = /^(fetch|mirror)\+(?=[a-z][a-z0-9+.-]*:\/\/)/i.exec(word);
    if (lifted) {
      prefix = lifted[1]!.toLowerCase() as 'fetch' | 'mirror';
      word = word.slice(lifted[0].length);
    }
    const isUri = /^[a-z][a-z0-9+.-]*:\/\//i.test(word);
    if (tokens[i + 1] === '->') {
      const name = tokens[i + 2];
      if (name === undefined || name === '->' || !isUri) {
        problems.push(`bad arrow after "${word}"`);
        i += 2;
        continue;
      }
      add(name, word, prefix);
      i += 2;
    } else if (isUri) {
      const name = uriBasename(word);
      if (name === '') problems.push(`"${word}" names no file`);
      else add(name, word, prefix);
    } else add(word, undefined, undefined);
  }
  return { files: [...byName.values()], problems };
}

/** RESTRICT, every branch taken: a restriction under any condition applies (an origin cannot know the USE flags). */
export function parseRestrict(text: string | undefined): Restrictions {
  const words = new Set(text ? leaves(text).tokens : []);
  return { fetch: words.has('fetch'), mirror: words.has('mirror'), primaryuri: words.has('primaryuri') };
}

/** `KEY=value` lines of a metadata/md5-cache entry; only the keys sync-repo needs are kept. */
export function parseMd5CacheEntry(text: string): { srcUri: string; restrict: string } {
  let srcUri = '';
  let restrict = '';
  for (const line of text.split('\n')) {
    if (line.startsWith('SRC_URI=')) srcUri = line.slice('SRC_URI='.length);
    else if (line.startsWith('RESTRICT=')) restrict = line.slice('RESTRICT='.length);
  }
  return { srcUri, restrict };
}

/** profiles/thirdpartymirrors: `name url url …` per line, `#` comments. */
export function parseThirdpartyMirrors(text: string): Map<string, string[]> {
  const mirrors = new Map<string, string[]>();
  for (const raw of text.split('\n')) {
    const line = raw.replace(/#.*$/, '').trim();
    if (line === '') continue;
    const [name, ...urls] = line.split(/\s+/);
    if (!name || urls.length === 0) continue;
    mirrors.set(name, [...(mirrors.get(name) ?? []), ...urls]);
  }
  return mirrors;
}

/**
 * `mirror://NAME/path` → one URL per listed mirror, in the file's order (Portage shuffles them;
 * a deterministic order keeps runs comparable). Other URIs pass through. An unknown NAME yields
 * nothing: Portage cannot fetch it either.
 */
export function expandMirrorUri(uri: string, mirrors: ReadonlyMap<string, readonly string[]>): string[] {
  const m = /^mirror:\/\/([^/]+)\/(.*)$/.exec(uri);
  if (!m) return [uri];
  return (mirrors.get(m[1]!) ?? []).map((base) => `${base.replace(/\/+$/, '')}/${m[2]}`);
}

/** What the fetcher (and the fetch API) accepts: a parsable http(s) URL without credentials. */
export function isHttpUrl(url: string): boolean {
  try {
    const parsed = new URL(url);
    return (parsed.protocol === 'http:' || parsed.protocol === 'https:') && !parsed.username && !parsed.password;
  } catch {
    return false;
  }
}

export interface FilePolicy {
  /** Listed, never fetched (unless the operator insists). */
  fetchRestricted: boolean;
  /** Only SRC_URI may be used: the configured mirrors must not be asked. */
  mirrorRestricted: boolean;
  primaryUriFirst: boolean;
}

/** RESTRICT=fetch implies mirror; EAPI 8 `fetch+`/`mirror+` lift them for the file's URIs. */
export function filePolicy(restrict: Restrictions, file: Pick<SrcUriFile, 'fetchLifted' | 'mirrorLifted'>): FilePolicy {
  const fetchRestricted = restrict.fetch && !file.fetchLifted;
  const mirrorRestricted = (restrict.mirror || restrict.fetch) && !(file.mirrorLifted || file.fetchLifted);
  return { fetchRestricted, mirrorRestricted, primaryUriFirst: restrict.primaryuri };
}

/**
 * Where to fetch a file from, in order: the configured mirrors first (as Portage tries
 * GENTOO_MIRRORS first), then SRC_URI's URLs — SRC_URI first under RESTRICT=primaryuri, SRC_URI
 * only when mirroring is restricted. Only http(s) URLs are kept (the fetcher speaks nothing else);
 * duplicates are dropped.
 */
export function candidateUrls(policy: FilePolicy, mirrorUrls: readonly string[], srcUrls: readonly string[]): string[] {
  const ordered = policy.mirrorRestricted
    ? srcUrls
    : policy.primaryUriFirst
      ? [...srcUrls, ...mirrorUrls]
      : [...mirrorUrls, ...srcUrls];
  return [...new Set(ordered.filter(isHttpUrl))];
}
