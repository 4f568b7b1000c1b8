import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import Fastify from 'fastify';
import { request } from 'undici';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { BootstrapAuthenticator } from '../src/auth/tokens.js';
import { EventOutbox, recordEvent, type ClaimedDelivery, type EventRow, type NewEvent, type Outbox } from '../src/db/events.js';
import { openDatabase, type DB } from '../src/db/open.js';
import { PostgresEventOutbox, recordEvent as recordPostgresEvent } from '../src/db/postgres/events.js';
import { connectPostgres, migratePostgres, type Sql } from '../src/db/postgres-index.js';
import { EventDispatcher } from '../src/events/dispatcher.js';
import { createEventAgent } from '../src/events/http.js';
import { WebhookTarget, type DeliveryTarget } from '../src/events/targets.js';
import { hashPaths, namePaths } from '../src/events/paths.js';
import { eventRoutes } from '../src/http/routes/events.js';
import { SHARED_SCHEMAS } from '../src/http/schemas.js';
import { sha512 } from './helpers/core.js';
import { runCli } from './helpers/cli.js';
import { startRecorder, type Recorded } from './helpers/recorder.js';
import { startServeProcess } from './helpers/serve-process.js';
import { ADMIN_TOKEN } from './helpers/server.js';
import { postgresMissing, startPostgres, type Postgres } from './helpers/postgres.js';
import { skipWithoutService } from './helpers/services.js';

/** The outbox on both index engines: the same rows from the same changes. */
interface Engine {
  /** Raw setup, written the same way on both engines (`?` placeholders become `$n` on PostgreSQL). */
  exec(statement: string, ...params: (string | number | null)[]): Promise<void>;
  /** Records `event` inside a transaction, as a change's own code does. */
  record(event: NewEvent): Promise<number>;
  /** Records outside any transaction (must be refused). */
  recordBare(event: NewEvent): Promise<number>;
  rows(): Promise<EventRow[]>;
  /** The outbox area on a connection of its own, as another replica (or process) would hold it. */
  outbox(): Promise<Outbox>;
  /**
   * Records `event` in a transaction left open until `commit` is called (a slow writer): resolves once the
   * event is written, with its id and the commit that ends the transaction.
   */
  recordOpen(event: NewEvent): Promise<{ id: number; commit(): Promise<void> }>;
  /** The environment that points a CLI command at this index. */
  cliEnv: Record<string, string>;
}

const dirs: string[] = [];
const pools: Sql[] = [];
const sqlites: DB[] = [];
let pg: Postgres | undefined;
let databases = 0;
const skipPg = skipWithoutService('PostgreSQL', postgresMissing());

async function openSqlite(): Promise<Engine> {
  const dir = await mkdtemp(path.join(tmpdir(), 'fp-outbox-'));
  dirs.push(dir);
  const db = openDatabase(path.join(dir, 'index.sqlite'));
  sqlites.push(db);
  return {
    exec: async (statement, ...params) => void db.prepare(statement).run(...params),
    record: async (event) => db.transaction(() => recordEvent(db, event))(),
    recordBare: async (event) => recordEvent(db, event),
    rows: async () => db.prepare('SELECT * FROM events ORDER BY id').all() as EventRow[],
    outbox: async () => {
      const other = openDatabase(path.join(dir, 'index.sqlite'));
      sqlites.push(other);
      return new EventOutbox(other);
    },
    // SQLite has one writer: an open write transaction holds every other writer back, so no slow-writer case.
    recordOpen: () => Promise.reject(new Error('not on SQLite')),
    cliEnv: { FASTPULL_DATA_DIR: dir },
  };
}

async function openPostgres(): Promise<Engine> {
  const url = await pg!.createDatabase(`outbox_${++databases}`);
  const dir = await mkdtemp(path.join(tmpdir(), 'fp-outbox-'));
  dirs.push(dir);
  const sql = connectPostgres(url, { max: 2 });
  pools.push(sql);
  await migratePostgres(sql);
  return {
    exec: async (statement, ...params) => {
      let n = 0;
      await sql.unsafe(statement.replace(/\?/g, () => `$${++n}`), params);
    },
    record: (event) => sql.begin((tx) => recordPostgresEvent(tx, event)) as Promise<number>,
    recordBare: (event) => recordPostgresEvent(sql, event),
    rows: async () => [...(await sql<EventRow[]>`SELECT * FROM events ORDER BY id`)],
    outbox: async () => {
      const other = connectPostgres(url, { max: 2 });
      pools.push(other);
      return new PostgresEventOutbox(other);
    },
    recordOpen: (event) =>
      new Promise((resolve, reject) => {
        let release!: () => void;
        const held = new Promise<void>((r) => (release = r));
        const done = sql.begin(async (tx) => {
          const id = await recordPostgresEvent(tx, event);
          resolve({ id, commit: () => (release(), done) });
          await held;
        });
        done.then(() => undefined, reject);
      }) as Promise<{ id: number; commit(): Promise<void> }>,
    cliEnv: { FASTPULL_DATA_DIR: dir, FASTPULL_DATABASE_URL: url },
  };
}

