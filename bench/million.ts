/**
 * The one-million-row index: how long from start to /readyz, how long /metrics, /api/v1/status and
 * a search take, and what a client polling /metrics does to download latency.
 *
 *   npm run build && node --import tsx bench/million.ts
 *
 * Rows are generated with SQL straight into a temporary index (the triggers of migration 005 fire
 * as for any write); a few real files are then uploaded through the API so downloads have bytes.
 * Knobs: BENCH_ROWS (1000000), BENCH_SECONDS per download phase (5), BENCH_CLIENTS (8),
 * BENCH_FASTPULL_BIN (bin/fastpull.js; point it at another checkout's to compare), BENCH_DATA_DIR (keep the
 * generated index there and reuse it on the next run instead of generating again).
 */
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import { Agent, request } from 'undici';
import { databaseFile, openDatabase } from '../src/db/open.js';
import { freePort, startChild } from './procs.js';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const ROWS = Number(process.env.BENCH_ROWS ?? 1_000_000);
const SECONDS = Number(process.env.BENCH_SECONDS ?? 5);
const CLIENTS = Number(process.env.BENCH_CLIENTS ?? 8);
const BIN = process.env.BENCH_FASTPULL_BIN ?? path.join(ROOT, 'bin', 'fastpull.js');
const TOKEN = 'bench-token-million';
const FILES = 64;

const ms = (t0: number) => performance.now() - t0;
const fmt = (n: number) => (n < 10 ? n.toFixed(2) : n < 100 ? n.toFixed(1) : n.toFixed(0));

function quantiles(values: number[]): { p50: number; p99: number; max: number; n: number } {
  const sorted = [...values].sort((a, b) => a - b);
  const at = (q: number) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] ?? NaN;
  return { p50: at(0.5), p99: at(0.99), max: sorted[sorted.length - 1] ?? NaN, n: sorted.length };
}

/**
 * Blobs with random hashes (as real ones are), one name each; every 10th name also attached to
 * another blob (dedup), every 1000th blob quarantined, every 100th pinned, some re-rolled names.
 */
function generate(dataDir: string): { seconds: number } {
  const t0 = performance.now();
  const db = openDatabase(databaseFile(dataDir));
  db.pragma('synchronous = OFF');
  db.exec(`
    CREATE TEMP TABLE gen (i INTEGER PRIMARY KEY, sha TEXT NOT NULL);
    WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < ${ROWS})
    INSERT INTO gen SELECT i, lower(hex(randomblob(64))) FROM c;
    BEGIN;
    INSERT INTO blobs (sha512, blake2b, sha256, size, ingested_at, verified_at, quarantined_at, pinned)
      SELECT sha, sha, substr(sha, 1, 64), 1000 + (i % 5000) * 977, 1700000000000 + i,
             CASE WHEN i % 3 = 0 THEN 1700000000000 + i END,
             CASE WHEN i % 1000 = 0 THEN 1700000000000 + i END,
             i % 100 = 0
      FROM gen;
    INSERT INTO names (filename, sha512, seq, first_attached_at, attached_at, attached_by)
      SELECT printf('pkg%07d-%d.%d.tar.gz', i, i % 7, i % 13), sha, i, 1700000000000 + i, 1700000000000 + i, 'bench' FROM gen;
    INSERT INTO names (filename, sha512, seq, first_attached_at, attached_at, attached_by)
      SELECT printf('Mirror-Copy-%07d.tar.xz', i), (SELECT sha FROM gen g WHERE g.i = gen.i - 1), ${ROWS} + i,
             1700000000000 + i, 1700000000000 + i, 'bench'
      FROM gen WHERE i % 10 = 0;
    COMMIT;
    DROP TABLE gen;
  `);
  db.pragma('wal_checkpoint(TRUNCATE)');
  db.close();
  return { seconds: ms(t0) / 1000 };
}

async function timeGet(url: string, dispatcher: Agent): Promise<{ ms: number; status: number; bytes: number }> {
  const t0 = performance.now();
  const res = await request(url, { dispatcher });
  const body = Buffer.from(await res.body.arrayBuffer());
  return { ms: ms(t0), status: res.statusCode, bytes: body.length };
}

async function sequential(url: string, n: number, dispatcher: Agent) {
  const times: number[] = [];
  let bytes = 0;
  for (let i = 0; i < n; i++) {
    const r = await timeGet(url, dispatcher);
    if (r.status !== 200) throw new Error(`${url} answered ${r.status}`);
    times.push(r.ms);
    bytes = r.bytes;
  }
  return { ...quantiles(times), bytes };
}

/** CLIENTS keep-alive clients downloading the uploaded files for SECONDS; optionally one more polling /metrics back to back. */
async function downloads(base: string, paths: string[], pollMetrics: boolean) {
  const agent = new Agent({ connections: CLIENTS + 2 });
  const times: number[] = [];
  const scrapes: number[] = [];
  const until = performance.now() + SECONDS * 1000;
  const worker = async (k: number) => {
    for (let i = k; performance.now() < until; i += CLIENTS) {
      const r = await timeGet(base + paths[i % paths.length]!, agent);
      if (r.status !== 200) throw new Error(`download answered ${r.status}`);
      times.push(r.ms);
    }
  };
  const poller = async () => {
    while (performance.now() < until) scrapes.push((await timeGet(`${base}/metrics`, agent)).ms);
  };
  await Promise.all([...Array.from({ length: CLIENTS }, (_, k) => worker(k)), ...(pollMetrics ? [poller()] : [])]);
  await agent.close();
  return { downloads: quantiles(times), scrapes: scrapes.length > 0 ? quantiles(scrapes) : undefined };
}

