import { describe, expect, it } from 'vitest';
import {
  describeLayout,
  filenameHashDir,
  layoutSegments,
  ORIGIN_LAYOUT_CONF,
  ORIGIN_LAYOUTS,
  parseLayoutConf,
  shardDirs,
  shardedPath,
} from '../src/domain/layout.js';
import { filenameProblem } from '../src/domain/names.js';
import { isSha512Hex } from '../src/domain/hashes.js';

const SHA512_HELLO =
  'e7c22b994c59d9cf2b48e549b1e24666636045930d3da7c1acb299d1c3b7f931f94aae41edda2c2b207a36e10f8bcb8d45223e54878f5b316e7ce3b6bc019629';
const entries = (text: string) => parseLayoutConf(text).entries.map(describeLayout);

describe('layout.conf, read as Portage reads it', () => {
  it('the origin publishes exactly what it serves from', () => {
    expect(parseLayoutConf(ORIGIN_LAYOUT_CONF)).toEqual({ entries: ORIGIN_LAYOUTS, problems: [] });
  });

  it('reads keys 0, 1, 2… and stops at the first missing number', () => {
    const parsed = parseLayoutConf('[structure]\n0=flat\n2=content-hash SHA512 8:8:8\n');
    expect(parsed.entries).toEqual([{ kind: 'flat' }]);
    expect(parsed.problems).toEqual([expect.stringMatching(/key "2" ignored/)]);
    // "00" is not the key "0" to Python's ConfigParser.
    expect(entries('[structure]\n00=content-hash SHA512 8:8:8\n')).toEqual([]);
  });

  it('skips entries Portage rejects and tries the next', () => {
    const parsed = parseLayoutConf(
      [
        '[structure]',
        '0=content-hash sha512 8:8:8', // algorithm names are upper case
        '1=filename-hash BLAKE2B 6', // cutoffs are multiples of 4
        '2=flat extra',
        '3=filename-hash BLAKE2B',
        '4=mirror-hash SHA512 8',
        '5=filename-hash BLAKE2B 8',
        '',
      ].join('\n'),
    );
    expect(parsed.entries.map(describeLayout)).toEqual(['filename-hash BLAKE2B 8']);
    expect(parsed.problems).toHaveLength(5);
    expect(parsed.problems[0]).toBe('layout "content-hash sha512 8:8:8" ignored: unknown algorithm sha512');
  });

  it('speaks ConfigParser: ":" delimiters, whole-line comments, continuations, [DEFAULT], CRLF', () => {
    expect(entries('; c\n[structure]\n0 : content-hash\n   SHA512 8:8:8\n1=flat\n')).toEqual(['content-hash SHA512 8:8:8', 'flat']);
    expect(entries('[DEFAULT]\n1=flat\n[structure]\r\n0=filename-hash BLAKE2B 8\r\n')).toEqual(['filename-hash BLAKE2B 8', 'flat']);
    // An inline comment is part of the value to ConfigParser, so "flat # x" is not a valid flat entry.
    expect(entries('[structure]\n0=flat # x\n1=filename-hash BLAKE2B 8\n')).toEqual(['filename-hash BLAKE2B 8']);
  });

  it('a file ConfigParser refuses means flat: no entries', () => {
    for (const text of ['0=flat\n', '\uFEFF[structure]\n0=flat\n', '[structure]\nnot an option\n', '[structure]\n0=flat\n0=flat\n', '[structure]\n[structure]\n', '[other]\n0=flat\n']) {
      const parsed = parseLayoutConf(text);
      expect(parsed.entries, text).toEqual([]);
      expect(parsed.problems, text).toHaveLength(1);
    }
  });
});

describe('layout paths', () => {
  it('shards a digest by its cutoffs', () => {
    expect(shardDirs('abcdef0123', [8, 8, 8])).toEqual(['ab', 'cd', 'ef']);
    expect(shardDirs('abcdef0123', [4, 12])).toEqual(['a', 'bcd']);
    expect(shardedPath(SHA512_HELLO)).toBe(`e7/c2/2b/${SHA512_HELLO}`);
  });

  it('files the worked examples of the domain where Portage looks for them', () => {
    const [contentHash, filenameHash, flat] = ORIGIN_LAYOUTS as [never, never, never];
    const byHash = { kind: 'hash', sha512: SHA512_HELLO } as const;
    const byName = (filename: string) => ({ kind: 'name', filename, form: 'flat' }) as const;
    expect(layoutSegments(contentHash, byHash)).toEqual(['e7', 'c2', '2b', SHA512_HELLO]);
    expect(layoutSegments(flat, byHash)).toBeUndefined();
    expect(layoutSegments(contentHash, byName('foo-1.0.tar.gz'))).toBeUndefined();
    expect(layoutSegments(filenameHash, byName('foo-1.0.tar.gz'))).toEqual(['4b', 'foo-1.0.tar.gz']);
    expect(filenameHashDir('libsigc++-2.10.8.tar.xz')).toBe('b4');
    expect(filenameHashDir('linux-6.6.tar.xz')).toBe('d5');
    expect(layoutSegments(flat, byName('foo-1.0.tar.gz'))).toEqual(['foo-1.0.tar.gz']);
  });
});

describe('names and hashes', () => {
  it('a distfile name is one path segment', () => {
    expect(filenameProblem('foo-1.0.tar.gz')).toBeUndefined();
    expect(filenameProblem('a/b')).toMatch(/separator/);
    expect(filenameProblem('..')).toMatch(/\.\./);
    expect(filenameProblem('x'.repeat(256))).toMatch(/255 bytes/);
    expect(isSha512Hex(SHA512_HELLO)).toBe(true);
    expect(isSha512Hex(SHA512_HELLO.toUpperCase())).toBe(false);
  });
});
