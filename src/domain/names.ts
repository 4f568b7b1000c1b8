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
