import Database from 'better-sqlite3';
import { mkdirSync } from 'node:fs';
import path from 'node:path';
import { migrate } from './migrate.js';

export type DB = Database.Database;

export function databaseFile(dataDir: string): string {
  return path.join(dataDir, 'index.sqlite');
}

/**
 * Opens (creating if needed) the index. WAL lets readers (the server) and a writer
 * (a CLI import running beside it) work at once; busy_timeout covers brief writer overlap.
 */
export function openDatabase(file: string, options: { migrate?: boolean; readonly?: boolean } = {}): DB {
  if (!options.readonly) mkdirSync(path.dirname(file), { recursive: true });
  const db = new Database(file, { readonly: options.readonly ?? false, fileMustExist: options.readonly ?? false });
  db.pragma('busy_timeout = 5000');
  if (!options.readonly) {
    db.pragma('journal_mode = WAL');
    db.pragma('synchronous = NORMAL');
  }
  db.pragma('foreign_keys = ON');
  if (options.migrate ?? true) migrate(db);
  return db;
}
