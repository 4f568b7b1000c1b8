import { createHash, timingSafeEqual } from 'node:crypto';
import type { Awaitable } from '../db/awaitable.js';

export const SCOPES = ['read-api', 'upload', 'admin'] as const;
export type Scope = (typeof SCOPES)[number];

export interface Principal {
  /** Recorded with every upload and deletion; never the secret. */
  name: string;
  scopes: ReadonlySet<Scope>;
}

export interface Authenticator {
  /** True when at least one credential could ever be accepted (else the write API is off). */
  enabled(): Awaitable<boolean>;
  /** Asks the index on every call (no cache), so a revocation holds from the next request on, on every replica. */
  authenticate(secret: string): Awaitable<Principal | undefined>;
}

export function hasScope(principal: Principal, scope: Scope): boolean {
  return principal.scopes.has('admin') || principal.scopes.has(scope);
}

export function hashSecret(secret: string): Buffer {
  return createHash('sha256').update(secret, 'utf8').digest();
}

/** Compares fixed-length digests so timing reveals nothing about the secret. */
export function secretMatches(secret: string, expectedHash: Buffer): boolean {
  return timingSafeEqual(hashSecret(secret), expectedHash);
}

/** The FASTPULL_ADMIN_TOKEN bootstrap credential: every scope. */
export class BootstrapAuthenticator implements Authenticator {
  private readonly hash: Buffer | undefined;

  constructor(token: string | undefined) {
    this.hash = token ? hashSecret(token) : undefined;
  }

  enabled(): boolean {
    return this.hash !== undefined;
  }

  authenticate(secret: string): Principal | undefined {
    if (!this.hash || !secretMatches(secret, this.hash)) return undefined;
    return { name: 'bootstrap', scopes: new Set(SCOPES) };
  }
}
