import path from 'node:path';
import { createHash } from 'node:crypto';

const SHA512_HEX = /^[0-9a-f]{128}$/;
const BLAKE2B_HEX = /^[0-9a-f]{128}$/;
const SHA256_HEX = /^[0-9a-f]{64}$/;

export function isSha512Hex(value: string): boolean {
  return SHA512_HEX.test(value);
}
export function isBlake2bHex(value: string): boolean {
  return BLAKE2B_HEX.test(value);
}
export function isSha256Hex(value: string): boolean {
  return SHA256_HEX.test(value);
}

/** `ab/cd/ef/<hash>`: the GLEP 75 `content-hash SHA512 8:8:8` shape; depends on the hash alone. */
export function shardedPath(sha512: string): string {
  return `${sha512.slice(0, 2)}/${sha512.slice(2, 4)}/${sha512.slice(4, 6)}/${sha512}`;
}

export function blobFile(blobsDir: string, sha512: string): string {
  return path.join(blobsDir, sha512.slice(0, 2), sha512.slice(2, 4), sha512.slice(4, 6), sha512);
}

/** First two hex digits of BLAKE2B-512 over the UTF-8 name: GLEP 75 `filename-hash BLAKE2B 8`. */
export function filenameHashDir(filename: string): string {
  return createHash('blake2b512').update(filename, 'utf8').digest('hex').slice(0, 2);
}

/**
 * A distfile name is a single path segment: no separators, no NUL or control characters,
 * not `.`/`..`, at most 255 bytes of UTF-8 (the usual filesystem limit). Returns the reason when invalid.
 */
export function filenameProblem(name: string): string | undefined {
  if (name.length === 0) return 'filename is empty';
  if (Buffer.byteLength(name, 'utf8') > 255) return 'filename is longer than 255 bytes';
  if (name === '.' || name === '..' || name.includes('..')) return 'filename must not contain ".."';
  if (name.includes('/') || name.includes('\\')) return 'filename must not contain a path separator';
  // eslint-disable-next-line no-control-regex
  if (/[\u0000-\u001f\u007f]/.test(name)) return 'filename must not contain control characters';
  if (!name.isWellFormed()) return 'filename is not valid Unicode';
  return undefined;
}
