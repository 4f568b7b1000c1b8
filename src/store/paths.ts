import path from 'node:path';
import { shardedPath } from '../domain/layout.js';

/** Where the local store keeps a blob: `<blobsDir>/ab/cd/ef/<sha512>`, the origin's own content-hash layout. */
export function blobFile(blobsDir: string, sha512: string): string {
  return path.join(blobsDir, shardedPath(sha512));
}
