import { fileURLToPath } from 'node:url';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadConfig } from '../src/config.js';
import { LocalBlobStorage } from '../src/store/local-storage.js';
import { openStorage } from '../src/store/open-storage.js';
import { runNode } from './helpers/cli.js';
import { S3BlobStorage } from '../src/store/s3-store.js';

describe('FASTPULL_STORAGE', () => {
  it('unset keeps blobs under the data dir', () => {
    const config = loadConfig({ dataDir: '/srv/fp' }, {});
    expect(config.storage).toEqual({ kind: 'local' });
    const storage = openStorage(config);
    expect(storage).toBeInstanceOf(LocalBlobStorage);
    expect(storage.location).toBe(path.join('/srv/fp', 'blobs'));
  });

  it('s3://BUCKET[/PREFIX] selects the s3 driver with keys under the prefix', () => {
    const env = { FASTPULL_STORAGE: 's3://distfiles/origin/a/', FASTPULL_S3_FORCE_PATH_STYLE: 'true', AWS_REGION: 'us-east-1', AWS_ENDPOINT_URL_S3: 'http://127.0.0.1:9' };
    const config = loadConfig({ dataDir: '/srv/fp' }, env);
    expect(config.storage).toEqual({ kind: 's3', bucket: 'distfiles', prefix: 'origin/a' });
    expect(config).toMatchObject({ s3ForcePathStyle: true, s3Region: 'us-east-1', s3Endpoint: 'http://127.0.0.1:9' });
    const storage = openStorage(config) as S3BlobStorage;
    expect(storage).toBeInstanceOf(S3BlobStorage);
    expect(storage.location).toBe('s3://distfiles/origin/a');
    expect(storage.key('ab'.repeat(64))).toBe(`origin/a/ab/ab/ab/${'ab'.repeat(64)}`);
    expect((openStorage(loadConfig({}, { FASTPULL_STORAGE: 's3://distfiles' })) as S3BlobStorage).key('ab'.repeat(64))).toBe(`ab/ab/ab/${'ab'.repeat(64)}`);
  });

  it('refuses what is not a bucket URL, with the setting named', () => {
    for (const bad of ['/srv/blobs', 'https://bucket', 's3://', 's3://Bad_Bucket', 's3://b/x//y', 's3://bkt/../up']) {
      expect(() => loadConfig({}, { FASTPULL_STORAGE: bad }), bad).toThrow(/FASTPULL_STORAGE/);
    }
    expect(() => loadConfig({}, { AWS_ENDPOINT_URL_S3: 'localhost:9000' })).toThrow(/AWS_ENDPOINT_URL_S3/);
  });

  it('sync-repo without --origin refuses a replicated origin (s3 storage or PostgreSQL) and names --origin', async () => {
    const dataDir = await mkdtemp(path.join(tmpdir(), 'fp-storage-'));
    try {
      const cli = fileURLToPath(new URL('../src/cli.ts', import.meta.url));
      const replicated: Record<string, string>[] = [{ FASTPULL_STORAGE: 's3://distfiles' }, { FASTPULL_DATABASE_URL: 'postgres://fastpull@127.0.0.1:9/fastpull' }];
      for (const env of replicated) {
        const res = await runNode(['--import', 'tsx', cli, 'sync-repo', dataDir], { FASTPULL_DATA_DIR: dataDir, ...env });
        expect(res.code, res.stderr).toBe(2);
        expect(res.stderr).toMatch(/--origin URL/);
      }
    } finally {
      await rm(dataDir, { recursive: true, force: true });
    }
  });
});
