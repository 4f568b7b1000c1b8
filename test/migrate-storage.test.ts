import { GetObjectCommand, ListObjectsV2Command } from '@aws-sdk/client-s3';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { open, mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DistfileIndex } from '../src/db/index.js';
import { databaseFile, openDatabase } from '../src/db/open.js';
import { BlobStore } from '../src/store/blob-store.js';
import { LocalBlobStorage } from '../src/store/local-storage.js';
import { runCli } from './helpers/cli.js';
import { sha512 } from './helpers/core.js';
import { skipWithoutService } from './helpers/services.js';
import { startSwift, swiftMissing, type Swift } from './helpers/swift.js';

const skip = skipWithoutService('OpenStack Swift (s3)', swiftMissing());
const CLI = fileURLToPath(new URL('../src/cli.ts', import.meta.url));
const MiB = 1024 * 1024;

describe.skipIf(skip)('fastpull migrate-storage', () => {
  let swift: Swift;
  let bucket: string;
  let dataDir: string;
  const dirs: string[] = [];
  /** Healthy blobs: hash → size. */
  const healthy = new Map<string, number>();
  let damaged = '';
  let env: Record<string, string>;

  beforeAll(async () => {
    swift = await startSwift();
    bucket = await swift.createBucket('migrate');
    dataDir = await mkdtemp(path.join(tmpdir(), 'fp-migrate-storage-'));
    dirs.push(dataDir);
    const store = new BlobStore(dataDir);
    const storage = new LocalBlobStorage(store);
    await storage.init();
    const db = openDatabase(databaseFile(dataDir));
    const index = new DistfileIndex(db);
    // Enough 2 MiB blobs that a copy one at a time is still running when the first object appears.
    const sizes = [...Array.from({ length: 24 }, () => 2 * MiB), 0, 1, 4096, 6 * MiB];
    for (const [i, size] of sizes.entries()) {
      const { digests } = await storage.write(Readable.from([randomBytes(size)]));
      index.recordBlob(digests, { filename: `blob-${i}.bin` });
      healthy.set(digests.sha512, size);
    }
    // Bit rot after ingest: same size, one byte flipped; the index still holds the true digests.
    damaged = [...healthy.keys()][3]!;
    healthy.delete(damaged);
    const handle = await open(store.pathOf(damaged), 'r+');
    const byte = Buffer.alloc(1);
    await handle.read(byte, 0, 1, 1000);
    byte[0] = byte[0]! ^ 0xff;
    await handle.write(byte, 0, 1, 1000);
    await handle.close();
    db.close();
    env = {
      FASTPULL_DATA_DIR: dataDir,
      FASTPULL_S3_FORCE_PATH_STYLE: 'true',
      AWS_ENDPOINT_URL_S3: swift.endpoint,
      AWS_REGION: swift.region,
      AWS_ACCESS_KEY_ID: swift.credentials.accessKeyId,
      AWS_SECRET_ACCESS_KEY: swift.credentials.secretAccessKey,
    };
  }, 120_000);
  afterAll(async () => {
    await swift?.stop();
    for (const dir of dirs) await rm(dir, { recursive: true, force: true });
  });

  const listKeys = async (prefix: string): Promise<string[]> => {
    const keys: string[] = [];
    let token: string | undefined;
    do {
      const page = await swift.client.send(new ListObjectsV2Command({ Bucket: bucket, Prefix: prefix, ...(token ? { ContinuationToken: token } : {}) }));
      keys.push(...(page.Contents ?? []).map((o) => o.Key!));
      token = page.IsTruncated ? page.NextContinuationToken : undefined;
    } while (token);
    return keys;
  };
  /** Every object's bytes hash to the hash in its key; returns the hashes. */
  const verifiedObjects = async (prefix: string): Promise<string[]> => {
    const hashes: string[] = [];
    for (const key of await listKeys(prefix)) {
      const out = await swift.client.send(new GetObjectCommand({ Bucket: bucket, Key: key }));
      const bytes = Buffer.from(await out.Body!.transformToByteArray());
      const hash = key.split('/').pop()!;
      expect(key).toBe(`${prefix}${hash.slice(0, 2)}/${hash.slice(2, 4)}/${hash.slice(4, 6)}/${hash}`);
      expect(sha512(bytes), key).toBe(hash);
      hashes.push(hash);
    }
    return hashes.sort();
  };

  it('copies every blob to S3, verified; killed with -9 mid-run it resumes; a damaged blob is reported, not copied', { timeout: 240_000 }, async () => {
    const to = `s3://${bucket}/origin`;
    // One blob at a time, killed as soon as the first object is visible.
    const child = spawn(process.execPath, ['--import', 'tsx', CLI, 'migrate-storage', '--to', to, '--jobs', '1'], {
      env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '/tmp', ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let childOut = '';
    child.stdout.on('data', (d: Buffer) => (childOut += d.toString()));
    child.stderr.on('data', (d: Buffer) => (childOut += d.toString()));
    const exited = new Promise<NodeJS.Signals | null>((resolve) => child.once('exit', (_code, signal) => resolve(signal)));
    let exitedEarly = false;
    void exited.then(() => (exitedEarly = true));
    while ((await listKeys('origin/')).length === 0) {
      expect(exitedEarly, childOut).toBe(false);
      await new Promise((resolve) => setTimeout(resolve, 25));
    }
    child.kill('SIGKILL');
    expect(await exited).toBe('SIGKILL');
    const afterKill = await verifiedObjects('origin/');
    // Interrupted for real: some, not all; and what is visible is whole (checked by hash above).
    expect(afterKill.length).toBeGreaterThan(0);
    expect(afterKill.length).toBeLessThan(healthy.size);

    const resumed = await runCli(['migrate-storage', '--to', to], env);
    expect(resumed.code, resumed.stdout + resumed.stderr).toBe(1);
    expect(resumed.stdout).toMatch(new RegExp(`^copying ${healthy.size + 1} blobs \\(`, 'm'));
    const summary = /^copied (\d+) blobs \(.*\), (\d+) already there \(.*\), (\d+) failed$/m.exec(resumed.stdout);
    expect(summary, resumed.stdout).not.toBeNull();
    expect(Number(summary![2])).toBe(afterKill.length);
    expect(Number(summary![1])).toBe(healthy.size - afterKill.length);
    expect(Number(summary![3])).toBe(1);
    expect(resumed.stdout).toMatch(new RegExp(`^failed ${damaged}: damaged in the source: its bytes do not match the sha512, blake2b, sha256 on record; not copied$`, 'm'));
    expect(resumed.stderr).toMatch(new RegExp(`FAILED ${damaged}`));
    // The progress bar's last line (not a terminal here: plain lines).
    expect(resumed.stderr).toMatch(new RegExp(`migrate-storage: ${healthy.size + 1}/${healthy.size + 1} files`));

    expect(await verifiedObjects('origin/')).toEqual([...healthy.keys()].sort());

    // Once more: nothing left to copy but the damaged blob.
    const again = await runCli(['migrate-storage', '--to', to], env);
    expect(again.code).toBe(1);
    expect(again.stdout).toMatch(new RegExp(`^copied 0 blobs \\(0 B\\), ${healthy.size} already there \\(.*\\), 1 failed$`, 'm'));
  });

  it('copies back from S3 into a local store (--to local), verified by hash', { timeout: 240_000 }, async () => {
    const fresh = await mkdtemp(path.join(tmpdir(), 'fp-migrate-back-'));
    dirs.push(fresh);
    const back = await runCli(['migrate-storage', '--to', 'local', '--jobs', '3'], { ...env, FASTPULL_DATA_DIR: fresh, FASTPULL_STORAGE: `s3://${bucket}/origin` });
    expect(back.code, back.stdout + back.stderr).toBe(0);
    expect(back.stdout).toMatch(new RegExp(`^copied ${healthy.size} blobs \\(.*\\), 0 already there \\(0 B\\), 0 failed$`, 'm'));
    const store = new BlobStore(fresh);
    const local = new LocalBlobStorage(store);
    const hashes: string[] = [];
    for await (const h of local.list()) {
      expect(sha512(await readFile(store.pathOf(h)))).toBe(h);
      hashes.push(h);
    }
    expect(hashes.sort()).toEqual([...healthy.keys()].sort());
  });

  it('says what is wrong with its arguments', async () => {
    const bad = await runCli(['migrate-storage', '--to', 'ftp://x'], env);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/^fastpull migrate-storage: --to: expected s3:\/\/BUCKET\[\/PREFIX\] or local, got "ftp:\/\/x"/);
    const same = await runCli(['migrate-storage', '--to', 'local'], env);
    expect(same.code).toBe(2);
    expect(same.stderr).toMatch(/^fastpull migrate-storage: --to local is where the blobs already are/);
  });
});
