import { createHmac } from 'node:crypto';
import { rm } from 'node:fs/promises';
import { userInfo } from 'node:os';
import { request } from 'undici';
import { afterEach, describe, expect, it } from 'vitest';
import { hashPaths, namePaths, portageQuote } from '../src/events/paths.js';
import { runCli } from './helpers/cli.js';
import { TEST_BACKEND } from './helpers/backend.js';
import { flipBit, sha512 } from './helpers/integrity.js';
import { startRecorder, type Recorded, type Recorder } from './helpers/recorder.js';
import { startServeProcess, type ServeProcess } from './helpers/serve-process.js';
import { ADMIN_TOKEN, makeDataDir } from './helpers/server.js';

const auth = { authorization: `Bearer ${ADMIN_TOKEN}` };

/** Fast retries and polling so the tests wait little; the allow-list lets the SSRF guard reach the local recorder. */
function baseEnv(dataDir: string): Record<string, string> {
  return {
    FASTPULL_DATA_DIR: dataDir,
    FASTPULL_ADMIN_TOKEN: ADMIN_TOKEN,
    FASTPULL_FETCH_ALLOW_CIDRS: '127.0.0.0/8',
    FASTPULL_EVENT_POLL_MS: '100',
    FASTPULL_EVENT_RETRY_BASE_MS: '100',
    FASTPULL_EVENT_RETRY_MAX_MS: '1000',
    FASTPULL_EVENT_TIMEOUT_MS: '1000',
    FASTPULL_CDN_REQUESTS_PER_MINUTE: '6000',
    FASTPULL_MIN_FREE_BYTES: '0',
  };
}

function cdn77Env(recorder: Recorder): Record<string, string> {
  return {
    FASTPULL_CDN: 'cdn77',
    FASTPULL_CDN77_API_URL: recorder.url,
    FASTPULL_CDN77_RESOURCE_ID: '1234',
    FASTPULL_CDN77_TOKEN: 'cdn-token',
  };
}

async function put(baseUrl: string, name: string, body: string): Promise<number> {
  const res = await request(`${baseUrl}/api/v1/distfiles/${encodeURIComponent(name)}`, { method: 'PUT', body, headers: auth });
  await res.body.dump();
  return res.statusCode;
}

async function call(baseUrl: string, method: 'GET' | 'POST' | 'DELETE', path: string, body?: unknown, headers = auth) {
  const res = await request(`${baseUrl}${path}`, {
    method,
    headers: body === undefined ? headers : { ...headers, 'content-type': 'application/json' },
    ...(body === undefined ? {} : { body: JSON.stringify(body) }),
  });
  const text = await res.body.text();
  return { status: res.statusCode, json: text.startsWith('{') ? JSON.parse(text) : text };
}

async function events(baseUrl: string, after = 0): Promise<any[]> {
  const { status, json } = await call(baseUrl, 'GET', `/api/v1/events?after=${after}&limit=1000`);
  expect(status).toBe(200);
  return json.events;
}

const purges = (r: Recorder) => r.requests.filter((q) => q.url === '/v3/cdn/1234/job/purge');
const prefetches = (r: Recorder) => r.requests.filter((q) => q.url === '/v3/cdn/1234/job/prefetch');
const paths = (q: Recorded): string[] => JSON.parse(q.body).paths;
const eventId = (q: Recorded): number => JSON.parse(q.body).id;
const okFor = (r: Recorder, id: number) => r.requests.filter((q) => eventId(q) === id && q.answer === 200);

const cleanup: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  while (cleanup.length > 0) await cleanup.pop()!().catch(() => undefined);
});

async function serve(env: Record<string, string>): Promise<ServeProcess> {
  const proc = await startServeProcess(env);
  cleanup.push(async () => {
    if (proc.child.exitCode === null && proc.child.signalCode === null) proc.child.kill('SIGTERM');
    await proc.exited;
  });
  return proc;
}

