import type { Statement } from 'better-sqlite3';
import { AuditLog, type AuditEntry } from './audit.js';
import type { DB } from './open.js';
import type { Awaitable } from './awaitable.js';

/** A row of the tokens table (migration 003); only the SHA-256 of a secret is stored. */
export interface TokenRow {
  name: string;
  secret_sha256: Buffer;
  /** Space-separated scopes. */
  scopes: string;
  created_at: number;
  revoked_at: number | null;
  last_used_at: number | null;
}

export interface NewToken {
  name: string;
  secretSha256: Buffer;
  scopes: string;
  at: number;
}

/**
 * API tokens, on either index engine. No method caches: every replica reads the row at each request, so a
 * revocation anywhere is refused everywhere from the next request on.
 */
export interface TokenArea {
  bySecret(secretSha256: Buffer): Awaitable<TokenRow | undefined>;
  /**
   * Inserts the token and its audit record in one transaction, unless the name was ever taken (a revoked
   * token's name too): then nothing is written and the existing row is returned.
   */
  create(token: NewToken, audit: AuditEntry): Awaitable<TokenRow | undefined>;
  /** Revokes an active token and records `audit` in the same transaction; false when none had that name. */
  revoke(name: string, at: number, audit: AuditEntry): Awaitable<boolean>;
  /** Advisory last-use time. */
  touch(name: string, at: number): Awaitable<void>;
  list(): Awaitable<TokenRow[]>;
  anyActive(): Awaitable<boolean>;
}

/** Tokens in SQLite: prepared point lookups, synchronous. */
export class SqliteTokens implements TokenArea {
  private readonly stmt: {
    bySecret: Statement<[Buffer], TokenRow>;
    byName: Statement<[string], TokenRow>;
    anyActive: Statement<[], { active: number }>;
    insert: Statement<[NewToken]>;
    revoke: Statement<[{ name: string; at: number }]>;
    touch: Statement<[{ name: string; at: number }]>;
    list: Statement<[], TokenRow>;
  };
  private readonly audit: AuditLog;

  constructor(private readonly db: DB) {
    this.stmt = {
      bySecret: db.prepare('SELECT * FROM tokens WHERE secret_sha256 = ?'),
      byName: db.prepare('SELECT * FROM tokens WHERE name = ?'),
      anyActive: db.prepare('SELECT EXISTS (SELECT 1 FROM tokens WHERE revoked_at IS NULL) AS active'),
      insert: db.prepare('INSERT INTO tokens (name, secret_sha256, scopes, created_at) VALUES (@name, @secretSha256, @scopes, @at)'),
      revoke: db.prepare('UPDATE tokens SET revoked_at = @at WHERE name = @name AND revoked_at IS NULL'),
      touch: db.prepare('UPDATE tokens SET last_used_at = @at WHERE name = @name'),
      list: db.prepare('SELECT * FROM tokens ORDER BY created_at, name'),
    };
    this.audit = new AuditLog(db);
  }

  bySecret(secretSha256: Buffer): TokenRow | undefined {
    return this.stmt.bySecret.get(secretSha256);
  }

  create(token: NewToken, audit: AuditEntry): TokenRow | undefined {
    return this.db
      .transaction(() => {
        const existing = this.stmt.byName.get(token.name);
        if (existing) return existing;
        this.stmt.insert.run(token);
        this.audit.record(audit);
        return undefined;
      })
      .immediate();
  }

  revoke(name: string, at: number, audit: AuditEntry): boolean {
    return this.db
      .transaction(() => {
        const changed = this.stmt.revoke.run({ name, at }).changes > 0;
        if (changed) this.audit.record(audit);
        return changed;
      })
      .immediate();
  }

  touch(name: string, at: number): void {
    this.stmt.touch.run({ name, at });
  }

  list(): TokenRow[] {
    return this.stmt.list.all();
  }

  anyActive(): boolean {
    return this.stmt.anyActive.get()!.active === 1;
  }
}
