import { describe, expect, it } from 'vitest';
import {
  candidateUrls,
  expandMirrorUri,
  filePolicy,
  leaves,
  parseMd5CacheEntry,
  parseRestrict,
  parseSrcUri,
  parseThirdpartyMirrors,
} from '../src/ingest/repo-metadata.js';
import { parseManifestLine } from '../src/ingest/manifest.js';

const H = (c: string) => c.repeat(128);

describe('SRC_URI parsing', () => {
  it('takes every USE branch, nested groups, ||, and arrows', () => {
    const text =
      'https://a.example/foo-1.0.tar.gz ssl? ( https://b.example/ssl-1.tar.xz -> foo-ssl-1.tar.xz !ssl? ( mirror://sourceforge/nossl/n.zip ) ) ' +
      '|| ( https://c.example/alt-a.tar.gz https://d.example/alt-b.tar.gz ) doc? ( !minimal? ( https://e.example/v1/doc.tar.bz2 -> foo-doc-1.tar.bz2 ) )';
    const { files, problems } = parseSrcUri(text);
    expect(problems).toEqual([]);
    expect(files.map((f) => [f.filename, f.uris])).toEqual([
      ['foo-1.0.tar.gz', ['https://a.example/foo-1.0.tar.gz']],
      ['foo-ssl-1.tar.xz', ['https://b.example/ssl-1.tar.xz']],
      ['n.zip', ['mirror://sourceforge/nossl/n.zip']],
      ['alt-a.tar.gz', ['https://c.example/alt-a.tar.gz']],
      ['alt-b.tar.gz', ['https://d.example/alt-b.tar.gz']],
      ['foo-doc-1.tar.bz2', ['https://e.example/v1/doc.tar.bz2']],
    ]);
  });

  it('merges URIs for a name given twice and keeps a name without a URI', () => {
    const { files } = parseSrcUri('x? ( https://a/f.tgz ) !x? ( https://b/f.tgz https://a/f.tgz ) restricted-1.0.bin');
    expect(files).toEqual([
      { filename: 'f.tgz', uris: ['https://a/f.tgz', 'https://b/f.tgz'], fetchLifted: false, mirrorLifted: false },
      { filename: 'restricted-1.0.bin', uris: [], fetchLifted: false, mirrorLifted: false },
    ]);
  });

  it('takes names literally: Go module escapes, %20, ~, + and 128 hex digits are never decoded', () => {
    const go = 'github.com%2F!azure%2Fazure-sdk-for-go%2F@v%2Fv40.3.0+incompatible.mod';
    const hexName = `blob-${H('a')}.tar.gz`;
    const { files } = parseSrcUri(
      `https://proxy.golang.org/github.com/%21azure/azure-sdk-for-go/@v/v40.3.0+incompatible.mod -> ${go} ` +
        `https://x.example/a%20b~1.tar.gz https://x.example/dl/${hexName}`,
    );
    expect(files.map((f) => f.filename)).toEqual([go, 'a%20b~1.tar.gz', hexName]);
    expect(files[0]!.uris).toEqual(['https://proxy.golang.org/github.com/%21azure/azure-sdk-for-go/@v/v40.3.0+incompatible.mod']);
  });

  it('strips EAPI 8 fetch+/mirror+ prefixes and remembers what they lift', () => {
    const { files } = parseSrcUri('fetch+https://a/one.tgz mirror+https://b/two.tgz -> two-1.tgz');
    expect(files).toEqual([
      { filename: 'one.tgz', uris: ['https://a/one.tgz'], fetchLifted: true, mirrorLifted: false },
      { filename: 'two-1.tgz', uris: ['https://b/two.tgz'], fetchLifted: false, mirrorLifted: true },
    ]);
  });

  it('reports broken structure instead of throwing', () => {
    expect(leaves('a? ( b').problems).toEqual(['unbalanced "("']);
    expect(leaves('a ) b').problems).toEqual(['unbalanced ")"']);
    expect(leaves('use? b').problems).toEqual(['"use?" is not followed by "("']);
    expect(parseSrcUri('https://a/x.tgz ->').problems).toEqual(['bad arrow after "https://a/x.tgz"']);
    expect(parseSrcUri('https://a/dir/').problems).toEqual(['"https://a/dir/" names no file']);
  });
});

