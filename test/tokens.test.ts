import { createHash } from 'node:crypto';
import { rm } from 'node:fs/promises';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { indexRows } from './helpers/backend.js';
import { runCli } from './helpers/cli.js';
import { startServeProcess } from './helpers/serve-process.js';
import { ADMIN_TOKEN, get, makeDataDir, startTestServer, type TestServer } from './helpers/server.js';

const sha512 = (b: Buffer | string) => createHash('sha512').update(b).digest('hex');
const SECRET = /^fp_[A-Za-z0-9_-]{43}$/;

async function createToken(dataDir: string, name: string, scopes: string[]): Promise<string> {
  const res = await runCli(['token', 'create', '--name', name, ...scopes.flatMap((s) => ['--scope', s])], {
    FASTPULL_DATA_DIR: dataDir,
  });
  expect(res.code, res.stderr).toBe(0);
  const lines = res.stdout.trimEnd().split('\n');
  const secret = lines[lines.length - 1]!;
  expect(secret).toMatch(SECRET);
  return secret;
}

async function call(base: string, method: 'GET' | 'PUT' | 'POST' | 'DELETE', path: string, token: string | undefined, body?: string) {
  const res = await request(`${base}${path}`, {
    method,
    headers: {
      ...(token !== undefined ? { authorization: `Bearer ${token}` } : {}),
      ...(method === 'POST' ? { 'content-type': 'application/json' } : {}),
    },
    ...(body !== undefined ? { body } : {}),
  });
  const text = await res.body.text();
  return { status: res.statusCode, json: text ? JSON.parse(text) : undefined, headers: res.headers };
}