async function recorder(): Promise<Recorder> {
  const r = await startRecorder();
  cleanup.push(() => r.close());
  return r;
}

async function dataDir(): Promise<string> {
  const dir = await makeDataDir();
  cleanup.push(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

describe('purge paths', () => {
  it('quotes names exactly like Portage (urllib.parse.quote, safe "/")', () => {
    // Expected values printed by Python 3's urllib.parse.quote.
    expect(portageQuote('/distfiles/libsigc++-2.10.8.tar.xz')).toBe('/distfiles/libsigc%2B%2B-2.10.8.tar.xz');
    expect(portageQuote("/distfiles/a b@c:d,e!'()*~_.-x=y&z;$#?%[].tar.gz")).toBe(
      '/distfiles/a%20b%40c%3Ad%2Ce%21%27%28%29%2A~_.-x%3Dy%26z%3B%24%23%3F%25%5B%5D.tar.gz',
    );
    expect(portageQuote('/distfiles/café-ß-日本.tar.gz')).toBe('/distfiles/caf%C3%A9-%C3%9F-%E6%97%A5%E6%9C%AC.tar.gz');
    expect(namePaths('libsigc++-2.10.8.tar.xz')).toEqual(['/distfiles/libsigc%2B%2B-2.10.8.tar.xz', '/distfiles/b4/libsigc%2B%2B-2.10.8.tar.xz']);
  });
});

describe('CDN purge and prefetch (CDN77 API)', () => {
  it('re-point: one purge with exactly the name paths; new blobs prefetched by content hash; events pollable', async () => {
    const cdn = await recorder();
    cdn.respond = () => 202;
    const dir = await dataDir();
    const server = await serve({ ...baseEnv(dir), ...cdn77Env(cdn), FASTPULL_CDN_PREFETCH: 'true' });
    const name = 'libsigc++-2.10.8.tar.xz';

    expect(await put(server.baseUrl, name, 'first roll\n')).toBe(201);
    expect(await put(server.baseUrl, name, 'second roll\n')).toBe(201);
    expect(await cdn.waitFor((r) => r.some((q) => q.url.endsWith('/job/purge')))).toBe(true);
    // A later, unrelated purge proves nothing else was queued behind the first one.
    expect(await put(server.baseUrl, 'sentinel-1.tar.gz', 'sentinel\n')).toBe(201);
    expect((await call(server.baseUrl, 'DELETE', '/api/v1/distfiles/sentinel-1.tar.gz')).status).toBe(200);
    expect(await cdn.waitFor((r) => purges({ requests: r } as Recorder).length >= 2)).toBe(true);

    const [repoint, sentinel] = purges(cdn);
    expect(purges(cdn)).toHaveLength(2);
    expect(repoint!.method).toBe('POST');
    expect(repoint!.headers.authorization).toBe('Bearer cdn-token');
    expect(repoint!.headers['content-type']).toBe('application/json');
    expect(JSON.parse(repoint!.body)).toEqual({ paths: ['/distfiles/libsigc%2B%2B-2.10.8.tar.xz', '/distfiles/b4/libsigc%2B%2B-2.10.8.tar.xz'] });
    expect(paths(sentinel!)).toEqual(namePaths('sentinel-1.tar.gz'));
    console.log(`recorded re-point purge: POST ${repoint!.url} ${repoint!.body}`);

    expect(await cdn.waitFor((r) => prefetches({ requests: r } as Recorder).flatMap(paths).length >= 3)).toBe(true);
    const prefetched = prefetches(cdn).flatMap(paths);
    for (const body of ['first roll\n', 'second roll\n', 'sentinel\n']) expect(prefetched).toContain(hashPaths(sha512(body))[0]);
    expect(prefetched).toHaveLength(3);
    console.log(`recorded detach purge: POST ${sentinel!.url} ${sentinel!.body}`);
    console.log(`recorded prefetch: POST ${prefetches(cdn)[0]!.url} ${prefetches(cdn)[0]!.body}`);

    expect((await call(server.baseUrl, 'GET', '/api/v1/events', undefined, {} as typeof auth)).status).toBe(401);
    const stream = await events(server.baseUrl);
    expect(stream.map((e) => e.type)).toEqual([
      'blob.stored',
      'name.attached',
      'blob.stored',
      'name.repointed',
      'blob.stored',
      'name.attached',
      'name.detached',
    ]);
    const repointed = stream[3];
    expect(repointed).toMatchObject({
      sha512: sha512('second roll\n'),
      previousSha512: sha512('first roll\n'),
      size: 12,
      names: [name],
      actor: 'bootstrap',
    });
    expect(stream.map((e) => e.id)).toEqual([...stream.map((e) => e.id)].sort((a, b) => a - b));
    expect(await events(server.baseUrl, repointed.id)).toEqual(stream.slice(4));
    // Re-uploading the same bytes under the same name changes nothing: no event, no purge.
    expect(await put(server.baseUrl, name, 'second roll\n')).toBe(200);
    expect(await events(server.baseUrl, stream[6].id)).toEqual([]);
  });

  it('quarantine found by `fastpull verify`: purge of every hash path form and every attached name; `fastpull purge` by hand', async () => {
    const cdn = await recorder();
    const dir = await dataDir();
    const env = { ...baseEnv(dir), ...cdn77Env(cdn) };
    const server = await serve(env);
    const body = 'bytes that will rot on disk\n'.repeat(100);
    const sha = sha512(body);
    expect(await put(server.baseUrl, 'foo-1.0.tar.gz', body)).toBe(201);
    expect((await call(server.baseUrl, 'POST', '/api/v1/links', { filename: 'foo@2.0+x.tar.gz', sha512: sha })).status).toBe(200);

    await flipBit(dir, sha, 10);
    const verify = await runCli(['verify', '--data-dir', dir], env);
    expect(verify.code).toBe(1);
    expect(verify.stdout).toContain(`corrupt ${sha}`);

    expect(await cdn.waitFor((r) => r.length >= 1)).toBe(true);
    const [purge] = purges(cdn);
    expect(cdn.requests).toHaveLength(1);
    const expected = [
      `/distfiles/${sha.slice(0, 2)}/${sha.slice(2, 4)}/${sha.slice(4, 6)}/${sha}`,
      `/${sha.slice(0, 2)}/${sha.slice(2, 4)}/${sha.slice(4, 6)}/${sha}`,
      `/distfiles/${sha}`,
      `/${sha}`,
      '/distfiles/foo%402.0%2Bx.tar.gz',
      '/distfiles/23/foo%402.0%2Bx.tar.gz',
      '/distfiles/foo-1.0.tar.gz',
      '/distfiles/4b/foo-1.0.tar.gz',
    ];
    expect(paths(purge!)).toEqual(expected);
    console.log(`recorded quarantine purge: POST ${purge!.url} ${purge!.body}`);
    const quarantine = (await events(server.baseUrl)).find((e) => e.type === 'blob.quarantined');
    expect(quarantine).toMatchObject({ sha512: sha, names: ['foo@2.0+x.tar.gz', 'foo-1.0.tar.gz'], actor: `cli:${userInfo().username}` });

    const manual = await runCli(['purge', '--data-dir', dir, sha, 'bar 1.0.tar.gz'], env);
    expect(manual.code, manual.stderr).toBe(0);
    expect(cdn.requests).toHaveLength(2);
    expect(paths(cdn.requests[1]!)).toEqual([...expected, ...namePaths('bar 1.0.tar.gz')]);
    expect(namePaths('bar 1.0.tar.gz')[0]).toBe('/distfiles/bar%201.0.tar.gz');
    console.log(`recorded fastpull purge: POST ${cdn.requests[1]!.url} ${cdn.requests[1]!.body}`);
    expect((await runCli(['purge', '--data-dir', dir, 'a/b'], env)).code).toBe(2);
  });
});

describe('CDN outages', () => {
  it('a purge survives a hung, rate-limited and failing CDN API; readiness reports it without failing', async () => {
    const cdn = await recorder();
    let allow = false;
    cdn.respond = () => {
      const n = cdn.requests.length + 1;
      if (n === 1) return 'hang';
      if (n === 2) return { status: 429, headers: { 'retry-after': '1' } };
      return allow ? 201 : 500;
    };
    const dir = await dataDir();
    const server = await serve({ ...baseEnv(dir), ...cdn77Env(cdn) });
    expect(await put(server.baseUrl, 'outage-1.0.tar.gz', 'outage\n')).toBe(201);
    expect((await call(server.baseUrl, 'DELETE', '/api/v1/distfiles/outage-1.0.tar.gz')).status).toBe(200);

    const readyz = () => call(server.baseUrl, 'GET', '/readyz', undefined, {} as typeof auth);
    expect(await cdn.waitFor((r) => r.length >= 3)).toBe(true);
    let ready = await readyz();
    // The status behind readyz is cached for a second: look again until it has caught up (bounded).
    for (let i = 0; i < 100 && ready.json.checks.events.ok; i++) {
      await new Promise((r) => setTimeout(r, 50));
      ready = await readyz();
    }
    expect(ready.status).toBe(200);
    expect(ready.json.checks.events.ok).toBe(false);
    expect(ready.json.checks.events.detail).toMatch(/cdn:cdn77: 1 pending.*failing \(CDN purge answered (429|500)\)/);

    allow = true;
    expect(await cdn.waitFor((r) => r.some((q) => q.answer === 201))).toBe(true);
    const answers = cdn.requests.map((q) => q.answer);
    expect(answers.slice(0, 3)).toEqual(['hang', 429, 500]);
    expect(answers.filter((a) => a === 201)).toHaveLength(1);
    expect(answers[answers.length - 1]).toBe(201);
    expect(new Set(cdn.requests.map((q) => q.body))).toEqual(new Set([JSON.stringify({ paths: namePaths('outage-1.0.tar.gz') })]));
    let status = await call(server.baseUrl, 'GET', '/api/v1/status', undefined, {} as typeof auth);
    for (let i = 0; i < 100 && status.json.events.targets[0].pending !== 0; i++) {
      await new Promise((r) => setTimeout(r, 50));
      status = await call(server.baseUrl, 'GET', '/api/v1/status', undefined, {} as typeof auth);
    }
    expect(status.json.events.targets[0]).toMatchObject({ target: 'cdn:cdn77', pending: 0, failed: 0 });
    expect(status.json.events.targets[0].lastSuccessAt).not.toBeNull();
  });
});

describe('webhooks', () => {
  it('a server killed between the change and its delivery delivers it after restart, once', async () => {
    const hook = await recorder();
    hook.respond = () => 'hang';
    const dir = await dataDir();
    const env = { ...baseEnv(dir), FASTPULL_WEBHOOKS: `${hook.url}/hook`, FASTPULL_WEBHOOK_SECRET: 'k' };
    const first = await serve(env);
    expect(await put(first.baseUrl, 'crash-1.0.tar.gz', 'crash\n')).toBe(201);
    expect(await hook.waitFor((r) => r.length >= 1)).toBe(true);
    first.child.kill('SIGKILL');
    expect(await first.exited).toBe('SIGKILL');
    const hungBody = hook.requests[0]!.body;

    hook.respond = () => 200;
    const second = await serve(env);
    const [stored, attached] = await events(second.baseUrl);
    expect(eventId(hook.requests[0]!)).toBe(stored.id);
    expect(await hook.waitFor(() => okFor(hook, stored.id).length > 0 && okFor(hook, attached.id).length > 0)).toBe(true);
    expect(await put(second.baseUrl, 'after-1.0.tar.gz', 'after\n')).toBe(201);
    const later = await events(second.baseUrl, attached.id);
    expect(await hook.waitFor(() => later.every((e) => okFor(hook, e.id).length > 0))).toBe(true);

    expect(okFor(hook, stored.id)).toHaveLength(1);
    expect(okFor(hook, attached.id)).toHaveLength(1);
    expect(okFor(hook, stored.id)[0]!.body).toBe(hungBody);
    for (const e of later) expect(okFor(hook, e.id)).toHaveLength(1);
  });

  it('an endpoint failing twice (500, then 429) gets each event exactly once more per retry, signed', async () => {
    const hook = await recorder();
    const seen = new Map<number, number>();
    hook.respond = (q) => {
      const id = JSON.parse(q.body).id as number;
      const n = (seen.get(id) ?? 0) + 1;
      seen.set(id, n);
      return n === 1 ? 500 : n === 2 ? { status: 429, headers: { 'retry-after': '1' } } : 200;
    };
    const dir = await dataDir();
    const secret = 'webhook-secret';
    const server = await serve({ ...baseEnv(dir), FASTPULL_WEBHOOKS: `${hook.url}/a`, FASTPULL_WEBHOOK_SECRET: secret });
    expect(await put(server.baseUrl, 'retry-1.0.tar.gz', 'retry\n')).toBe(201);
    const [stored, attached] = await events(server.baseUrl);
    expect(await hook.waitFor(() => okFor(hook, attached.id).length > 0)).toBe(true);
    expect(await put(server.baseUrl, 'sentinel-2.tar.gz', 'sentinel 2\n')).toBe(201);
    const later = await events(server.baseUrl, attached.id);
    expect(await hook.waitFor(() => later.every((e) => okFor(hook, e.id).length > 0))).toBe(true);

    for (const event of [stored, attached]) {
      const got = hook.requests.filter((q) => eventId(q) === event.id);
      expect(got.map((q) => q.answer)).toEqual([500, 429, 200]);
      for (const q of got) {
        expect(q.body).toBe(got[0]!.body);
        expect(q.headers['x-fastpull-signature']).toBe(`sha256=${createHmac('sha256', secret).update(q.body).digest('hex')}`);
        expect(q.headers['x-fastpull-event-id']).toBe(String(event.id));
        expect(q.headers['x-fastpull-event']).toBe(event.type);
      }
      expect(JSON.parse(got[0]!.body)).toEqual(event);
    }
    console.log(`recorded webhook delivery: ${JSON.stringify(hook.requests.find((q) => q.answer === 200)!.headers['x-fastpull-signature'])} ${hook.requests.find((q) => q.answer === 200)!.body}`);
    // Per blob, in order: the name event was sent only after the blob event was delivered.
    const firstAttached = hook.requests.findIndex((q) => eventId(q) === attached.id);
    const storedDelivered = hook.requests.findIndex((q) => eventId(q) === stored.id && q.answer === 200);
    expect(firstAttached).toBeGreaterThan(storedDelivered);

    const metrics = (await call(server.baseUrl, 'GET', '/metrics', undefined, {} as typeof auth)).json as string;
    const target = /fastpull_event_deliveries_total\{target="(webhook:[^"]+)",result="failure"\} (\d+)/.exec(metrics);
    expect(target, metrics).not.toBeNull();
    expect(Number(target![2])).toBeGreaterThanOrEqual(4);
    expect(metrics).toMatch(new RegExp(`fastpull_event_deliveries_total\\{target="${target![1]}",result="success"\\} [4-9]`));
    expect(metrics).toMatch(new RegExp(`fastpull_event_last_success_timestamp_seconds\\{target="${target![1]}"\\} \\d`));
    expect(metrics).toMatch(/fastpull_outbox_pending_events\{target="webhook:[^"]+"\} 0/);
    const ready = await call(server.baseUrl, 'GET', '/readyz', undefined, {} as typeof auth);
    expect(ready.status).toBe(200);
    expect(ready.json.checks.events.detail).toContain('0 pending');
    const status = await call(server.baseUrl, 'GET', '/api/v1/status', undefined, {} as typeof auth);
    expect(status.json.events.targets[0]).toMatchObject({ target: target![1], pending: 0, lastError: 'webhook answered 429' });
  });

  it('two server processes on one data directory deliver each event once', async () => {
    const hook = await recorder();
    const dir = await dataDir();
    const env = { ...baseEnv(dir), FASTPULL_WEBHOOKS: `${hook.url}/hook` };
    const [a, b] = [await serve(env), await serve(env)];
    for (let i = 0; i < 8; i++) expect(await put((i % 2 ? a : b).baseUrl, `replica-${i}.tar.gz`, `replica ${i}\n`)).toBe(201);
    const all = await events(a.baseUrl);
    expect(all).toHaveLength(16);
    expect(await hook.waitFor(() => all.every((e) => okFor(hook, e.id).length > 0))).toBe(true);
    expect(await put(b.baseUrl, 'sentinel-3.tar.gz', 'sentinel 3\n')).toBe(201);
    const later = await events(a.baseUrl, all[all.length - 1].id);
    expect(await hook.waitFor(() => later.every((e) => okFor(hook, e.id).length > 0))).toBe(true);
    for (const e of [...all, ...later]) expect(okFor(hook, e.id), `event ${e.id}`).toHaveLength(1);
    expect(hook.requests).toHaveLength(all.length + later.length);
  });
});

describe('generic CDN and gc', () => {
  it('`fastpull purge` with a generic CDN fills the body template and splits paths at FASTPULL_CDN_MAX_PATHS', async () => {
    const cache = await recorder();
    const dir = await dataDir();
    const env = {
      ...baseEnv(dir),
      FASTPULL_CDN: 'generic',
      FASTPULL_CDN_PURGE_URL: `${cache.url}/purge`,
      FASTPULL_CDN_BODY_TEMPLATE: '{"type":"{{action}}","urls":{{paths}},"zone":"distfiles"}',
      FASTPULL_CDN_AUTHORIZATION: 'Token abc',
      FASTPULL_CDN_MAX_PATHS: '3',
    };
    const sha = sha512('abc');
    // No index in this data directory: only the hash forms are known for a sha512 (and it says so).
    const result = await runCli(['purge', '--data-dir', dir, sha, 'linux-6.6.tar.xz'], env);
    expect(result.code, result.stderr).toBe(0);
    // With PostgreSQL (FASTPULL_TEST_BACKEND=s3+postgres) there is always an index: an empty one knows no names either.
    if (TEST_BACKEND === 'local') expect(result.stderr).toContain('no index');
    const all = [...hashPaths(sha), ...namePaths('linux-6.6.tar.xz')];
    expect(all[5]).toBe('/distfiles/d5/linux-6.6.tar.xz');
    expect(cache.requests.map((q) => q.url)).toEqual(['/purge', '/purge']);
    expect(cache.requests.map((q) => JSON.parse(q.body))).toEqual([
      { type: 'purge', urls: all.slice(0, 3), zone: 'distfiles' },
      { type: 'purge', urls: all.slice(3, 6), zone: 'distfiles' },
    ]);
    expect(cache.requests[0]!.headers.authorization).toBe('Token abc');
    console.log(`recorded generic purge: POST ${cache.requests[0]!.url} ${cache.requests[0]!.body}`);

    cache.respond = () => 503;
    const failing = await runCli(['purge', '--retries', '1', '--data-dir', dir, 'linux-6.6.tar.xz'], env);
    expect(failing.code).toBe(1);
    expect(failing.stderr).toContain('answered 503');
    expect(cache.requests.slice(2).map((q) => q.answer)).toEqual([503, 503]);
  });

  it('the background scrub announces a quarantine as actor "scrub"', async () => {
    const dir = await dataDir();
    const server = await serve({ ...baseEnv(dir), FASTPULL_SCRUB_BYTES_PER_SECOND: '100000000', FASTPULL_SCRUB_PAUSE_SECONDS: '0' });
    const body = 'scrubbed bytes\n'.repeat(50);
    expect(await put(server.baseUrl, 'scrub-1.0.tar.gz', body)).toBe(201);
    await flipBit(dir, sha512(body), 3);
    let quarantine: any;
    for (let i = 0; i < 200 && !quarantine; i++) {
      quarantine = (await events(server.baseUrl)).find((e) => e.type === 'blob.quarantined');
      if (!quarantine) await new Promise((r) => setTimeout(r, 100));
    }
    expect(quarantine).toMatchObject({ sha512: sha512(body), names: ['scrub-1.0.tar.gz'], actor: 'scrub' });
  });

  it('gc deleting a blob announces it (blob.deleted, with its past names and the CLI actor)', async () => {
    const dir = await dataDir();
    const env = baseEnv(dir);
    const server = await serve(env);
    expect(await put(server.baseUrl, 'old-1.0.tar.gz', 'old\n')).toBe(201);
    expect((await call(server.baseUrl, 'DELETE', '/api/v1/distfiles/old-1.0.tar.gz')).status).toBe(200);
    const gc = await runCli(['gc', '--grace', '0', '--data-dir', dir], env);
    expect(gc.code, gc.stderr).toBe(0);
    const stream = await events(server.baseUrl);
    expect(stream.map((e) => e.type)).toEqual(['blob.stored', 'name.attached', 'name.detached', 'blob.deleted']);
    expect(stream[3]).toMatchObject({ sha512: sha512('old\n'), size: 4, names: ['old-1.0.tar.gz'], actor: `cli:${userInfo().username}` });
  });
});

describe('outbox bookkeeping (real SQLite file)', () => {
  it('refuses events outside a transaction, starts a new target at the newest event, prunes what no configured target needs', async () => {
    const { openDatabase, databaseFile } = await import('../src/db/open.js');
    const { EventOutbox, recordEvent } = await import('../src/db/events.js');
    const { DistfileIndex } = await import('../src/db/index.js');
    const dir = await dataDir();
    const db = openDatabase(databaseFile(dir));
    try {
      const index = new DistfileIndex(db);
      const digests = (body: string) => ({ sha512: sha512(body), blake2b: 'b'.repeat(128), sha256: 'c'.repeat(64), size: body.length });
      expect(() => recordEvent(db, { type: 'blob.stored', sha512: sha512('x') })).toThrow(/inside the transaction/);
      index.recordBlob(digests('one'), { filename: 'one.tar.gz', by: 'test', at: 1_000 });
      const outbox = new EventOutbox(db);
      outbox.materialize('webhook:new', ['blob.stored', 'name.attached']);
      expect(outbox.status('webhook:new').pending).toBe(0);
      index.recordBlob(digests('two'), { filename: 'two.tar.gz', by: 'test', at: 2_000 });
      outbox.materialize('webhook:new', ['blob.stored', 'name.attached']);
      outbox.materialize('webhook:old', ['blob.stored', 'name.attached']);
      expect(outbox.status('webhook:new').pending).toBe(2);

      // Pending for a configured target: kept. Pending only for a target no longer configured: pruned.
      expect(outbox.prune(Date.now(), ['webhook:new'])).toBe(2);
      expect(outbox.after(0, 10).map((e) => e.at)).toEqual([2_000, 2_000]);
      const claimed = outbox.claim('webhook:new', 'me', 60_000, (c) => c);
      // One per blob at a time: the name event waits for the blob event.
      expect(claimed.map((c) => c.event.type)).toEqual(['blob.stored']);
      outbox.delivered('webhook:new', claimed.map((c) => c.event.id));
      // Delivered everywhere and past retention: gone; the pending one stays.
      expect(outbox.prune(Date.now(), ['webhook:new'])).toBe(1);
      expect(outbox.after(0, 10).map((e) => e.type)).toEqual(['name.attached']);
      expect(outbox.claim('webhook:new', 'me', 60_000, (c) => c).map((c) => c.event.type)).toEqual(['name.attached']);
    } finally {
      db.close();
    }
  });
});
