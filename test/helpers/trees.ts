import { createHash } from 'node:crypto';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { DistfileIndex } from '../../src/db/index.js';
import { databaseFile, openDatabase } from '../../src/db/open.js';

export const sha512 = (b: Buffer | string) => createHash('sha512').update(b).digest('hex');
export const blake2b = (b: Buffer | string) => createHash('blake2b512').update(b).digest('hex');
export const sha256 = (b: Buffer | string) => createHash('sha256').update(b).digest('hex');
export const shard = (hex: string) => `${hex.slice(0, 2)}/${hex.slice(2, 4)}/${hex.slice(4, 6)}`;

const created: string[] = [];

export async function tempDir(prefix: string): Promise<string> {
  const dir = await mkdtemp(path.join(tmpdir(), `fastpull-${prefix}-`));
  created.push(dir);
  return dir;
}

/** For afterAll: trees and data directories made by tempDir. */
export async function removeTempDirs(): Promise<void> {
  await Promise.all(created.splice(0).map((dir) => rm(dir, { recursive: true, force: true })));
}

export async function put(root: string, rel: string, body: Buffer | string): Promise<string> {
  const file = path.join(root, rel);
  await mkdir(path.dirname(file), { recursive: true });
  await writeFile(file, body);
  return file;
}

/** `DIST` line as Portage writes it. */
export function distLine(name: string, body: Buffer | string, overrides: { size?: number; sha512?: string } = {}): string {
  const size = overrides.size ?? Buffer.byteLength(body);
  return `DIST ${name} ${size} BLAKE2B ${blake2b(body)} SHA512 ${overrides.sha512 ?? sha512(body)}`;
}

/** Opens the data directory's index the way the server does (WAL, busy_timeout) to inspect it. */
export function openIndex(dataDir: string): { index: DistfileIndex; close(): void } {
  const db = openDatabase(databaseFile(dataDir));
  return { index: new DistfileIndex(db), close: () => db.close() };
}
