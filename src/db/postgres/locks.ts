import type { ClusterLocks, LockResult } from '../locks.js';
import type { Sql } from '../postgres-index.js';
import { withClusterLock } from '../postgres-work.js';

/** Session advisory locks: a crashed holder's connection drops, and its lock with it. */
export class PostgresLocks implements ClusterLocks {
  constructor(private readonly sql: Sql) {}

  run<T>(name: string, fn: () => Promise<T>): Promise<LockResult<T>> {
    return withClusterLock(this.sql, name, fn);
  }
}
