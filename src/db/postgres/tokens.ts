import type { AuditEntry } from '../audit.js';
import type { Sql } from '../postgres-index.js';
import type { NewToken, TokenArea, TokenRow } from '../tokens.js';
import { insertAudit } from './audit.js';

/** Tokens in PostgreSQL. Nothing is cached per process: a revocation on one replica holds on all at once. */
export class PostgresTokens implements TokenArea {
  constructor(private readonly sql: Sql) {}

  async bySecret(secretSha256: Buffer): Promise<TokenRow | undefined> {
    const [row] = await this.sql<TokenRow[]>`SELECT * FROM tokens WHERE secret_sha256 = ${secretSha256}`;
    return row;
  }

  async create(token: NewToken, audit: AuditEntry): Promise<TokenRow | undefined> {
    return (await this.sql.begin(async (tx) => {
      const t = tx as unknown as Sql;
      // ON CONFLICT rather than read-then-insert: two replicas creating one name at once cannot both win.
      const inserted = await t`
        INSERT INTO tokens (name, secret_sha256, scopes, created_at)
        VALUES (${token.name}, ${token.secretSha256}, ${token.scopes}, ${token.at})
        ON CONFLICT (name) DO NOTHING`;
      if (inserted.count === 0) {
        const [existing] = await t<TokenRow[]>`SELECT * FROM tokens WHERE name = ${token.name}`;
        return existing;
      }
      await insertAudit(t, audit);
      return undefined;
    })) as TokenRow | undefined;
  }

  async revoke(name: string, at: number, audit: AuditEntry): Promise<boolean> {
    return (await this.sql.begin(async (tx) => {
      const t = tx as unknown as Sql;
      const changed = (await t`UPDATE tokens SET revoked_at = ${at} WHERE name = ${name} AND revoked_at IS NULL`).count > 0;
      if (changed) await insertAudit(t, audit);
      return changed;
    })) as boolean;
  }

  async touch(name: string, at: number): Promise<void> {
    await this.sql`UPDATE tokens SET last_used_at = ${at} WHERE name = ${name}`;
  }

  async list(): Promise<TokenRow[]> {
    return [...(await this.sql<TokenRow[]>`SELECT * FROM tokens ORDER BY created_at, name`)];
  }

  async anyActive(): Promise<boolean> {
    const [row] = await this.sql<{ active: boolean }[]>`SELECT EXISTS (SELECT 1 FROM tokens WHERE revoked_at IS NULL) AS active`;
    return row!.active;
  }
}
