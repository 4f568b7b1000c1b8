import { readdirSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import type Database from 'better-sqlite3';

/** migrations/ sits two levels above both src/db and dist/db. */
export const MIGRATIONS_DIR = fileURLToPath(new URL('../../migrations/', import.meta.url));

export interface Migration {
  version: number;
  name: string;
  sql: string;
}

export function listMigrations(dir = MIGRATIONS_DIR): Migration[] {
  const migrations = readdirSync(dir)
    .filter((f) => /^\d+_.+\.sql$/.test(f))
    .map((name) => ({ version: Number.parseInt(name, 10), name, sql: readFileSync(`${dir}/${name}`, 'utf8') }))
    .sort((a, b) => a.version - b.version);
  for (let i = 1; i < migrations.length; i++) {
    if (migrations[i]!.version === migrations[i - 1]!.version) {
      throw new Error(`two migrations share version ${migrations[i]!.version}`);
    }
  }
  return migrations;
}

export function schemaVersion(db: Database.Database): number {
  return db.pragma('user_version', { simple: true }) as number;
}

/** Applies pending migrations in order, each in its own transaction; the version lives in PRAGMA user_version. */
export function migrate(db: Database.Database, dir = MIGRATIONS_DIR): { from: number; to: number; applied: string[] } {
  const from = schemaVersion(db);
  const applied: string[] = [];
  for (const m of listMigrations(dir)) {
    // The version is re-read inside the write lock: another process may have migrated meanwhile.
    const ran = db
      .transaction(() => {
        if (m.version <= schemaVersion(db)) return false;
        db.exec(m.sql);
        db.pragma(`user_version = ${m.version}`);
        return true;
      })
      .immediate();
    if (ran) applied.push(m.name);
  }
  return { from, to: schemaVersion(db), applied };
}
