import { S3Client } from '@aws-sdk/client-s3';
import http from 'node:http';
import https from 'node:https';
import path from 'node:path';
import type { Config } from '../config.js';
import { BlobStore } from './blob-store.js';
import { LocalBlobStorage } from './local-storage.js';
import { S3BlobStorage } from './s3-store.js';
import type { BlobStorage } from './storage.js';

type StorageConfig = Pick<Config, 'dataDir' | 'storage' | 's3ForcePathStyle' | 's3Endpoint' | 's3Region'> &
  Partial<Pick<Config, 's3AbandonedUploadSeconds'>>;

/**
 * Sockets to the S3 endpoint, per process: every download streaming from the bucket holds one for its
 * whole body, so this bounds concurrent S3 reads (more wait for a free socket; the SDK warns when they do).
 */
export const S3_MAX_SOCKETS = 256;

/** The driver FASTPULL_STORAGE names. Call init() before use. */
export function openStorage(config: StorageConfig, options: { reserveBytes?: number } = {}): BlobStorage {
  if (config.storage.kind === 'local') return new LocalBlobStorage(new BlobStore(config.dataDir, options));
  // Keep-alive: a download costs no TCP (and TLS) handshake with the bucket; idle sockets close after a minute.
  const agentOptions = { keepAlive: true, maxSockets: S3_MAX_SOCKETS, maxFreeSockets: 64, timeout: 60_000 };
  const httpAgent = new http.Agent(agentOptions);
  const httpsAgent = new https.Agent(agentOptions);
  // Unset region and endpoint are left to the SDK's own resolution (profiles, instance metadata).
  const client = new S3Client({
    forcePathStyle: config.s3ForcePathStyle,
    ...(config.s3Region ? { region: config.s3Region } : {}),
    ...(config.s3Endpoint ? { endpoint: config.s3Endpoint } : {}),
    // A stalled bucket fails the request instead of holding a download (and its socket) for ever.
    requestHandler: { httpAgent, httpsAgent, connectionTimeout: 10_000, requestTimeout: 60_000 },
  });
  const agent = config.s3Endpoint?.startsWith('http:') ? httpAgent : httpsAgent;
  return new S3BlobStorage({
    client,
    bucket: config.storage.bucket,
    prefix: config.storage.prefix,
    spoolDir: path.join(config.dataDir, 'spool'),
    ...(config.s3AbandonedUploadSeconds !== undefined ? { abandonedAfterMs: config.s3AbandonedUploadSeconds * 1000 } : {}),
    agent,
  });
}
