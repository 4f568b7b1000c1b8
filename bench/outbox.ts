/**
 * Outbox delivery throughput: a backlog of BENCH_EVENTS events (default 2000, over 50 blobs, so per-blob
 * ordering holds most of them back at any moment) delivered as webhooks to a local recorder, by one and by two
 * dispatchers each on a connection of its own, on SQLite and on PostgreSQL (a throwaway cluster from the
 * tests' harness). Run: `node --import tsx bench/outbox.ts`. Everything shares the machine's cores: the
 * figures compare engines and dispatcher counts in one run, they are not a capacity.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { EventOutbox, recordEvent, type Outbox } from '../src/db/events.js';
import { openDatabase } from '../src/db/open.js';
import { PostgresEventOutbox, recordEvent as recordPostgresEvent } from '../src/db/postgres/events.js';
import { connectPostgres, migratePostgres, type Sql } from '../src/db/postgres-index.js';
import { EventDispatcher } from '../src/events/dispatcher.js';
import { createEventAgent } from '../src/events/http.js';
import { WebhookTarget } from '../src/events/targets.js';
import { postgresMissing, startPostgres } from '../test/helpers/postgres.js';
import { startRecorder } from '../test/helpers/recorder.js';

const EVENTS = Number(process.env.BENCH_EVENTS ?? 2000);
const BLOBS = 50;
const hash = (i: number) => (i % BLOBS).toString(16).padStart(128, '0');

async function deliver(engine: string, outboxes: Outbox[], record: (i: number) => Promise<void>): Promise<void> {
  const recorder = await startRecorder();
  const agent = createEventAgent(2_000, ['127.0.0.0/8']);
  const target = () => new WebhookTarget(`${recorder.url}/hook`, undefined, agent, 2_000);
  await outboxes[0]!.addTarget(target().id);
  for (let i = 0; i < EVENTS; i++) await record(i);
  const dispatchers = outboxes.map(
    (outbox) =>
      new EventDispatcher({ outbox, targets: [target()], pollMs: 20, timeoutMs: 2_000, retryBaseMs: 50, retryMaxMs: 200, maxAttempts: 0, retentionDays: 0 }),
  );
  const started = performance.now();
  for (const d of dispatchers) d.start();
  const done = await recorder.waitFor((r) => new Set(r.map((q) => q.headers['x-fastpull-event-id'])).size === EVENTS, 600_000);
  const ms = performance.now() - started;
  await Promise.all(dispatchers.map((d) => d.stop()));
  await recorder.close();
  await agent.destroy();
  if (!done) throw new Error(`${engine}: not every event was delivered`);
  console.log(
    `| ${engine} | ${dispatchers.length} | ${EVENTS} | ${Math.round(ms)} | ${Math.round((EVENTS / ms) * 1000)} | ${recorder.requests.length} |`,
  );
}

console.log('| engine | dispatchers | events | ms | events/s | requests |\n| --- | --- | --- | --- | --- | --- |');
for (const count of [1, 2]) {
  const dir = await mkdtemp(path.join(tmpdir(), 'fp-bench-outbox-'));
  const file = path.join(dir, 'index.sqlite');
  const db = openDatabase(file);
  const others = Array.from({ length: count }, () => openDatabase(file));
  await deliver('sqlite', others.map((o) => new EventOutbox(o)), async (i) => void db.transaction(() => recordEvent(db, { type: 'blob.stored', sha512: hash(i), names: [] }))());
  for (const o of [db, ...others]) o.close();
  await rm(dir, { recursive: true, force: true });
}
const missing = postgresMissing();
if (missing) console.log(`PostgreSQL rows skipped: ${missing}`);
else {
  const pg = await startPostgres('bench');
  try {
    for (const count of [1, 2]) {
      const url = await pg.createDatabase(`outbox_${count}`);
      const writer = connectPostgres(url);
      await migratePostgres(writer);
      const pools: Sql[] = Array.from({ length: count }, () => connectPostgres(url));
      await deliver('postgres', pools.map((p) => new PostgresEventOutbox(p)), async (i) => {
        await writer.begin((tx) => recordPostgresEvent(tx, { type: 'blob.stored', sha512: hash(i), names: [] }));
      });
      for (const p of [writer, ...pools]) await p.end({ timeout: 5 });
    }
  } finally {
    await pg.stop();
  }
}
