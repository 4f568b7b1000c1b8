import { createHash } from 'node:crypto';
import { readdir } from 'node:fs/promises';
import path from 'node:path';
import { Client } from 'undici';
import { ADMIN_TOKEN, type TestServer } from './server.js';

export const sha512 = (b: Buffer | string) => createHash('sha512').update(b).digest('hex');
export const blake2b = (b: Buffer | string) => createHash('blake2b512').update(b).digest('hex');
export const sha256 = (b: Buffer | string) => createHash('sha256').update(b).digest('hex');

/** Every digest the index keeps of a body, as a store's verified write returns them. */
export function digestsOf(text: Buffer | string): { size: number; sha512: string; blake2b: string; sha256: string } {
  const b = Buffer.from(text);
  return { size: b.length, sha512: sha512(b), blake2b: blake2b(b), sha256: sha256(b) };
}

export const AUTH = { authorization: `Bearer ${ADMIN_TOKEN}` };

export interface RawResponse {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: Buffer;
}

/**
 * Sends `rawPath` byte for byte. undici's `request(url)` goes through WHATWG URL parsing, which
 * folds `%2e%2e` and `..` away before the server could see them; a Client given `path` does not.
 */
export async function rawRequest(
  baseUrl: string,
  rawPath: string,
  options: { method?: string; headers?: Record<string, string>; body?: Buffer | string } = {},
): Promise<RawResponse> {
  const client = new Client(baseUrl);
  try {
    const res = await client.request({
      path: rawPath,
      method: (options.method ?? 'GET') as 'GET',
      headers: options.headers ?? {},
      ...(options.body !== undefined ? { body: options.body } : {}),
    });
    const body = Buffer.from(await res.body.arrayBuffer());
    return { status: res.statusCode, headers: res.headers, body };
  } finally {
    await client.close();
  }
}

/** Every regular file under `dir`, relative, sorted; [] when it does not exist. */
export async function filesUnder(dir: string): Promise<string[]> {
  const entries = await readdir(dir, { recursive: true, withFileTypes: true }).catch(() => []);
  return entries
    .filter((e) => e.isFile())
    .map((e) => path.relative(dir, path.join(e.parentPath, e.name)))
    .sort();
}

export function rowCounts(server: TestServer): { blobs: number; names: number } {
  const blobs = (server.db!.prepare('SELECT count(*) AS n FROM blobs').get() as { n: number }).n;
  const names = (server.db!.prepare('SELECT count(*) AS n FROM names').get() as { n: number }).n;
  return { blobs, names };
}

/** Parses an error body and checks the shape every client-visible error must have. */
export function errorBody(body: Buffer): { error: string; message: string; [k: string]: unknown } {
  const json = JSON.parse(body.toString('utf8'));
  if (typeof json.error !== 'string' || typeof json.message !== 'string') {
    throw new Error(`not an error body: ${body.toString('utf8')}`);
  }
  return json;
}

/** Deterministic, non-repeating bytes (so a shifted or truncated copy never hashes the same). */
export function pseudoRandomBytes(size: number, seed = 1): Buffer {
  const out = Buffer.allocUnsafe(size);
  let block = createHash('sha512').update(`seed-${seed}`).digest();
  for (let off = 0; off < size; off += block.length) {
    block.copy(out, off, 0, Math.min(block.length, size - off));
    block = createHash('sha512').update(block).digest();
  }
  return out;
}