describe('scoped tokens', () => {
  let server: TestServer;
  const secrets: Record<string, string> = {};
  const file = 'tok-1.0.tar.gz';
  const content = 'token test\n';
  const hash = sha512(content);

  beforeAll(async () => {
    server = await startTestServer({ adminRateLimitPerMinute: 0 });
    // Created by the CLI beside the running server, on the same data directory.
    secrets.reader = await createToken(server.dataDir, 'reader', ['read-api']);
    secrets.spider = await createToken(server.dataDir, 'spider', ['upload']);
    secrets.boss = await createToken(server.dataDir, 'boss', ['admin']);
    secrets.both = await createToken(server.dataDir, 'both', ['upload', 'read-api']);
  });
  afterAll(async () => server.stop());

  /** Each admin endpoint, the scope it needs, and how to put the index in a state where it succeeds. */
  const endpoints = [
    {
      scope: 'upload',
      method: 'PUT' as const,
      path: () => `/api/v1/distfiles/${file}`,
      body: () => content,
      ok: [200, 201],
    },
    { scope: 'upload', method: 'PUT' as const, path: () => `/api/v1/blobs/${hash}`, body: () => content, ok: [200, 201] },
    {
      scope: 'upload',
      method: 'POST' as const,
      path: () => '/api/v1/links',
      body: () => JSON.stringify({ filename: 'linked-1.0.tar.gz', sha512: hash }),
      ok: [200],
    },
    { scope: 'read-api', method: 'GET' as const, path: () => `/api/v1/distfiles/${file}`, ok: [200] },
    { scope: 'read-api', method: 'GET' as const, path: () => `/api/v1/blobs/${hash}`, ok: [200] },
    { scope: 'admin', method: 'DELETE' as const, path: () => `/api/v1/distfiles/${file}`, ok: [200] },
  ];
  const grants: Record<string, string[]> = {
    reader: ['read-api'],
    spider: ['upload'],
    boss: ['read-api', 'upload', 'admin'],
    both: ['upload', 'read-api'],
  };

  for (const who of Object.keys(grants)) {
    for (const ep of endpoints) {
      const allowed = grants[who]!.includes(ep.scope);
      it(`${who} is ${allowed ? 'allowed' : 'denied'} ${ep.method} ${ep.path()}`, async () => {
        // Known state: the file is uploaded and attached (by the bootstrap token).
        expect((await server.upload(file, content)).status).toBeLessThan(300);
        const res = await call(server.baseUrl, ep.method, ep.path(), secrets[who], ep.body?.());
        if (allowed) {
          expect(ep.ok, JSON.stringify(res.json)).toContain(res.status);
        } else {
          expect(res.status).toBe(403);
          expect(res.json).toMatchObject({ error: 'FORBIDDEN', scope: ep.scope });
          expect(res.json.message).toContain(ep.scope);
        }
      });
    }
  }

  it('refuses a missing token with 401 and an unknown one with 403', async () => {
    const none = await call(server.baseUrl, 'GET', `/api/v1/blobs/${hash}`, undefined);
    expect(none.status).toBe(401);
    expect(none.json.error).toBe('UNAUTHORIZED');
    expect(none.headers['www-authenticate']).toBe('Bearer');
    const unknown = await call(server.baseUrl, 'GET', `/api/v1/blobs/${hash}`, `fp_${'A'.repeat(43)}`);
    expect(unknown.status).toBe(403);
    expect(unknown.json).toEqual({ error: 'FORBIDDEN', message: 'the token is not valid' });
  });

  it('records uploads and deletions with the token name', async () => {
    const name = 'audited-2.0.tar.gz';
    const body = 'audit me\n';
    const up = await call(server.baseUrl, 'PUT', `/api/v1/distfiles/${name}`, secrets.spider, body);
    expect(up.status).toBe(201);
    const byHash = await call(server.baseUrl, 'PUT', `/api/v1/blobs/${sha512('pinned\n')}`, secrets.spider, 'pinned\n');
    expect(byHash.status).toBe(201);
    const del = await call(server.baseUrl, 'DELETE', `/api/v1/distfiles/${name}`, secrets.boss);
    expect(del.status).toBe(200);

    const info = await call(server.baseUrl, 'GET', `/api/v1/distfiles/${name}`, secrets.reader);
    expect(info.json.history[0]).toMatchObject({ attachedBy: 'spider', detachedBy: 'boss' });

    const rows = await indexRows(
      server,
      `SELECT actor, action, status, filename, sha512 FROM audit_log WHERE actor IN ('spider', 'boss') AND (filename = ? OR sha512 = ?) ORDER BY id`,
      [name, sha512('pinned\n')],
    );
    expect(rows).toEqual([
      { actor: 'spider', action: 'PUT /api/v1/distfiles/:filename', status: 201, filename: name, sha512: sha512(body) },
      { actor: 'spider', action: 'PUT /api/v1/blobs/:sha512', status: 201, filename: null, sha512: sha512('pinned\n') },
      { actor: 'boss', action: 'DELETE /api/v1/distfiles/:filename', status: 200, filename: name, sha512: null },
    ]);

    const cli = await runCli(['audit', '--actor', 'boss'], { FASTPULL_DATA_DIR: server.dataDir });
    expect(cli.code, cli.stderr).toBe(0);
    const last = cli.stdout.trim().split('\n').at(-1)!;
    expect(last).toMatch(new RegExp(`^\\d{4}-\\S+  boss  DELETE /api/v1/distfiles/:filename  200  ${name.replace(/\./g, '\\.')}$`));
    expect(cli.stdout).not.toMatch(/ spider /);
    const created = await runCli(['audit', '--json', '--limit', '10000'], { FASTPULL_DATA_DIR: server.dataDir });
    const entries = JSON.parse(created.stdout) as any[];
    expect(entries.filter((e) => e.action === 'token.create').map((e) => e.detail)).toEqual(
      expect.arrayContaining(['spider: upload', 'boss: admin', 'both: read-api upload']),
    );
  });

  it('lists tokens without secrets, and a revoked token is refused on the very next request', async () => {
    const secret = await createToken(server.dataDir, 'shortlived', ['read-api']);
    expect((await call(server.baseUrl, 'GET', `/api/v1/blobs/${hash}`, secret)).status).toBe(200);

    const revoke = await runCli(['token', 'revoke', 'shortlived'], { FASTPULL_DATA_DIR: server.dataDir });
    expect(revoke.code, revoke.stderr).toBe(0);
    const after = await call(server.baseUrl, 'GET', `/api/v1/blobs/${hash}`, secret);
    expect(after.status).toBe(403);
    expect(after.json.error).toBe('FORBIDDEN');

    const list = await runCli(['token', 'list'], { FASTPULL_DATA_DIR: server.dataDir });
    expect(list.code, list.stderr).toBe(0);
    const lines = list.stdout.trim().split('\n');
    expect(lines[0]).toMatch(/^NAME\s+SCOPES\s+CREATED\s+REVOKED\s+LAST USED$/);
    const row = (n: string) => lines.find((l) => l.startsWith(`${n} `))!;
    expect(row('spider')).toMatch(/^spider\s+upload\s+\d{4}-\d\d-\d\dT\S+\s+-\s+\d{4}-/);
    expect(row('both')).toMatch(/^both\s+read-api,upload\s/);
    expect(row('shortlived')).toMatch(/^shortlived\s+read-api\s+\S+\s+\d{4}-\d\d-\d\dT/);
    for (const s of [...Object.values(secrets), secret]) expect(list.stdout).not.toContain(s);
    expect(list.stdout).not.toMatch(/fp_/);

    const json = await runCli(['token', 'list', '--json'], { FASTPULL_DATA_DIR: server.dataDir });
    const parsed = JSON.parse(json.stdout) as any[];
    expect(parsed.find((t) => t.name === 'shortlived').revokedAt).toMatch(/^\d{4}-/);
    expect(parsed.find((t) => t.name === 'reader').revokedAt).toBeNull();

    // Stored hashed: the secret itself is nowhere in the table.
    const [stored] = await indexRows<any>(server, 'SELECT * FROM tokens WHERE name = ?', ['shortlived']);
    expect(Buffer.isBuffer(stored.secret_sha256)).toBe(true);
    expect(stored.secret_sha256.equals(createHash('sha256').update(secret).digest())).toBe(true);
    expect(JSON.stringify(stored)).not.toContain(secret);
  });

  it('rejects bad CLI input with clear messages', async () => {
    const env = { FASTPULL_DATA_DIR: server.dataDir };
    const dup = await runCli(['token', 'create', '--name', 'spider', '--scope', 'upload'], env);
    expect(dup.code).toBe(2);
    expect(dup.stderr).toMatch(/already exists/);
    const reused = await runCli(['token', 'create', '--name', 'shortlived', '--scope', 'upload'], env);
    expect(reused.code).toBe(2);
    expect(reused.stderr).toMatch(/never reused/);
    const scope = await runCli(['token', 'create', '--name', 'x', '--scope', 'root'], env);
    expect(scope.code).toBe(2);
    expect(scope.stderr).toMatch(/unknown scope "root"/);
    const noScope = await runCli(['token', 'create', '--name', 'x'], env);
    expect(noScope.code).toBe(2);
    const reserved = await runCli(['token', 'create', '--name', 'bootstrap', '--scope', 'admin'], env);
    expect(reserved.code).toBe(2);
    expect(reserved.stderr).toMatch(/reserved/);
    const badName = await runCli(['token', 'create', '--name', '../x', '--scope', 'admin'], env);
    expect(badName.code).toBe(2);
    const missing = await runCli(['token', 'revoke', 'nobody'], env);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toMatch(/no active token named "nobody"/);
    const usage = await runCli(['token'], env);
    expect(usage.code).toBe(2);
    expect(usage.stderr).toMatch(/usage:/);
  });
});

