/**
 * What a download names: a blob by its SHA512 (exact, immutable), or by a distfile name (resolved through the
 * index to its most recently attached hash). `form` records which GLEP 75 path the name arrived by.
 */
export type BlobTarget =
  | { kind: 'hash'; sha512: string }
  | { kind: 'name'; filename: string; form: 'flat' | 'filename-hash' };
