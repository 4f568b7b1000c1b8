import { filenameHashDir, shardedPath } from '../domain/layout.js';

/** Every path form under which a blob (and, given a name, that name) can be downloaded. */
export function downloadPaths(sha512: string, filename?: string | null): Record<string, string> {
  const paths: Record<string, string> = {
    contentHash: `/distfiles/${shardedPath(sha512)}`,
    direct: `/${shardedPath(sha512)}`,
    hash: `/distfiles/${sha512}`,
  };
  if (filename) {
    const encoded = encodeURIComponent(filename);
    paths.filenameHash = `/distfiles/${filenameHashDir(filename)}/${encoded}`;
    paths.flat = `/distfiles/${encoded}`;
  }
  return paths;
}
