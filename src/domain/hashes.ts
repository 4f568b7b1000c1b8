/** The digests the index keeps, as lower-case hex: exactly what Manifests and hash paths carry. */
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