const cleanup: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  while (cleanup.length > 0) await cleanup.pop()!().catch(() => undefined);
});

afterAll(async () => {
  for (const sql of pools) await sql.end({ timeout: 5 });
  for (const db of sqlites) db.close();
  await pg?.stop();
  for (const dir of dirs) await rm(dir, { recursive: true, force: true });
});

const hex = (text: string) => sha512(Buffer.from(text));

async function blob(engine: Engine, text: string, size: number): Promise<string> {
  const h = hex(text);
  await engine.exec(
    'INSERT INTO blobs (sha512, blake2b, sha256, size, ingested_at) VALUES (?, ?, ?, ?, ?)',
    h,
    h,
    h.slice(0, 64),
    size,
    1000,
  );
  return h;
}

async function attach(engine: Engine, filename: string, h: string, seq: number, detachedAt: number | null = null): Promise<void> {
  await engine.exec(
    'INSERT INTO names (filename, sha512, seq, first_attached_at, attached_at, detached_at) VALUES (?, ?, ?, ?, ?, ?)',
    filename,
    h,
    seq,
    seq,
    seq,
    detachedAt,
  );
}


const WEBHOOK_TYPES = ['blob.stored', 'name.attached', 'blob.quarantined'] as const;

/** A webhook to a local recorder, through the same guarded agent the server uses. */
async function webhook() {
  const recorder = await startRecorder();
  const agent = createEventAgent(2_000, ['127.0.0.0/8']);
  cleanup.push(() => recorder.close(), () => agent.destroy());
  return { recorder, target: () => new WebhookTarget(`${recorder.url}/hook`, undefined, agent, 2_000) };
}

function dispatcher(outbox: Outbox, target: DeliveryTarget): EventDispatcher {
  const d = new EventDispatcher({
    outbox,
    targets: [target],
    pollMs: 20,
    timeoutMs: 2_000,
    retryBaseMs: 50,
    retryMaxMs: 200,
    maxAttempts: 0,
    retentionDays: 0,
  });
  cleanup.push(() => d.stop());
  return d;
}

/** Holds each wrapped target's first send until every one of them is sending: the dispatchers overlap for sure. */
function barrier(parties: number) {
  let waiting = 0;
  let open!: () => void;
  const opened = new Promise<void>((r) => (open = r));
  return (inner: DeliveryTarget): DeliveryTarget => {
    let first = true;
    return {
      id: inner.id,
      types: inner.types,
      pick: (c) => inner.pick(c),
      ready: (signal) => inner.ready(signal),
      async send(deliveries, context) {
        if (first) {
          first = false;
          if (++waiting === parties) open();
          await opened;
        }
        return inner.send(deliveries, context);
      },
    };
  };
}

/** Polls `check` until it holds (bounded), returning whether it did. */
async function until(check: () => Promise<boolean>, deadlineMs = 30_000): Promise<boolean> {
  const end = Date.now() + deadlineMs;
  while (!(await check())) {
    if (Date.now() > end) return false;
    await new Promise((r) => setTimeout(r, 20));
  }
  return true;
}

const hookEvent = (r: Recorded) => ({ id: Number(r.headers['x-fastpull-event-id']), sha512: JSON.parse(r.body).sha512 as string, attempt: r.headers['x-fastpull-delivery-attempt'] });

