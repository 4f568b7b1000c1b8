/**
 * A value or a promise of it. The index areas answer with this type: SQLite answers synchronously (better-sqlite3
 * is in-process, ~10 µs a lookup) and PostgreSQL asynchronously; callers `await` either, so the embedded default
 * keeps its speed while a network database fits the same interface. Code on the download path may test for a
 * plain value and skip the await.
 */
export type Awaitable<T> = T | Promise<T>;

export function isPromise<T>(value: Awaitable<T>): value is Promise<T> {
  return typeof (value as { then?: unknown } | null)?.then === 'function';
}
