import { randomBytes, timingSafeEqual } from 'node:crypto';
import { isPromise, type Awaitable } from '../db/awaitable.js';
import type { TokenArea, TokenRow } from '../db/tokens.js';
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

/**
 * Token policy (names, scopes, secrets, last-use stamping) over the index's `tokens` area, whichever engine
 * holds it. Every read goes to the index, so a CLI change is seen on the next request by every replica.
 */
export class TokenStore {
  constructor(private readonly tokens: TokenArea) {}

  /**
   * Creates a token and returns its secret: the only time the secret exists outside the caller's hands.
   * `actor` is who asked (the CLI passes `cli:<user>`), recorded in the audit log.
   */
  async create(name: string, scopes: Scope[], actor = 'cli'): Promise<string> {
    if (!NAME.test(name)) {
      throw new AppError('BAD_REQUEST', 'a token name is 1-64 letters, digits, ".", "_" or "-", starting with a letter or digit');
    }
    if (name === BOOTSTRAP_NAME) throw new AppError('BAD_REQUEST', `"${BOOTSTRAP_NAME}" is reserved for FASTPULL_ADMIN_TOKEN`);
    if (scopes.length === 0) throw new AppError('BAD_REQUEST', 'a token needs at least one scope');
    const secret = generateSecret();
    const existing = await this.tokens.create(
      { name, secretSha256: hashSecret(secret), scopes: scopes.join(' '), at: Date.now() },
      { actor, action: 'token.create', filename: null, detail: `${name}: ${scopes.join(' ')}` },
    );
    if (existing) {
      throw new AppError(
        'BAD_REQUEST',
        existing.revoked_at === null
          ? `a token named "${name}" already exists`
          : `a revoked token was named "${name}"; names are never reused, choose another`,
      );
    }
    return secret;
  }

  /** Returns false when no active token has that name. */
  async revoke(name: string, actor = 'cli'): Promise<boolean> {
    return this.tokens.revoke(name, Date.now(), { actor, action: 'token.revoke', detail: name });
  }

  async list(): Promise<TokenInfo[]> {
    return (await this.tokens.list()).map((r) => ({
      name: r.name,
      scopes: r.scopes.split(' ').filter(Boolean) as Scope[],
      createdAt: r.created_at,
      revokedAt: r.revoked_at,
      lastUsedAt: r.last_used_at,
    }));
  }

  anyActive(): Awaitable<boolean> {
    return this.tokens.anyActive();
  }

  /**
   * The lookup is by SHA-256 of the presented secret, so index timing can only reveal bits of a
   * hash the attacker chose, never of a stored secret; the final comparison is constant-time anyway.
   */
  async authenticate(secret: string): Promise<Principal | undefined> {
    const hash = hashSecret(secret);
    const row = await this.tokens.bySecret(hash);
    if (!row || row.revoked_at !== null || !timingSafeEqual(row.secret_sha256, hash)) return undefined;
    const now = Date.now();
    if (row.last_used_at === null || now - row.last_used_at > TOUCH_INTERVAL_MS) this.touch(row, now);
    return { name: row.name, scopes: new Set(row.scopes.split(' ') as Scope[]) };
  }

  /** A busy or read-only database must not turn a valid token away, nor hold the request: last_used_at is advisory. */
  private touch(row: TokenRow, now: number): void {
    try {
      const done = this.tokens.touch(row.name, now);
      if (isPromise(done)) done.catch(() => undefined);
    } catch {
      // See above.
    }
  }
}

/**
 * The bootstrap FASTPULL_ADMIN_TOKEN plus the tokens in the index. The write API is enabled
 * when either can accept a credential; both are asked on every request, so a token created
 * or revoked by the CLI takes effect immediately.
 */
export class DbAuthenticator implements Authenticator {
  constructor(
    private readonly bootstrap: Authenticator,
    private readonly tokens: TokenStore,
  ) {}

  async enabled(): Promise<boolean> {
    return (await this.bootstrap.enabled()) || (await this.tokens.anyActive());
  }

  async authenticate(secret: string): Promise<Principal | undefined> {
    return (await this.bootstrap.authenticate(secret)) ?? (await this.tokens.authenticate(secret));
  }
}
