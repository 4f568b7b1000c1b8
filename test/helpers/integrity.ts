import { createHash } from 'node:crypto';
import { existsSync, readdirSync } from 'node:fs';
import { chmod, open } from 'node:fs/promises';
import path from 'node:path';
import Database from 'better-sqlite3';
import { request } from 'undici';
import { backendOf, blobStored, damageBlob, deleteBlob, listObjects, storedBytes } from './backend.js';
import { ADMIN_TOKEN } from './server.js';

export const sha512 = (b: Buffer | string) => createHash('sha512').update(b).digest('hex');

export function blobPath(dataDir: string, sha: string): string {
  return path.join(dataDir, 'blobs', sha.slice(0, 2), sha.slice(2, 4), sha.slice(4, 6), sha);
}

/** Flips one bit of a stored blob in place, as a failing disk would: same size, other bytes. */
export async function flipBit(dataDir: string, sha: string, offset: number): Promise<void> {
  const server = backendOf(dataDir);
  if (server.backend) {
    // An object cannot be edited in place: the same key rewritten with one bit changed.
    const bytes = (await storedBytes(server, sha))!;
    bytes[offset] = bytes[offset]! ^ 0x10;
    return damageBlob(server, sha, bytes);
  }
  const file = blobPath(dataDir, sha);
  await chmod(file, 0o644);
  const handle = await open(file, 'r+');
  try {
    const byte = Buffer.alloc(1);
    await handle.read(byte, 0, 1, offset);
    byte[0] = byte[0]! ^ 0x10;
    await handle.write(byte, 0, 1, offset);
  } finally {
    await handle.close();
  }
  await chmod(file, 0o444);
}

/** The quarantined copies of a blob: files in <dataDir>/quarantine, or objects under PREFIX/trash/quarantine/. */
export async function quarantined(dataDir: string, sha: string): Promise<string[]> {
  const { backend } = backendOf(dataDir);
  if (backend) {
    const dir = `${backend.prefix}/trash/quarantine/`;
    return (await listObjects(backend)).filter((k) => k.startsWith(`${dir}${sha}.`)).map((k) => k.slice(dir.length));
  }
  const dir = path.join(dataDir, 'quarantine');
  return existsSync(dir) ? readdirSync(dir).filter((f) => f.startsWith(`${sha}.`)) : [];
}

/** Loses a blob's bytes (file or object) while its index row stays. */
export function removeBlob(dataDir: string, sha: string): Promise<void> {
  return deleteBlob(backendOf(dataDir), sha);
}

/** Writes bytes at a blob's final place behind the index's back (a stray file or object), as a crash or an operator might. */
export function putBlob(dataDir: string, sha: string, bytes: Buffer | string): Promise<void> {
  return damageBlob(backendOf(dataDir), sha, bytes);
}

/** Whether the blob's bytes are at their final place in the store over `dataDir` (file, or object). */
export function blobExists(dataDir: string, sha: string): Promise<boolean> {
  return blobStored(backendOf(dataDir), sha);
}

/** A second, independent connection to the server's index (WAL lets it read and write beside it). */
export function openIndex(dataDir: string): Database.Database {
  const db = new Database(path.join(dataDir, 'index.sqlite'));
  db.pragma('busy_timeout = 5000');
  return db;
}

export async function uploadBlob(baseUrl: string, body: Buffer | string): Promise<number> {
  const res = await request(`${baseUrl}/api/v1/blobs/${sha512(body)}`, {
    method: 'PUT',
    body,
    headers: { authorization: `Bearer ${ADMIN_TOKEN}` },
  });
  await res.body.dump();
  return res.statusCode;
}

export async function detach(baseUrl: string, filename: string): Promise<number> {
  const res = await request(`${baseUrl}/api/v1/distfiles/${encodeURIComponent(filename)}`, {
    method: 'DELETE',
    headers: { authorization: `Bearer ${ADMIN_TOKEN}` },
  });
  await res.body.dump();
  return res.statusCode;
}

export async function blobInfo(baseUrl: string, sha: string): Promise<any> {
  const res = await request(`${baseUrl}/api/v1/blobs/${sha}`, { headers: { authorization: `Bearer ${ADMIN_TOKEN}` } });
  return { status: res.statusCode, json: await res.body.json() };
}

/** Polls until `check` is truthy or the deadline passes (then the test fails on its own assertion). */
export async function waitFor<T>(check: () => Promise<T>, deadlineMs = 20_000): Promise<T> {
  const until = Date.now() + deadlineMs;
  for (;;) {
    const value = await check();
    if (value || Date.now() > until) return value;
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** Deterministic, incompressible-looking content of a given size. */
export function content(seed: string, size: number): Buffer {
  const out = Buffer.alloc(size);
  let block = createHash('sha512').update(seed).digest();
  for (let off = 0; off < size; off += block.length) {
    block.copy(out, off);
    block = createHash('sha512').update(block).digest();
  }
  return out;
}
