import { S3Client } from '@aws-sdk/client-s3';
import path from 'node:path';
import type { Config } from '../config.js';
import { BlobStore } from './blob-store.js';
import { LocalBlobStorage } from './local-storage.js';
import { S3BlobStorage } from './s3-store.js';
import type { BlobStorage } from './storage.js';

type StorageConfig = Pick<Config, 'dataDir' | 'storage' | 's3ForcePathStyle' | 's3Endpoint' | 's3Region'>;

/**
 * The local store, for the code that still works on files directly (server, maintenance commands). Until
 * they go through BlobStorage, an s3:// setting must stop them rather than let them use an empty local disk.
 */
export function localBlobStore(config: Pick<Config, 'dataDir' | 'storage' | 'reserveBytes'>): BlobStore {
  if (config.storage.kind !== 'local') {
    throw new Error(
      `FASTPULL_STORAGE=s3://${config.storage.bucket}/${config.storage.prefix}: the s3 driver exists but is not wired into ` +
        'serve and the maintenance commands yet; unset FASTPULL_STORAGE to use <dataDir>/blobs',
    );
  }
  return new BlobStore(config.dataDir, { reserveBytes: config.reserveBytes });
}

/** The driver FASTPULL_STORAGE names. Call init() before use. */
export function openStorage(config: StorageConfig): BlobStorage {
  if (config.storage.kind === 'local') return new LocalBlobStorage(new BlobStore(config.dataDir));
  // Unset region and endpoint are left to the SDK's own resolution (profiles, instance metadata).
  const client = new S3Client({
    forcePathStyle: config.s3ForcePathStyle,
    ...(config.s3Region ? { region: config.s3Region } : {}),
    ...(config.s3Endpoint ? { endpoint: config.s3Endpoint } : {}),
  });
  return new S3BlobStorage({
    client,
    bucket: config.storage.bucket,
    prefix: config.storage.prefix,
    spoolDir: path.join(config.dataDir, 'spool'),
  });
}