describe('write API enablement', () => {
  it('is off with neither bootstrap token nor DB tokens, and on as soon as the CLI creates one', async () => {
    const server = await startTestServer({ adminToken: undefined });
    try {
      const before = await call(server.baseUrl, 'PUT', '/api/v1/distfiles/a-1.tar.gz', 'anything', 'a');
      expect(before.status).toBe(403);
      expect(before.json.message).toMatch(/disabled/);
      const secret = await createToken(server.dataDir, 'first', ['upload']);
      const after = await call(server.baseUrl, 'PUT', '/api/v1/distfiles/a-1.tar.gz', secret, 'a');
      expect(after.status).toBe(201);
      // The bootstrap credential was never configured, so its old value means nothing.
      expect((await call(server.baseUrl, 'PUT', '/api/v1/distfiles/a-1.tar.gz', ADMIN_TOKEN, 'a')).status).toBe(403);
      await runCli(['token', 'revoke', 'first'], { FASTPULL_DATA_DIR: server.dataDir });
      const revoked = await call(server.baseUrl, 'PUT', '/api/v1/distfiles/a-1.tar.gz', secret, 'a');
      expect(revoked.status).toBe(403);
      expect(revoked.json.message).toMatch(/disabled/);
    } finally {
      await server.stop();
    }
  });
});

