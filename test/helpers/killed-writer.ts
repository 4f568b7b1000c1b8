import { S3Client } from '@aws-sdk/client-s3';
import { randomBytes } from 'node:crypto';
import { BlobStore } from '../../src/store/blob-store.js';
import { LocalBlobStorage } from '../../src/store/local-storage.js';
import { S3BlobStorage } from '../../src/store/s3-store.js';
import type { BlobStorage } from '../../src/store/storage.js';

/**
 * Child process for the storage conformance test: starts a write that never ends, reporting how many
 * bytes it has handed over, until the test kills it with SIGKILL (no chance to clean up).
 * argv[2]: JSON, either {"kind":"local","root"} or {"kind":"s3",endpoint,region,credentials,bucket,prefix,spoolDir}; plus "declared".
 */
interface Spec {
  kind: 'local' | 's3';
  declared: boolean;
  root?: string;
  endpoint?: string;
  region?: string;
  credentials?: { accessKeyId: string; secretAccessKey: string };
  bucket?: string;
  prefix?: string;
  spoolDir?: string;
}

const spec = JSON.parse(process.argv[2]!) as Spec;
const storage: BlobStorage =
  spec.kind === 'local'
    ? new LocalBlobStorage(new BlobStore(spec.root!))
    : new S3BlobStorage({
        client: new S3Client({ endpoint: spec.endpoint!, region: spec.region!, credentials: spec.credentials!, forcePathStyle: true }),
        bucket: spec.bucket!,
        prefix: spec.prefix!,
        spoolDir: spec.spoolDir!,
        partSize: 5 * 1024 * 1024,
      });

async function* endless(): AsyncGenerator<Buffer> {
  let sent = 0;
  for (;;) {
    const chunk = randomBytes(1024 * 1024);
    yield chunk;
    sent += chunk.length;
    process.stdout.write(`bytes ${sent}\n`);
  }
}

const expected = spec.declared ? { sha512: randomBytes(64).toString('hex') } : {};
await storage.write(endless(), { expected });
