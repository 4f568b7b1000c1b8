import type postgres from 'postgres';
import type { NewEvent } from '../events.js';
import type { Sql } from '../postgres-index.js';

/** What recordEvent runs on: the transaction of the change (`sql.begin(tx => …)`), or a savepoint in it. */
export type TransactionSql = postgres.TransactionSql | Sql;

/**
 * The PostgreSQL twin of recordEvent (src/db/events.ts): the same row, read in one round trip. Size and,
 * unless given, the names come from the transaction itself, so they are what the change saw — call it
 * before a delete. The names column holds exactly what SQLite's JSON.stringify writes (to_json escapes as
 * it does; the "C" collation sorts like SQLite's BINARY), so migrate-index copies rows verbatim either way.
 */
export async function recordEvent(tx: TransactionSql, event: NewEvent): Promise<number> {
  // postgres.js gives only a transaction's handle `savepoint`: a pool handle here would commit the event
  // apart from its change, which a crash could lose, or which could announce a change rolled back.
  if (typeof (tx as Partial<postgres.TransactionSql>).savepoint !== 'function') {
    throw new Error(`event ${event.type} must be recorded inside the transaction of its change`);
  }
  const { sha512 } = event;
  const names =
    event.names !== undefined
      ? tx`${JSON.stringify(event.names)}::text`
      : event.type === 'blob.deleted'
        ? tx`(SELECT '[' || coalesce(string_agg(to_json(filename)::text, ',' ORDER BY filename COLLATE "C"), '') || ']'
              FROM (SELECT DISTINCT filename FROM names WHERE sha512 = ${sha512}) d)`
        : tx`(SELECT '[' || coalesce(string_agg(to_json(filename)::text, ',' ORDER BY seq DESC), '') || ']'
              FROM names WHERE sha512 = ${sha512} AND detached_at IS NULL)`;
  const [row] = await tx<{ id: number }[]>`
    INSERT INTO events (at, type, sha512, size, names, previous_sha512, actor)
    VALUES (${event.at ?? Date.now()}, ${event.type}, ${sha512}, (SELECT size FROM blobs WHERE sha512 = ${sha512}),
            ${names}, ${event.previousSha512 ?? null}, ${event.actor ?? null})
    RETURNING id`;
  return row!.id;
}