describe('admin rate limit', () => {
  it('answers 429 RATE_LIMITED after the limit, counting unauthenticated attempts, never limiting downloads', async () => {
    const server = await startTestServer({ adminRateLimitPerMinute: 3 });
    try {
      expect((await server.upload('r-1.tar.gz', 'r')).status).toBe(201);
      expect((await call(server.baseUrl, 'GET', `/api/v1/blobs/${sha512('r')}`, ADMIN_TOKEN)).status).toBe(200);
      expect((await call(server.baseUrl, 'GET', `/api/v1/blobs/${sha512('r')}`, 'wrong')).status).toBe(403);
      const limited = await call(server.baseUrl, 'GET', `/api/v1/blobs/${sha512('r')}`, ADMIN_TOKEN);
      expect(limited.status).toBe(429);
      expect(limited.json.error).toBe('RATE_LIMITED');
      expect(limited.json.message).toMatch(/3 admin API requests a minute/);
      expect(Number(limited.headers['retry-after'])).toBeGreaterThan(0);
      const upload = await call(server.baseUrl, 'PUT', '/api/v1/distfiles/s-1.tar.gz', ADMIN_TOKEN, 's');
      expect(upload.status).toBe(429);
      for (let i = 0; i < 10; i++) expect((await get(`${server.baseUrl}/distfiles/r-1.tar.gz`)).status).toBe(200);
      expect((await get(`${server.baseUrl}/healthz`)).status).toBe(200);
    } finally {
      await server.stop();
    }
  });

  it('is off at 0', async () => {
    const server = await startTestServer({ adminRateLimitPerMinute: 0 });
    try {
      for (let i = 0; i < 20; i++) {
        expect((await call(server.baseUrl, 'GET', `/api/v1/blobs/${'a'.repeat(128)}`, ADMIN_TOKEN)).status).toBe(404);
      }
    } finally {
      await server.stop();
    }
  });
});

describe('secrets in logs', () => {
  it('never writes a token to the log, even at trace level and on failures', async () => {
    const dataDir = await makeDataDir();
    const bootstrap = 'bootstrap-secret-value-0123456789abcdef';
    const secret = await createToken(dataDir, 'spider', ['upload']);
    const proc = await startServeProcess({
      FASTPULL_DATA_DIR: dataDir,
      FASTPULL_ADMIN_TOKEN: bootstrap,
      FASTPULL_LOG_LEVEL: 'trace',
    });
    try {
      expect((await call(proc.baseUrl, 'PUT', '/api/v1/distfiles/l-1.tar.gz', secret, 'l')).status).toBe(201);
      expect((await call(proc.baseUrl, 'GET', `/api/v1/blobs/${sha512('l')}`, secret)).status).toBe(403);
      expect((await call(proc.baseUrl, 'PUT', '/api/v1/distfiles/m-1.tar.gz', bootstrap, 'm')).status).toBe(201);
      expect((await call(proc.baseUrl, 'PUT', '/api/v1/distfiles/n-1.tar.gz', `${secret}x`, 'n')).status).toBe(403);
      // Clients that wrongly put a credential in the URL must not get it written to the log either.
      // (An unknown parameter on a write is refused with 400, and still logged redacted.)
      expect((await call(proc.baseUrl, 'PUT', `/api/v1/distfiles/o-1.tar.gz?size=1&token=${secret}`, secret, 'o')).status).toBe(400);
      expect((await call(proc.baseUrl, 'PUT', '/api/v1/distfiles/o-1.tar.gz?size=1', secret, 'o')).status).toBe(201);
      expect((await call(proc.baseUrl, 'GET', `/api/v1/blobs/${sha512('o')}?access_token=${encodeURIComponent(bootstrap)}`, bootstrap)).status).toBe(200);
      expect((await call(proc.baseUrl, 'GET', `/api/v1/blobs/${sha512('o')}?x=${secret}`, bootstrap)).status).toBe(200);
    } finally {
      proc.child.kill('SIGTERM');
      expect(await proc.exited).toBe(0);
    }
    const out = proc.output();
    // The log has the requests and who made them…
    expect(out).toMatch(/"by":"spider"/);
    expect(out).toMatch(/"by":"bootstrap"/);
    expect(out).toContain('o-1.tar.gz?size=1&token=[redacted]');
    // …but no secret, nor any recognisable piece of one.
    expect(out).not.toContain(bootstrap);
    expect(out).not.toContain(secret.slice(3, 20));
    await rm(dataDir, { recursive: true, force: true });
  });
});