describe.each([
  { name: 'sqlite', open: openSqlite, skip: false },
  { name: 'postgres', open: openPostgres, skip: skipPg },
])('outbox on $name', ({ name, open, skip }) => {
  beforeAll(async () => {
    if (!skip && name === 'postgres') pg ??= await startPostgres();
  }, 60_000);

  it.skipIf(skip)('records an event with the size and names its transaction sees, in SQLite’s exact text', async () => {
    const engine = await open();
    const h = await blob(engine, 'archive', 4_450_000_000);
    // Names JSON must not depend on the engine: odd characters, and an order SQLite's BINARY collation gives.
    await attach(engine, 'zlib-1.3.tar.xz', h, 1);
    await attach(engine, 'Été "quoted" \\ tab\there.tar.gz', h, 2);
    await attach(engine, 'libsigc++-2.10.8.tar.xz', h, 3);
    await attach(engine, 'b-old.tar.gz', h, 4, 5);
    await attach(engine, 'a-ctrl\u0001.tar.gz', h, 5, 6);

    const ids = [
      await engine.record({ type: 'blob.quarantined', sha512: h, actor: 'scrub', at: 10 }),
      await engine.record({ type: 'blob.deleted', sha512: h, at: 11 }),
      await engine.record({ type: 'name.repointed', sha512: h, names: ['x.tar.gz'], previousSha512: hex('older'), actor: 'spider', at: 12 }),
      await engine.record({ type: 'blob.stored', sha512: hex('unknown'), names: [], at: 13 }),
    ];
    expect(ids).toEqual([1, 2, 3, 4]);
    expect(await engine.rows()).toEqual([
      {
        id: 1, at: 10, type: 'blob.quarantined', sha512: h, size: 4_450_000_000, previous_sha512: null, actor: 'scrub',
        // Attached only, newest attachment first.
        names: JSON.stringify(['libsigc++-2.10.8.tar.xz', 'Été "quoted" \\ tab\there.tar.gz', 'zlib-1.3.tar.xz']),
      },
      {
        id: 2, at: 11, type: 'blob.deleted', sha512: h, size: 4_450_000_000, previous_sha512: null, actor: null,
        // Every name it ever had, in byte order.
        names: JSON.stringify(['a-ctrl\u0001.tar.gz', 'b-old.tar.gz', 'libsigc++-2.10.8.tar.xz', 'zlib-1.3.tar.xz', 'Été "quoted" \\ tab\there.tar.gz']),
      },
      { id: 3, at: 12, type: 'name.repointed', sha512: h, size: 4_450_000_000, names: '["x.tar.gz"]', previous_sha512: hex('older'), actor: 'spider' },
      { id: 4, at: 13, type: 'blob.stored', sha512: hex('unknown'), size: null, names: '[]', previous_sha512: null, actor: null },
    ]);
  });

  it.skipIf(skip)('a blob without names records an empty list', async () => {
    const engine = await open();
    const h = await blob(engine, 'nameless', 3);
    await engine.record({ type: 'blob.quarantined', sha512: h, at: 1 });
    await engine.record({ type: 'blob.deleted', sha512: h, at: 2 });
    expect((await engine.rows()).map((r) => r.names)).toEqual(['[]', '[]']);
  });

  it.skipIf(skip)('refuses to record outside a transaction, and writes nothing', async () => {
    const engine = await open();
    const h = await blob(engine, 'lonely', 6);
    await expect(engine.recordBare({ type: 'blob.quarantined', sha512: h })).rejects.toThrow(/inside the transaction/);
    expect(await engine.rows()).toEqual([]);
  });

  it.skipIf(skip)('starts a new target at the newest event, claims one delivery per blob at a time, prunes what no target needs', async () => {
    const engine = await open();
    const outbox = await engine.outbox();
    const one = await blob(engine, 'one', 3);
    const two = await blob(engine, 'two', 3);
    await engine.record({ type: 'blob.stored', sha512: one, at: 1_000 });
    await outbox.materialize('webhook:new', WEBHOOK_TYPES);
    expect(await outbox.status('webhook:new')).toMatchObject({ pending: 0, failed: 0, oldestPendingAt: null });
    await engine.record({ type: 'blob.stored', sha512: two, at: 2_000 });
    await engine.record({ type: 'name.detached', sha512: two, names: ['two.tar.gz'], at: 2_000 });
    await engine.record({ type: 'name.attached', sha512: two, names: ['two.tar.gz'], at: 2_000 });
    await outbox.materialize('webhook:new', WEBHOOK_TYPES);
    await outbox.materialize('webhook:old', WEBHOOK_TYPES);
    // name.detached is not among the target's types: no delivery for it.
    expect(await outbox.status('webhook:new')).toMatchObject({ pending: 2, oldestPendingAt: 2_000 });
    expect(await outbox.lastId()).toBe(4);

    // Pending for a configured target: kept. Only for a target no longer configured (or none): pruned.
    expect(await outbox.prune(Date.now(), ['webhook:new'])).toBe(2);
    expect((await outbox.after(0, 10)).map((e) => [e.id, e.type])).toEqual([[2, 'blob.stored'], [4, 'name.attached']]);
    expect((await outbox.after(2, 1)).map((e) => e.id)).toEqual([4]);
    const claimed = await outbox.claim('webhook:new', 'me', 60_000, (c) => c);
    // One per blob at a time: the name event waits for the blob event.
    expect(claimed.map((c) => [c.event.type, c.attempts])).toEqual([['blob.stored', 1]]);
    expect(claimed[0]!.event).toMatchObject({ id: 2, at: 2_000, sha512: two, size: 3, names: '[]' });
    // Leased: nobody else gets it, and the blob's next event still waits.
    expect(await (await engine.outbox()).claim('webhook:new', 'other', 60_000, (c) => c)).toEqual([]);

    expect(await outbox.failed('webhook:new', claimed, Date.now() - 1, 'webhook answered 500', 2)).toEqual([]);
    expect(await outbox.status('webhook:new')).toMatchObject({ pending: 2, failed: 0, lastError: 'webhook answered 500' });
    const again = await outbox.claim('webhook:new', 'me', 60_000, (c) => c);
    expect(again.map((c) => c.attempts)).toEqual([2]);
    // Released by our own shutdown: the attempt is not counted.
    await outbox.release('webhook:new', [2], 'me');
    const third = await outbox.claim('webhook:new', 'me', 60_000, (c) => c);
    expect(third.map((c) => c.attempts)).toEqual([2]);
    await outbox.renew('webhook:new', [2], 'me', 60_000);
    expect(await outbox.failed('webhook:new', third, Date.now() - 1, 'webhook answered 500', 2)).toEqual([2]);
    expect(await outbox.status('webhook:new')).toMatchObject({ pending: 1, failed: 1 });

    const last = await outbox.claim('webhook:new', 'me', 60_000, (c) => c);
    expect(last.map((c) => c.event.type)).toEqual(['name.attached']);
    await outbox.delivered('webhook:new', [4]);
    const status = await outbox.status('webhook:new');
    expect(status).toMatchObject({ target: 'webhook:new', pending: 0, failed: 1, oldestPendingAt: null });
    expect(status.lastSuccessAt).toBeGreaterThan(0);
    // Delivered or given up everywhere, and past retention: gone.
    expect(await outbox.prune(Date.now(), ['webhook:new'])).toBe(2);
    expect(await outbox.after(0, 10)).toEqual([]);
    expect(await outbox.status('webhook:unknown')).toMatchObject({ pending: 0, lastSuccessAt: null });
  });

  it.skipIf(skip)('two dispatchers on two connections deliver each event once, a blob’s events in order', async () => {
    const engine = await open();
    const { recorder, target } = await webhook();
    const overlap = barrier(2);
    const [a, b] = [dispatcher(await engine.outbox(), overlap(target())), dispatcher(await engine.outbox(), overlap(target()))];
    await a.outbox.addTarget(target().id);
    const hashes: string[] = [];
    for (let i = 0; i < 8; i++) hashes.push(await blob(engine, `blob ${i}`, 6));
    for (const type of WEBHOOK_TYPES) for (const h of hashes) await engine.record({ type, sha512: h, names: [] });
    a.start();
    b.start();
    expect(await recorder.waitFor((r) => new Set(r.map((q) => hookEvent(q).id)).size === 24)).toBe(true);
    // The recorder sees a request before its sender marks it delivered: wait for the outbox to say so.
    expect(await until(async () => (await b.outbox.status(target().id)).pending === 0)).toBe(true);
    await Promise.all([a.stop(), b.stop()]);

    const sent = recorder.requests.map(hookEvent);
    expect(sent.map((e) => e.id).sort((x, y) => x - y)).toEqual(Array.from({ length: 24 }, (_, i) => i + 1));
    expect(sent.every((e) => e.attempt === '1')).toBe(true);
    for (const h of hashes) {
      const ids = sent.filter((e) => e.sha512 === h).map((e) => e.id);
      expect(ids).toEqual([...ids].sort((x, y) => x - y));
    }
    expect((await a.status()).targets).toMatchObject([{ pending: 0, failed: 0, lastError: null }]);
  });

  it.skipIf(skip)('a dead dispatcher’s lease expires and another delivers, counting its attempt', async () => {
    const engine = await open();
    const { recorder, target } = await webhook();
    const id = target().id;
    const dead = await engine.outbox();
    await dead.addTarget(id);
    const h = await blob(engine, 'orphaned', 8);
    await engine.record({ type: 'blob.stored', sha512: h, names: [] });
    await engine.record({ type: 'name.attached', sha512: h, names: ['orphaned.tar.gz'] });
    await dead.materialize(id, WEBHOOK_TYPES);
    // Claimed by a replica that then dies without a word: its lease is all that is left.
    const taken = await dead.claim(id, 'dead-replica', 300, (c: ClaimedDelivery[]) => c);
    expect(taken.map((c) => c.event.id)).toEqual([1]);

    const alive = dispatcher(await engine.outbox(), target());
    alive.start();
    expect(await recorder.waitFor((r) => r.length === 2)).toBe(true);
    expect(await until(async () => (await alive.outbox.status(id)).pending === 0)).toBe(true);
    await alive.stop();
    expect(recorder.requests.map(hookEvent).map((e) => [e.id, e.attempt])).toEqual([
      [1, '2'],
      [2, '1'],
    ]);
  });

  it.skipIf(skip)('fastpull purge reads the names attached to a hash from the index', async () => {
    const engine = await open();
    const cdn = await startRecorder();
    cleanup.push(() => cdn.close());
    const h = await blob(engine, 'purged', 6);
    await attach(engine, 'foo@2.0+x.tar.gz', h, 1);
    await attach(engine, 'old-name.tar.gz', h, 2, 3);
    const env = {
      ...engine.cliEnv,
      FASTPULL_CDN: 'cdn77',
      FASTPULL_CDN77_API_URL: cdn.url,
      FASTPULL_CDN77_RESOURCE_ID: '1234',
      FASTPULL_CDN77_TOKEN: 'cdn-token',
      FASTPULL_FETCH_ALLOW_CIDRS: '127.0.0.0/8',
    };
    const expected = [...hashPaths(h), ...namePaths('foo@2.0+x.tar.gz'), ...namePaths('bar 1.0.tar.gz')];
    const dry = await runCli(['purge', '--dry-run', h, 'bar 1.0.tar.gz'], env);
    expect(dry.code, dry.stderr).toBe(0);
    // Detached names serve nothing, so nothing of theirs is cached: only the attached one is purged.
    expect(dry.stdout.trim().split('\n')).toEqual(expected);
    expect(cdn.requests).toEqual([]);
    const sent = await runCli(['purge', h, 'bar 1.0.tar.gz'], env);
    expect(sent.code, sent.stderr).toBe(0);
    expect(cdn.requests.map((q) => [q.url, JSON.parse(q.body).paths])).toEqual([['/v3/cdn/1234/job/purge', expected]]);
  });

  it.skipIf(skip)('GET /api/v1/events pages through the outbox', async () => {
    const engine = await open();
    const h = await blob(engine, 'paged', 5);
    for (let i = 0; i < 250; i++) await engine.record({ type: 'name.attached', sha512: h, names: [`f-${i}.tar.gz`], actor: 'spider', at: 1_764_500_000_000 + i });
    const app = Fastify();
    cleanup.push(() => app.close());
    for (const schema of SHARED_SCHEMAS) app.addSchema(schema);
    await app.register(eventRoutes, { prefix: '/api/v1', auth: new BootstrapAuthenticator(ADMIN_TOKEN), outbox: await engine.outbox() });
    const base = await app.listen({ host: '127.0.0.1', port: 0 });
    const seen: { id: number; names: string[] }[] = [];
    let after = 0;
    for (;;) {
      const res = await request(`${base}/api/v1/events?after=${after}&limit=100`, { headers: { authorization: `Bearer ${ADMIN_TOKEN}` } });
      expect(res.statusCode).toBe(200);
      const page = (await res.body.json()) as { events: { id: number; names: string[]; at: string; size: number }[]; lastId: number };
      if (page.events.length === 0) {
        expect(page.lastId).toBe(after);
        break;
      }
      expect(page.events.length).toBeLessThanOrEqual(100);
      seen.push(...page.events);
      after = page.lastId;
    }
    expect(seen.map((e) => e.id)).toEqual(Array.from({ length: 250 }, (_, i) => i + 1));
    expect(seen[249]).toMatchObject({ id: 250, type: 'name.attached', names: ['f-249.tar.gz'], size: 5, actor: 'spider', at: new Date(1_764_500_000_249).toISOString() });
  });
});