/** CPU seconds (user + system) the process has used so far, from /proc: meaningful on a busy machine where wall time is not. */
function cpuMs(pid: number): number {
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
  // utime and stime are fields 14 and 15 of stat(5), 12 and 13 after the command name.
  return ((Number(fields[11]) + Number(fields[12])) * 1000) / 100;
}

async function main() {
  const keep = process.env.BENCH_DATA_DIR;
  const dataDir = keep ?? (await mkdtemp(path.join(tmpdir(), 'fastpull-million-')));
  const logFile = path.join(dataDir, 'server.log');
  try {
    if (keep && existsSync(databaseFile(dataDir))) {
      console.log(`reusing the index in ${dataDir}`);
      // Files uploaded by an earlier run would make the uploads below answer 200.
      const db = openDatabase(databaseFile(dataDir));
      db.exec(`DELETE FROM blobs WHERE sha512 IN (SELECT sha512 FROM names WHERE filename LIKE 'bench-%')`);
      db.close();
      await rm(path.join(dataDir, 'blobs'), { recursive: true, force: true });
    } else {
      await mkdir(dataDir, { recursive: true });
      console.log(`generating ${ROWS.toLocaleString('en-US')} blobs and ${(ROWS * 1.1).toLocaleString('en-US')} names in ${dataDir} …`);
      const gen = generate(dataDir);
      console.log(`generated in ${gen.seconds.toFixed(1)} s (SQL, triggers of migration 005 firing)`);
    }

    const port = await freePort();
    const base = `http://127.0.0.1:${port}`;
    const t0 = performance.now();
    const child = startChild('fastpull', process.execPath, [BIN, 'serve'], {
      env: {
        PATH: process.env.PATH ?? '',
        FASTPULL_HOST: '127.0.0.1',
        FASTPULL_PORT: String(port),
        FASTPULL_DATA_DIR: dataDir,
        FASTPULL_ADMIN_TOKEN: TOKEN,
        FASTPULL_LOG_LEVEL: 'warn',
        FASTPULL_MIN_FREE_BYTES: '0',
      },
      logFile,
    });
    let readyMs = NaN;
    let readyCpuMs = NaN;
    for (;;) {
      if (child.process.exitCode !== null) throw new Error(`the server exited; see ${logFile}`);
      try {
        const res = await request(`${base}/readyz`);
        await res.body.dump();
        if (res.statusCode === 200) {
          readyMs = ms(t0);
          readyCpuMs = cpuMs(child.pid);
          break;
        }
      } catch {
        // not listening yet
      }
      if (ms(t0) > 120_000) throw new Error('no /readyz 200 within 120 s');
      await sleep(5);
    }

    const agent = new Agent({ connections: 4 });
    const files: string[] = [];
    for (let i = 0; i < FILES; i++) {
      const body = randomBytes(4096);
      const res = await request(`${base}/api/v1/distfiles/bench-${i}.tar.gz`, {
        method: 'PUT',
        body,
        headers: { authorization: `Bearer ${TOKEN}` },
        dispatcher: agent,
      });
      await res.body.dump();
      if (res.statusCode !== 201) throw new Error(`upload answered ${res.statusCode}`);
      const sha = createHash('sha512').update(body).digest('hex');
      files.push(i % 2 === 0 ? `/distfiles/bench-${i}.tar.gz` : `/distfiles/${sha.slice(0, 2)}/${sha.slice(2, 4)}/${sha.slice(4, 6)}/${sha}`);
    }

    const metrics = await sequential(`${base}/metrics`, 50, agent);
    const status = await sequential(`${base}/api/v1/status`, 50, agent);
    const search = await sequential(`${base}/api/v1/search?prefix=pkg05&limit=50`, 50, agent);
    const searchNocase = await sequential(`${base}/api/v1/search?prefix=MIRROR-COPY-009&limit=50&ignoreCase=true`, 50, agent);
    await agent.close();
    const quiet = await downloads(base, files, false);
    const polled = await downloads(base, files, true);
    await child.stop();

    const row = (what: string, q: { p50: number; p99: number; max: number; n: number }) =>
      `| ${what} | ${fmt(q.p50)} | ${fmt(q.p99)} | ${fmt(q.max)} | ${q.n} |`;
    console.log('');
    console.log(`fastpull (${path.relative(ROOT, BIN) || BIN}) over ${ROWS.toLocaleString('en-US')} blobs; node ${process.version}`);
    console.log(`start → first /readyz 200: ${fmt(readyMs)} ms wall, ${fmt(readyCpuMs)} ms of server CPU (target ≤ 2000 ms)`);
    console.log('');
    console.log('| request | p50 ms | p99 ms | max ms | n |');
    console.log('| --- | ---: | ---: | ---: | ---: |');
    console.log(row(`GET /metrics (${metrics.bytes} bytes)`, metrics));
    console.log(row('GET /api/v1/status', status));
    console.log(row('GET /api/v1/search?prefix=pkg05&limit=50', search));
    console.log(row('GET /api/v1/search (ignoreCase, limit 50)', searchNocase));
    console.log(row(`4 KiB download, ${CLIENTS} clients, nothing else`, quiet.downloads));
    console.log(row(`4 KiB download, ${CLIENTS} clients, /metrics polled back to back`, polled.downloads));
    if (polled.scrapes) console.log(row('GET /metrics while downloads run', polled.scrapes));
  } finally {
    if (!keep) await rm(dataDir, { recursive: true, force: true });
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exitCode = 1;
});
