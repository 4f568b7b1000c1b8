/** What `locks.run` answers: the work's value, or `ran: false` when another process holds the lock. */
export type LockResult<T> = { ran: true; value: T } | { ran: false };

/**
 * Singleton work (gc, scrub) across every process sharing the index. PostgreSQL: an advisory lock, so of
 * several replicas one runs and the others get `{ ran: false }` at once.
 */
export interface ClusterLocks {
  run<T>(name: string, fn: () => Promise<T>): Promise<LockResult<T>>;
}

/**
 * SQLite (the embedded default): one machine, and its maintenance was always safe to overlap (every change
 * re-checks under SQLite's single writer lock), so the work simply runs, as before.
 */
export const localLocks: ClusterLocks = {
  async run<T>(_name: string, fn: () => Promise<T>): Promise<LockResult<T>> {
    return { ran: true, value: await fn() };
  },
};
