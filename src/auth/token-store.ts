import { randomBytes, timingSafeEqual } from 'node:crypto';
import type { Statement } from 'better-sqlite3';
import { AuditLog, type AuditEntry } from '../db/audit.js';
import type { DB } from '../db/open.js';
import { AppError } from '../errors.js';
import { hashSecret, SCOPES, type Authenticator, type Principal, type Scope } from './tokens.js';

/** 32 random bytes: guessing is hopeless, and the prefix makes a leaked secret easy to grep for. */
const SECRET_PREFIX = 'fp_';
const NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
/** The bootstrap token's principal name; a DB token may not take it, or the audit trail would be ambiguous. */
export const BOOTSTRAP_NAME = 'bootstrap';
const TOUCH_INTERVAL_MS = 60_000;

export interface TokenInfo {
  name: string;
  scopes: Scope[];
  createdAt: number;
  revokedAt: number | null;
  lastUsedAt: number | null;
}

interface TokenRow {
  name: string;
  secret_sha256: Buffer;
  scopes: string;
  created_at: number;
  revoked_at: number | null;
  last_used_at: number | null;
}

export function generateSecret(): string {
  return SECRET_PREFIX + randomBytes(32).toString('base64url');
}

export function parseScopes(values: string[]): Scope[] {
  if (values.length === 0) throw new AppError('BAD_REQUEST', `give at least one --scope (${SCOPES.join(', ')})`);
  const out = new Set<Scope>();
  for (const v of values) {
    if (!(SCOPES as readonly string[]).includes(v)) {
      throw new AppError('BAD_REQUEST', `unknown scope "${v}": expected one of ${SCOPES.join(', ')}`);
    }
    out.add(v as Scope);
  }
  return SCOPES.filter((s) => out.has(s));
}

/** Tokens in SQLite. Every read is a prepared point lookup, so a CLI change is seen on the next request. */
export class TokenStore {
  private readonly stmt: {
    bySecret: Statement<[Buffer], TokenRow>;
    byName: Statement<[string], TokenRow>;
    anyActive: Statement<[], { active: number }>;
    insert: Statement<[Record<string, unknown>]>;
    revoke: Statement<[{ name: string; at: number }]>;
    touch: Statement<[{ name: string; at: number }]>;
    list: Statement<[], TokenRow>;
  };
  private readonly auditLog: AuditLog;

  constructor(readonly db: DB) {
    this.stmt = {
      bySecret: db.prepare('SELECT * FROM tokens WHERE secret_sha256 = ?'),
      byName: db.prepare('SELECT * FROM tokens WHERE name = ?'),
      anyActive: db.prepare('SELECT EXISTS (SELECT 1 FROM tokens WHERE revoked_at IS NULL) AS active'),
      insert: db.prepare(
        `INSERT INTO tokens (name, secret_sha256, scopes, created_at) VALUES (@name, @hash, @scopes, @at)`,
      ),
      revoke: db.prepare('UPDATE tokens SET revoked_at = @at WHERE name = @name AND revoked_at IS NULL'),
      touch: db.prepare('UPDATE tokens SET last_used_at = @at WHERE name = @name'),
      list: db.prepare('SELECT * FROM tokens ORDER BY created_at, name'),
    };
    this.auditLog = new AuditLog(db);
  }

  /**
   * Creates a token and returns its secret: the only time the secret exists outside the caller's hands.
   * `actor` is who asked (the CLI passes `cli:<user>`), recorded in the audit log.
   */
  create(name: string, scopes: Scope[], actor = 'cli'): string {
    if (!NAME.test(name)) {
      throw new AppError('BAD_REQUEST', 'a token name is 1-64 letters, digits, ".", "_" or "-", starting with a letter or digit');
    }
    if (name === BOOTSTRAP_NAME) throw new AppError('BAD_REQUEST', `"${BOOTSTRAP_NAME}" is reserved for FASTPULL_ADMIN_TOKEN`);
    if (scopes.length === 0) throw new AppError('BAD_REQUEST', 'a token needs at least one scope');
    const secret = generateSecret();
    const at = Date.now();
    this.db
      .transaction(() => {
        const existing = this.stmt.byName.get(name);
        if (existing) {
          throw new AppError(
            'BAD_REQUEST',
            existing.revoked_at === null
              ? `a token named "${name}" already exists`
              : `a revoked token was named "${name}"; names are never reused, choose another`,
          );
        }
        this.stmt.insert.run({ name, hash: hashSecret(secret), scopes: scopes.join(' '), at });
        this.audit({ actor, action: 'token.create', filename: null, detail: `${name}: ${scopes.join(' ')}` });
      })
      .immediate();
    return secret;
  }

  /** Returns false when no active token has that name. */
  revoke(name: string, actor = 'cli'): boolean {
    return this.db
      .transaction(() => {
        const changed = this.stmt.revoke.run({ name, at: Date.now() }).changes > 0;
        if (changed) this.audit({ actor, action: 'token.revoke', detail: name });
        return changed;
      })
      .immediate();
  }

  list(): TokenInfo[] {
    return this.stmt.list.all().map((r) => ({
      name: r.name,
      scopes: r.scopes.split(' ').filter(Boolean) as Scope[],
      createdAt: r.created_at,
      revokedAt: r.revoked_at,
      lastUsedAt: r.last_used_at,
    }));
  }

  anyActive(): boolean {
    return this.stmt.anyActive.get()!.active === 1;
  }

  /**
   * The lookup is by SHA-256 of the presented secret, so index timing can only reveal bits of a
   * hash the attacker chose, never of a stored secret; the final comparison is constant-time anyway.
   */
  authenticate(secret: string): Principal | undefined {
    const hash = hashSecret(secret);
    const row = this.stmt.bySecret.get(hash);
    if (!row || row.revoked_at !== null || !timingSafeEqual(row.secret_sha256, hash)) return undefined;
    const now = Date.now();
    if (row.last_used_at === null || now - row.last_used_at > TOUCH_INTERVAL_MS) {
      try {
        this.stmt.touch.run({ name: row.name, at: now });
      } catch {
        // A busy or read-only database must not turn a valid token away; last_used_at is advisory.
      }
    }
    return { name: row.name, scopes: new Set(row.scopes.split(' ') as Scope[]) };
  }

  audit(entry: AuditEntry): void {
    this.auditLog.record(entry);
  }
}

/**
 * The bootstrap FASTPULL_ADMIN_TOKEN plus the tokens in SQLite. The write API is enabled
 * when either can accept a credential; both are asked on every request, so a token created
 * or revoked by the CLI takes effect immediately.
 */
export class DbAuthenticator implements Authenticator {
  constructor(
    private readonly bootstrap: Authenticator,
    private readonly tokens: TokenStore,
  ) {}

  enabled(): boolean {
    return this.bootstrap.enabled() || this.tokens.anyActive();
  }

  authenticate(secret: string): Principal | undefined {
    return this.bootstrap.authenticate(secret) ?? this.tokens.authenticate(secret);
  }
}