describe('RESTRICT and policies', () => {
  it('honours restrictions under any condition', () => {
    expect(parseRestrict('!test? ( test ) bindist? ( mirror )')).toEqual({ fetch: false, mirror: true, primaryuri: false });
    expect(parseRestrict('fetch strip')).toEqual({ fetch: true, mirror: false, primaryuri: false });
    expect(parseRestrict(undefined)).toEqual({ fetch: false, mirror: false, primaryuri: false });
  });

  it('fetch implies mirror; fetch+ lifts both, mirror+ lifts mirror', () => {
    const plain = { fetchLifted: false, mirrorLifted: false };
    expect(filePolicy({ fetch: true, mirror: false, primaryuri: false }, plain)).toEqual({ fetchRestricted: true, mirrorRestricted: true, primaryUriFirst: false });
    expect(filePolicy({ fetch: true, mirror: false, primaryuri: false }, { ...plain, fetchLifted: true })).toEqual({
      fetchRestricted: false,
      mirrorRestricted: false,
      primaryUriFirst: false,
    });
    expect(filePolicy({ fetch: false, mirror: true, primaryuri: false }, { ...plain, mirrorLifted: true }).mirrorRestricted).toBe(false);
  });

  it('orders candidates: configured mirrors first, SRC_URI only when mirror-restricted, SRC_URI first under primaryuri', () => {
    const mirrors = ['http://m1/f', 'http://m2/f'];
    const src = ['https://s1/f', 'ftp://s2/f', 'https://u:p@s3/f', 'https://s4/f', 'http://m1/f'];
    const base = { fetchRestricted: false, mirrorRestricted: false, primaryUriFirst: false };
    expect(candidateUrls(base, mirrors, src)).toEqual(['http://m1/f', 'http://m2/f', 'https://s1/f', 'https://s4/f']);
    expect(candidateUrls({ ...base, mirrorRestricted: true }, mirrors, src)).toEqual(['https://s1/f', 'https://s4/f', 'http://m1/f']);
    expect(candidateUrls({ ...base, primaryUriFirst: true }, mirrors, src)).toEqual(['https://s1/f', 'https://s4/f', 'http://m1/f', 'http://m2/f']);
  });
});

describe('md5-cache, thirdpartymirrors, Manifest lines', () => {
  it('reads SRC_URI and RESTRICT from a cache entry', () => {
    const entry = 'DEFINED_PHASES=compile\nEAPI=8\nRESTRICT=mirror\nSRC_URI=https://a/x.tgz\n_md5_=abc\n';
    expect(parseMd5CacheEntry(entry)).toEqual({ srcUri: 'https://a/x.tgz', restrict: 'mirror' });
    expect(parseMd5CacheEntry('EAPI=8\n')).toEqual({ srcUri: '', restrict: '' });
  });

  it('expands mirror:// into every listed mirror, in order; unknown mirrors give nothing', () => {
    const mirrors = parseThirdpartyMirrors('# comment\nsourceforge https://downloads.sf.net/ http://sf2.example/x\n\ngnu https://ftp.gnu.org/gnu # tail\n');
    expect([...mirrors.keys()]).toEqual(['sourceforge', 'gnu']);
    expect(expandMirrorUri('mirror://sourceforge/proj/f.tgz', mirrors)).toEqual([
      'https://downloads.sf.net/proj/f.tgz',
      'http://sf2.example/x/proj/f.tgz',
    ]);
    expect(expandMirrorUri('mirror://nowhere/f.tgz', mirrors)).toEqual([]);
    expect(expandMirrorUri('https://a/f.tgz', mirrors)).toEqual(['https://a/f.tgz']);
  });

  it('reads DIST lines with digests in any order, partial digests, and unknown algorithms', () => {
    expect(parseManifestLine(`DIST a.tgz 10 SHA512 ${H('1')} SHA256 ${'2'.repeat(64)} BLAKE2B ${H('3')}`, 'M:1')).toEqual({
      filename: 'a.tgz',
      size: 10,
      sha512: H('1'),
      blake2b: H('3'),
      source: 'M:1',
    });
    expect(parseManifestLine(`DIST b.tgz 3 BLAKE2B ${H('A')}`, 'M:2')).toEqual({ filename: 'b.tgz', size: 3, blake2b: H('a'), source: 'M:2' });
    expect(parseManifestLine('EBUILD foo-1.ebuild 10 SHA512 x', 'M:3')).toBeUndefined();
    expect(parseManifestLine('DIST c.tgz ten', 'M:4')).toBe('malformed DIST line');
  });
});