describe.skipIf(skipPg)('outbox on PostgreSQL: ids committed out of order', () => {
  beforeAll(async () => {
    pg ??= await startPostgres();
  }, 60_000);

  it('an event whose transaction commits after a later id is still delivered', async () => {
    const engine = await openPostgres();
    const outbox = await engine.outbox();
    await outbox.addTarget('webhook:x');
    const h = await blob(engine, 'slow writer', 4);
    const slow = await engine.recordOpen({ type: 'blob.stored', sha512: h, names: [] });
    const fast = await engine.record({ type: 'name.attached', sha512: h, names: ['n.tar.gz'] });
    expect(fast).toBeGreaterThan(slow.id);
    // The later id is visible, the earlier not yet: stepping past it now would lose it for good.
    await outbox.materialize('webhook:x', WEBHOOK_TYPES);
    await slow.commit();
    await outbox.materialize('webhook:x', WEBHOOK_TYPES);
    expect(await outbox.status('webhook:x')).toMatchObject({ pending: 2 });
    expect((await outbox.claim('webhook:x', 'me', 60_000, (c) => c)).map((c) => c.event.id)).toEqual([slow.id]);
  });
});

describe.skipIf(skipPg)('two replicas (fastpull serve) on one PostgreSQL database', () => {
  beforeAll(async () => {
    pg ??= await startPostgres();
  }, 60_000);

  it('each event reaches the webhook once, whichever replica recorded or delivers it', async () => {
    const url = await pg!.createDatabase('replicas');
    const hook = await startRecorder();
    cleanup.push(() => hook.close());
    const replica = async () => {
      const dir = await mkdtemp(path.join(tmpdir(), 'fp-replica-'));
      dirs.push(dir);
      const proc = await startServeProcess({
        FASTPULL_DATA_DIR: dir,
        FASTPULL_DATABASE_URL: url,
        FASTPULL_ADMIN_TOKEN: ADMIN_TOKEN,
        FASTPULL_WEBHOOKS: `${hook.url}/hook`,
        FASTPULL_FETCH_ALLOW_CIDRS: '127.0.0.0/8',
        FASTPULL_EVENT_POLL_MS: '50',
        FASTPULL_MIN_FREE_BYTES: '0',
      });
      cleanup.push(async () => {
        if (proc.child.exitCode === null && proc.child.signalCode === null) proc.child.kill('SIGTERM');
        await proc.exited;
      });
      return proc;
    };
    const [a, b] = await Promise.all([replica(), replica()]);
    const sql = connectPostgres(url, { max: 1 });
    pools.push(sql);
    // A target starts at the newest event: upload only once the replicas have registered it.
    expect(await until(async () => (await sql`SELECT 1 FROM event_targets`).length === 1)).toBe(true);

    const auth = { authorization: `Bearer ${ADMIN_TOKEN}` };
    for (let i = 0; i < 6; i++) {
      const res = await request(`${(i % 2 === 0 ? a : b).baseUrl}/api/v1/distfiles/replica-${i}.tar.gz`, { method: 'PUT', body: `replica ${i}\n`, headers: auth });
      await res.body.dump();
      expect(res.statusCode).toBe(201);
    }
    const polled = await request(`${b.baseUrl}/api/v1/events?after=0&limit=1000`, { headers: auth });
    const stream = ((await polled.body.json()) as { events: { id: number; type: string }[] }).events;
    // Every upload is a new blob with a new name, seen alike by both replicas.
    expect(stream.map((e) => e.type)).toEqual(Array.from({ length: 6 }, () => ['blob.stored', 'name.attached']).flat());
    expect(await hook.waitFor((r) => new Set(r.map((q) => hookEvent(q).id)).size === stream.length)).toBe(true);
    expect(await until(async () => (await sql`SELECT 1 FROM event_deliveries WHERE state <> 'delivered'`).length === 0)).toBe(true);
    expect(hook.requests.map((q) => hookEvent(q).id).sort((x, y) => x - y)).toEqual(stream.map((e) => e.id));
  }, 120_000);
});
