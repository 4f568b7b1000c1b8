/**
 * The test files that run a second time with FASTPULL_TEST_BACKEND=s3+postgres (blobs in Swift's S3 API, the
 * index in PostgreSQL): every file about downloads, uploads, protocol conformance and the CLI against a server.
 * vitest.config.ts reads this list; .ci/run runs it after the local suite. The one place it is kept.
 */
export const BACKEND_SUITE: readonly string[] = [
  // Downloads and protocol conformance.
  'smoke',
  'read-paths',
  'http-semantics',
  'clients',
  'robustness',
  'limits',
  'timeouts',
  'openapi-contract',
  'health',
  'status-api',
  'status-page',
  'metrics',
  // Uploads and the write API.
  'uploads',
  'write-query',
  'tokens',
  'push',
  // Upstream fetching.
  'pull-through',
  'fetch-jobs',
  'ssrf',
  'status-upstreams',
  // CLI against a server's store and index.
  'verify',
  'verify-on-serve',
  'audit-trail',
  'stats',
  'events',
  // Several servers on one bucket and one database.
  'replicas',
];

/**
 * Left out, with why (one line each):
 * - disk-full, watermark: fill a tmpfs data dir; an object store has no local free space to exhaust.
 * - small-blob-cache, durability: the local store's fd cache and fsync/rename order (strace).
 * - nginx-offload, cdn-nginx: X-Accel-Redirect hands nginx a file under <dataDir>/blobs.
 * - orphans, shutdown, workers: temp files of dead processes, the reserve file, the SQLite cluster IPC on one data dir.
 * - fsck-gc: temp files, the SQLite file deleted under reindex, BlobStore races in-process; both engines: maintenance-drivers.
 * - import: rows read through DistfileIndex on the SQLite file, --link hard links into <dataDir>/blobs.
 * - cli-contract: builds the package (minutes) to test argument parsing and process handling, not the engines.
 * - storage-conformance, index-drivers, migrate-*, maintenance-drivers, replica-work, access-areas, events-outbox: run both engines themselves.
 * - the rest (domain, config, openapi, logging, packaging, …) start no server with a store or an index.
 */
