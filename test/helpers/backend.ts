import { randomBytes } from 'node:crypto';
import { mkdir, readFile, stat, unlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { inject } from 'vitest';
import { filesUnder } from './core.js';
import type { Config } from '../../src/config.js';
import { postgresMissing } from './postgres.js';
import { skipWithoutService } from './services.js';

/**
 * Which engines the tests run the server on. `local` (default): blobs under the data dir, SQLite index.
 * `s3+postgres` (FASTPULL_TEST_BACKEND=s3+postgres): one real Swift and one real PostgreSQL for the whole run
 * (started by test/helpers/backend-setup.ts), a fresh bucket prefix and a fresh database for each server.
 */
export type TestBackendKind = 'local' | 's3+postgres';

export function testBackendKind(raw = process.env.FASTPULL_TEST_BACKEND): TestBackendKind {
  if (raw === undefined || raw === '' || raw === 'local') return 'local';
  if (raw === 's3+postgres') return raw;
  throw new Error(`FASTPULL_TEST_BACKEND=${raw}: expected local or s3+postgres`);
}

export const TEST_BACKEND: TestBackendKind = testBackendKind();

/** Where the shared services listen: what the global setup hands to the test files (plain data, no clients). */
export interface BackendServices {
  s3: { endpoint: string; region: string; accessKeyId: string; secretAccessKey: string };
  /** A maintenance database URL on the cluster (postgres://postgres@127.0.0.1:PORT/DB), for CREATE DATABASE. */
  postgresUrl: string;
}

declare module 'vitest' {
  export interface ProvidedContext {
    backendServices: BackendServices | null;
  }
}

/** The run's shared services, or undefined when the run is local. */
export function sharedServices(): BackendServices | undefined {
  if (TEST_BACKEND === 'local') return undefined;
  const services = inject('backendServices');
  if (!services) throw new Error('FASTPULL_TEST_BACKEND=s3+postgres but the global setup provided no services (vitest.config.ts globalSetup)');
  return services;
}

/** Starts a Swift and a PostgreSQL of one's own (global setup, or a test file that needs them in a local run). */
export async function startServices(): Promise<{ services: BackendServices; stop(): Promise<void> }> {
  // Loaded on demand: a local run never pays for the S3 SDK in every test file.
  const [{ startSwift }, { startPostgres }] = await Promise.all([import('./swift.js'), import('./postgres.js')]);
  const [swift, pg] = await Promise.all([startSwift(), startPostgres('fastpull_admin', { maxConnections: 500 })]);
  return {
    services: {
      s3: { endpoint: swift.endpoint, region: swift.region, ...swift.credentials },
      postgresUrl: pg.url,
    },
    async stop() {
      await Promise.all([swift.stop(), pg.stop()]);
    },
  };
}

/**
 * For a test file that needs the services even in a local run (replicas): the run's shared ones, else its own
 * (undefined, with the reason printed, when the packages are missing outside CI).
 */
export async function servicesForFile(): Promise<{ services: BackendServices; stop(): Promise<void> } | undefined> {
  const shared = sharedServices();
  if (shared) return { services: shared, stop: async () => undefined };
  const { swiftMissing } = await import('./swift.js');
  if (skipWithoutService('Swift', swiftMissing()) || skipWithoutService('PostgreSQL', postgresMissing())) return undefined;
  return startServices();
}

/** One server's share of the services: its own key prefix in a bucket and its own database. Replicas share one. */
export interface BackendTarget {
  services: BackendServices;
  bucket: string;
  prefix: string;
  databaseUrl: string;
  /** Drops the database (the objects go with Swift's temp dir at the end of the run). */
  release(): Promise<void>;
}

let adminSql: import('postgres').Sql | undefined;
const buckets = new Map<string, Promise<string>>();
let targets = 0;
const run = randomBytes(3).toString('hex');

async function admin(services: BackendServices): Promise<import('postgres').Sql> {
  if (!adminSql) {
    const { default: postgres } = await import('postgres');
    // idle_timeout: an idle admin connection must not keep a test worker alive.
    adminSql = postgres(services.postgresUrl, { max: 1, idle_timeout: 2, onnotice: () => undefined });
  }
  return adminSql;
}

/** One bucket per test process and endpoint; servers differ by prefix inside it. */
function bucketFor(services: BackendServices): Promise<string> {
  let bucket = buckets.get(services.s3.endpoint);
  if (!bucket) {
    bucket = (async () => {
      const { CreateBucketCommand } = await import('@aws-sdk/client-s3');
      const client = await s3Client(services);
      const name = `fastpull-${run}-${process.pid}-${buckets.size}`;
      try {
        await client.send(new CreateBucketCommand({ Bucket: name }));
      } finally {
        client.destroy();
      }
      return name;
    })();
    buckets.set(services.s3.endpoint, bucket);
  }
  return bucket;
}

export async function s3Client(services: BackendServices) {
  const { S3Client } = await import('@aws-sdk/client-s3');
  const { endpoint, region, accessKeyId, secretAccessKey } = services.s3;
  return new S3Client({ endpoint, region, credentials: { accessKeyId, secretAccessKey }, forcePathStyle: true });
}

/** A fresh bucket prefix and a fresh database on the given services. */
export async function freshTarget(services: BackendServices): Promise<BackendTarget> {
  const n = ++targets;
  const database = `fp_${run}_${process.pid}_${n}`;
  const sql = await admin(services);
  const [bucket] = await Promise.all([bucketFor(services), sql.unsafe(`CREATE DATABASE "${database}"`)]);
  const url = new URL(services.postgresUrl);
  url.pathname = `/${database}`;
  let released = false;
  return {
    services,
    bucket,
    prefix: `t${n}-${randomBytes(4).toString('hex')}`,
    databaseUrl: url.toString(),
    async release() {
      if (released) return;
      released = true;
      // FORCE: a replica or CLI still connected must not keep the database (and its disk) alive.
      await sql.unsafe(`DROP DATABASE IF EXISTS "${database}" WITH (FORCE)`);
    },
  };
}

/** The settings that put an in-process server on the target. Credentials go through the SDK's env (the server reads no secrets of ours). */
export function backendConfig(target: BackendTarget): Partial<Config> {
  const { s3 } = target.services;
  process.env.AWS_ACCESS_KEY_ID = s3.accessKeyId;
  process.env.AWS_SECRET_ACCESS_KEY = s3.secretAccessKey;
  return {
    storage: { kind: 's3', bucket: target.bucket, prefix: target.prefix },
    databaseUrl: target.databaseUrl,
    s3ForcePathStyle: true,
    s3Endpoint: s3.endpoint,
    s3Region: s3.region,
  };
}

/** The same as environment variables, for `fastpull serve` and CLI child processes. */
export function backendEnv(target: BackendTarget): Record<string, string> {
  const { s3 } = target.services;
  return {
    FASTPULL_STORAGE: `s3://${target.bucket}/${target.prefix}`,
    FASTPULL_DATABASE_URL: target.databaseUrl,
    FASTPULL_S3_FORCE_PATH_STYLE: 'true',
    AWS_ENDPOINT_URL_S3: s3.endpoint,
    AWS_REGION: s3.region,
    AWS_ACCESS_KEY_ID: s3.accessKeyId,
    AWS_SECRET_ACCESS_KEY: s3.secretAccessKey,
  };
}

/**
 * Targets by data directory, so that a CLI run or a restart over a server's data dir reaches that server's
 * bucket prefix and database too (runCli adds them by FASTPULL_DATA_DIR).
 */
const byDataDir = new Map<string, BackendTarget>();

export function rememberTarget(dataDir: string, target: BackendTarget): void {
  byDataDir.set(path.resolve(dataDir), target);
}

export function targetOf(dataDir: string): BackendTarget | undefined {
  return byDataDir.get(path.resolve(dataDir));
}

export function forgetTarget(dataDir: string): void {
  byDataDir.delete(path.resolve(dataDir));
}

/**
 * The target for a server over `dataDir` in this run: the one already used over it (a restart), else a fresh
 * one; undefined in a local run.
 */
export async function targetFor(dataDir: string): Promise<BackendTarget | undefined> {
  const services = sharedServices();
  if (!services) return undefined;
  const known = targetOf(dataDir);
  if (known) return known;
  const target = await freshTarget(services);
  rememberTarget(dataDir, target);
  return target;
}

/** Adds the backend of the server over FASTPULL_DATA_DIR to a child's environment, unless it names its own. */
export function withBackendEnv(env: Record<string, string>): Record<string, string> {
  if (env.FASTPULL_STORAGE !== undefined || env.FASTPULL_DATABASE_URL !== undefined || env.FASTPULL_DATA_DIR === undefined) return env;
  const target = targetOf(env.FASTPULL_DATA_DIR);
  return target ? { ...backendEnv(target), ...env } : env;
}

/** The store and index of the server over `dataDir` (its target when the run is s3+postgres). */
export function backendOf(dataDir: string): BackendOf {
  return { dataDir, backend: targetOf(dataDir) };
}

/** Where a server keeps its blobs: what the assertion helpers need (TestServer and ServeProcess both fit). */
export interface BackendOf {
  dataDir: string;
  backend?: BackendTarget | undefined;
}

/** The blob's object key (s3) or file (local), GLEP 75-style three-level shard. */
export function blobKey(server: BackendOf, sha512: string): string {
  const rel = [sha512.slice(0, 2), sha512.slice(2, 4), sha512.slice(4, 6), sha512];
  return server.backend ? [server.backend.prefix, ...rel].filter(Boolean).join('/') : path.join(server.dataDir, 'blobs', ...rel);
}

/** The size of the blob's bytes at their final place (file or object), or undefined when absent. */
export async function blobSize(server: BackendOf, sha512: string): Promise<number | undefined> {
  const target = server.backend;
  if (!target) return (await stat(blobKey(server, sha512)).catch(() => undefined))?.size;
  const { HeadObjectCommand } = await import('@aws-sdk/client-s3');
  const client = await s3Client(target.services);
  try {
    const head = await client.send(new HeadObjectCommand({ Bucket: target.bucket, Key: blobKey(server, sha512) }));
    return head.ContentLength;
  } catch (err) {
    if ((err as { $metadata?: { httpStatusCode?: number } }).$metadata?.httpStatusCode === 404) return undefined;
    throw err;
  } finally {
    client.destroy();
  }
}

/** Whether the store holds the blob's bytes at its final place: the file on disk, or the object (HeadObject). */
export async function blobStored(server: BackendOf, sha512: string): Promise<boolean> {
  return (await blobSize(server, sha512)) !== undefined;
}

/** The stored bytes themselves (file or object), or undefined when absent: for "the store keeps the same shape" checks. */
export async function storedBytes(server: BackendOf, sha512: string): Promise<Buffer | undefined> {
  const target = server.backend;
  if (!target) return readFile(blobKey(server, sha512)).catch(() => undefined);
  const { GetObjectCommand } = await import('@aws-sdk/client-s3');
  const client = await s3Client(target.services);
  try {
    const res = await client.send(new GetObjectCommand({ Bucket: target.bucket, Key: blobKey(server, sha512) }));
    return Buffer.from(await res.Body!.transformToByteArray());
  } catch (err) {
    if ((err as { $metadata?: { httpStatusCode?: number } }).$metadata?.httpStatusCode === 404) return undefined;
    throw err;
  } finally {
    client.destroy();
  }
}

/** Replaces the stored bytes behind the store's back (bit rot, a truncated copy): for damage tests. */
export async function damageBlob(server: BackendOf, sha512: string, bytes: Buffer | string): Promise<void> {
  const target = server.backend;
  if (!target) {
    await mkdir(path.dirname(blobKey(server, sha512)), { recursive: true });
    return writeFile(blobKey(server, sha512), bytes);
  }
  const { PutObjectCommand } = await import('@aws-sdk/client-s3');
  const client = await s3Client(target.services);
  try {
    await client.send(new PutObjectCommand({ Bucket: target.bucket, Key: blobKey(server, sha512), Body: bytes }));
  } finally {
    client.destroy();
  }
}

/** Removes the stored bytes behind the store's back (a lost file, a deleted object), leaving the index row. */
export async function deleteBlob(server: BackendOf, sha512: string): Promise<void> {
  const target = server.backend;
  if (!target) return unlink(blobKey(server, sha512));
  const { DeleteObjectCommand } = await import('@aws-sdk/client-s3');
  const client = await s3Client(target.services);
  try {
    await client.send(new DeleteObjectCommand({ Bucket: target.bucket, Key: blobKey(server, sha512) }));
  } finally {
    client.destroy();
  }
}

/** Where an upload of unknown digest is written before it is verified: <dataDir>/tmp (local) or the s3 spool. */
export function scratchDir(server: BackendOf): string {
  return path.join(server.dataDir, server.backend ? 'spool' : 'tmp');
}

/** Every object key under the server's prefix (s3), for "nothing else was stored" assertions. */
export async function listObjects(target: BackendTarget): Promise<string[]> {
  const { ListObjectsV2Command } = await import('@aws-sdk/client-s3');
  const client = await s3Client(target.services);
  const keys: string[] = [];
  try {
    let token: string | undefined;
    do {
      const page = await client.send(
        new ListObjectsV2Command({ Bucket: target.bucket, Prefix: `${target.prefix}/`, ...(token ? { ContinuationToken: token } : {}) }),
      );
      for (const o of page.Contents ?? []) keys.push(o.Key!);
      token = page.IsTruncated ? page.NextContinuationToken : undefined;
    } while (token);
  } finally {
    client.destroy();
  }
  return keys;
}

/** Multipart uploads still in progress under the server's prefix: none may outlive a failure or a sweep. */
export async function listMultipartUploads(target: BackendTarget): Promise<string[]> {
  const { ListMultipartUploadsCommand } = await import('@aws-sdk/client-s3');
  const client = await s3Client(target.services);
  try {
    const res = await client.send(new ListMultipartUploadsCommand({ Bucket: target.bucket, Prefix: `${target.prefix}/` }));
    return (res.Uploads ?? []).map((u) => u.Key!);
  } finally {
    client.destroy();
  }
}

/** A server whose index the helpers can read: in-process (its open SQLite handle) or a child over a data dir. */
export interface IndexOf extends BackendOf {
  originIndex?: { sqlite: { prepare(sql: string): { all(...p: unknown[]): unknown[] } } | undefined };
}

/**
 * A query on the server's index, whichever engine holds it: `?` placeholders (numbered for PostgreSQL), rows
 * as plain objects. For assertions on rows the API does not show; counts come back as numbers on both.
 */
export async function indexRows<T = Record<string, unknown>>(server: IndexOf, text: string, params: unknown[] = []): Promise<T[]> {
  const target = server.backend;
  if (!target) return sqliteAt(server, (db) => db.prepare(text).all(...params) as T[]);
  const { default: postgres } = await import('postgres');
  let n = 0;
  const numbered = text.replace(/\?/g, () => `$${++n}`);
  const sql = postgres(target.databaseUrl, { max: 1, onnotice: () => undefined, types: { bigint: postgres.BigInt } });
  try {
    const rows = await sql.unsafe(numbered, params as never[]);
    // bigint columns (counts, sizes, times) come back as numbers, as better-sqlite3 gives them.
    return rows.map((row) => Object.fromEntries(Object.entries(row).map(([k, v]) => [k, typeof v === 'bigint' ? Number(v) : v]))) as T[];
  } finally {
    await sql.end({ timeout: 1 });
  }
}

/** A write on the server's index (e.g. to stage damage the API cannot cause), `?` placeholders, on either engine. */
export async function indexExec(server: IndexOf, text: string, params: unknown[] = []): Promise<void> {
  if (!server.backend) return sqliteAt(server, (db) => void db.prepare(text).run(...params));
  await indexRows(server, text, params);
}

type SqliteHandle = import('better-sqlite3').Database;

/** The server's own SQLite handle when it runs in this process, else a second connection to its file (WAL lets both in). */
async function sqliteAt<T>(server: IndexOf, fn: (db: SqliteHandle) => T): Promise<T> {
  const own = server.originIndex?.sqlite as SqliteHandle | undefined;
  if (own) return fn(own);
  const { default: Database } = await import('better-sqlite3');
  const db = new Database(path.join(server.dataDir, 'index.sqlite'), { fileMustExist: true });
  try {
    db.pragma('busy_timeout = 5000');
    return fn(db);
  } finally {
    db.close();
  }
}

/** `SELECT count(*) AS n FROM <table> [WHERE …]` on either engine. */
export async function countRows(server: IndexOf, table: string, where = '', params: unknown[] = []): Promise<number> {
  const [row] = await indexRows<{ n: number }>(server, `SELECT count(*) AS n FROM ${table}${where ? ` WHERE ${where}` : ''}`, params);
  return Number(row!.n);
}

const SHARD = /^[0-9a-f]{2}\/[0-9a-f]{2}\/[0-9a-f]{2}\/[0-9a-f]{128}$/;

/** The blobs the store holds, as `ab/cd/ef/<sha512>` paths, sorted: files under blobs/, or objects under the prefix. */
export async function storedBlobs(server: BackendOf): Promise<string[]> {
  if (!server.backend) return filesUnder(path.join(server.dataDir, 'blobs'));
  const start = server.backend.prefix.length + 1;
  return (await listObjects(server.backend))
    .map((key) => key.slice(start))
    .filter((rel) => SHARD.test(rel))
    .sort();
}

/**
 * Writes under way or left behind: temp files (local), or multipart uploads and spool files (s3). Empty once
 * an upload has finished or failed.
 */
export async function unfinishedWrites(server: BackendOf): Promise<string[]> {
  if (!server.backend) return filesUnder(path.join(server.dataDir, 'tmp'));
  return [...(await listMultipartUploads(server.backend)), ...(await filesUnder(path.join(server.dataDir, 'spool')))];
}

/** Rows in blobs and names, on either engine. */
export async function indexCounts(server: IndexOf): Promise<{ blobs: number; names: number }> {
  return { blobs: await countRows(server, 'blobs'), names: await countRows(server, 'names') };
}
