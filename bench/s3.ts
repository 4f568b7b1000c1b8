/**
 * The S3 row of `npm run bench` (BENCH_SKIP=s3 leaves it out): by-hash downloads through a fastpull whose
 * blobs live in a bucket (FASTPULL_STORAGE=s3://…) against a direct S3 GET of the same object, in the same run.
 *
 * The store is real OpenStack Swift with its S3 API on loopback (test/helpers/swift.ts, the tests' harness),
 * sharing the machine's cores with everything else. The origin (built dist/, SQLite index in its own data dir)
 * is filled through its upload API and loaded by wrk like the other rows (also with a read cache, and with the index
 * in PostgreSQL as replicas have it); its CPU is its process tree's. The
 * direct reader is this process running the origin's own driver (`openStorage(config).read`: one GetObject on
 * an S3Client built from the same settings) in as many concurrent loops as wrk has connections; its CPU is this
 * process's (process.cpuUsage), which does nothing else meanwhile.
 */
import { randomBytes } from 'node:crypto';
import { mkdir, readdir } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { request } from 'undici';
import { loadConfig } from '../src/config.js';
import { openStorage } from '../src/store/open-storage.js';
import type { BlobStorage } from '../src/store/storage.js';
import { postgresMissing, startPostgres, type Postgres } from '../test/helpers/postgres.js';
import { startSwift, swiftMissing, type Swift } from '../test/helpers/swift.js';
import { dataStream } from './data.js';
import { freePort, startChild, treeCpuSeconds, waitForHttp, wrk, type Child } from './procs.js';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const MiB = 1024 ** 2;
const GiB = 1024 ** 3;
const TOKEN = randomBytes(24).toString('hex');

export interface S3BenchOptions {
  /** Where the origin's data dir and logs go (removed by the caller). */
  workDir: string;
  /** A file holding procs.ts's WRK_REPORT. */
  wrkScript: string;
  duration: number;
  rounds: number;
  connections: number;
  log: (line: string) => void;
  sizes?: { label: string; bytes: number }[];
}

export interface S3Cell {
  label: string;
  reader: string;
  rps: number;
  mbps: number;
  cpuPerGiB: number;
  problems: string;
}

export interface S3BenchResult {
  started: Date;
  loadAtStart: number[];
  loadAtEnd: number[];
  /** Why nothing was measured (no Swift here). */
  skipped?: string;
  /** Why the origin rows are missing while the direct ones were measured. */
  originSkipped?: string;
  /** Why the PostgreSQL-indexed origin is missing. */
  postgresSkipped?: string;
  cells: S3Cell[];
  connections: number;
  rounds: number;
  duration: number;
}

const DIRECT = 'direct S3 GET';
const shard = (h: string) => `${h.slice(0, 2)}/${h.slice(2, 4)}/${h.slice(4, 6)}/${h}`;
const median = <T>(xs: T[], by: (x: T) => number) => [...xs].sort((a, b) => by(a) - by(b))[Math.floor(xs.length / 2)]!;

/** What `fastpull serve` needs for the bucket; the direct reader's config is built from the same variables. */
function s3Env(swift: Swift, bucket: string, dataDir: string): Record<string, string> {
  return {
    FASTPULL_DATA_DIR: dataDir,
    FASTPULL_STORAGE: `s3://${bucket}/origin`,
    FASTPULL_S3_FORCE_PATH_STYLE: 'true',
    AWS_ENDPOINT_URL_S3: swift.endpoint,
    AWS_REGION: swift.region,
    AWS_ACCESS_KEY_ID: swift.credentials.accessKeyId,
    AWS_SECRET_ACCESS_KEY: swift.credentials.secretAccessKey,
  };
}

async function startOrigin(tag: string, env: Record<string, string>, logDir: string): Promise<{ child: Child; base: string }> {
  const port = await freePort();
  const logFile = path.join(logDir, `fastpull-${tag}.log`);
  const base: NodeJS.ProcessEnv = {};
  // Only the settings given here: a stray FASTPULL_* or AWS_* in the caller's shell must not leak in.
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('FASTPULL_') && !k.startsWith('AWS_')) base[k] = v;
  const child = startChild(`fastpull (${tag})`, process.execPath, [path.join(ROOT, 'bin', 'fastpull.js'), 'serve'], {
    env: { ...base, ...env, FASTPULL_HOST: '127.0.0.1', FASTPULL_PORT: String(port), FASTPULL_ADMIN_TOKEN: TOKEN },
    logFile,
  });
  const url = `http://127.0.0.1:${port}`;
  await waitForHttp(`${url}/distfiles/layout.conf`, child, logFile);
  return { child, base: url };
}

async function upload(base: string, filename: string, size: number, seed: Buffer, block: Buffer): Promise<string> {
  const res = await request(`${base}/api/v1/distfiles/${filename}?size=${size}`, {
    method: 'PUT',
    body: dataStream(size, seed, block),
    headers: { authorization: `Bearer ${TOKEN}`, 'content-length': String(size) },
    headersTimeout: 0,
    bodyTimeout: 0,
  });
  const json = (await res.body.json()) as any;
  if (res.statusCode !== 201 && res.statusCode !== 200) throw new Error(`upload of ${filename} through the s3 origin: HTTP ${res.statusCode} ${JSON.stringify(json)}`);
  return json.sha512 as string;
}

/** `connections` loops of GetObject + read to the end, for `seconds`; requests in flight at the end finish. */
async function directLoad(storage: BlobStorage, sha512: string, seconds: number, connections: number): Promise<Omit<S3Cell, 'label' | 'reader'>> {
  const until = Date.now() + seconds * 1000;
  const cpu0 = process.cpuUsage();
  const t0 = process.hrtime.bigint();
  let requests = 0;
  let bytes = 0;
  let errors = 0;
  let lastError = '';
  await Promise.all(
    Array.from({ length: connections }, async () => {
      while (Date.now() < until && errors < 100) {
        try {
          const body = await storage.read(sha512);
          if (!body) throw new Error('object not found');
          for await (const chunk of body) bytes += (chunk as Buffer).length;
          requests++;
        } catch (err) {
          errors++;
          lastError = err instanceof Error ? err.message : String(err);
        }
      }
    }),
  );
  const elapsed = Number(process.hrtime.bigint() - t0) / 1e9;
  const used = process.cpuUsage(cpu0);
  const cpu = (used.user + used.system) / 1e6;
  return {
    rps: requests / elapsed,
    mbps: bytes / 1e6 / elapsed,
    cpuPerGiB: bytes ? cpu / (bytes / GiB) : 0,
    problems: errors ? `${errors} errors (${lastError})` : '',
  };
}

async function originLoad(url: string, pid: number, options: S3BenchOptions): Promise<Omit<S3Cell, 'label' | 'reader'>> {
  const cpu0 = treeCpuSeconds([pid]);
  const r = await wrk(url, options.duration, options.connections, options.wrkScript);
  const cpu = treeCpuSeconds([pid]) - cpu0;
  const seconds = r.us / 1e6;
  const errors = r.connect + r.read + r.write + r.timeout;
  return {
    rps: r.requests / seconds,
    mbps: r.bytes / 1e6 / seconds,
    cpuPerGiB: r.bytes ? cpu / (r.bytes / GiB) : 0,
    problems: [errors ? `${errors} socket errors` : '', r.status ? `${r.status} non-2xx` : ''].filter(Boolean).join(', '),
  };
}

export async function runS3Bench(options: S3BenchOptions): Promise<S3BenchResult> {
  const { log } = options;
  const sizes = options.sizes ?? [
    { label: '1 MiB', bytes: MiB },
    { label: '64 MiB', bytes: 64 * MiB },
  ];
  const result: S3BenchResult = {
    started: new Date(),
    loadAtStart: os.loadavg(),
    loadAtEnd: [],
    cells: [],
    connections: options.connections,
    rounds: options.rounds,
    duration: options.duration,
  };
  const missing = swiftMissing();
  if (missing) {
    log(`bench: s3 skipped: ${missing}`);
    return { ...result, skipped: missing, loadAtEnd: os.loadavg() };
  }
  const dataDir = path.join(options.workDir, 's3-data');
  const logDir = path.join(options.workDir, 'logs');
  await mkdir(dataDir, { recursive: true });
  await mkdir(logDir, { recursive: true });
  log('bench: s3: starting OpenStack Swift');
  const swift = await startSwift();
  /** `uploads`: the origin has an index of its own, so the blobs are uploaded through it too (S3 dedups them). */
  const origins: { name: string; child: Child; base: string; uploads: boolean }[] = [];
  let postgres: Postgres | undefined;
  try {
    const bucket = await swift.createBucket('bench');
    const env = s3Env(swift, bucket, dataDir);
    // The SDK takes credentials from its own chain (the environment), as it does in the origin.
    process.env.AWS_ACCESS_KEY_ID = env.AWS_ACCESS_KEY_ID;
    process.env.AWS_SECRET_ACCESS_KEY = env.AWS_SECRET_ACCESS_KEY;
    const storage = openStorage(loadConfig({}, env));
    await storage.init();

    // Without a read cache every body comes from the bucket; with one (s3read's FASTPULL_CACHE_DIR) hot blobs
    // are read from local disk after the warm-up filled it.
    try {
      origins.push({ name: 'fastpull (s3)', uploads: true, ...(await startOrigin('s3', env, logDir)) });
      origins.push({
        name: 'fastpull (s3 + FASTPULL_CACHE_DIR)',
        uploads: false,
        ...(await startOrigin('s3-cache', { ...env, FASTPULL_CACHE_DIR: path.join(dataDir, 'cache') }, logDir)),
      });
    } catch (err) {
      // Before the s3 read path is wired, serve refuses FASTPULL_STORAGE=s3://…: the direct rows still stand.
      const message = err instanceof Error ? err.message : String(err);
      result.originSkipped = /not wired[^"\n]*/.exec(message)?.[0] ?? message.split('\n')[0]!;
      log(`bench: s3: origin not measured: ${result.originSkipped}`);
      for (const o of origins.splice(0)) await o.child.stop();
    }
    // The replicas' combination: the same bucket with the index in PostgreSQL (its own data dir, no read cache).
    const pgMissing = postgresMissing();
    if (origins.length && pgMissing) result.postgresSkipped = pgMissing;
    if (origins.length && !pgMissing) {
      try {
        postgres = await startPostgres('bench');
        const pgDataDir = path.join(options.workDir, 's3-pg-data');
        await mkdir(pgDataDir, { recursive: true });
        const pgEnv = { ...env, FASTPULL_DATA_DIR: pgDataDir, FASTPULL_DATABASE_URL: postgres.url };
        origins.push({ name: 'fastpull (s3 + PostgreSQL)', uploads: true, ...(await startOrigin('s3-pg', pgEnv, logDir)) });
      } catch (err) {
        result.postgresSkipped = (err instanceof Error ? err.message : String(err)).split('\n')[0]!;
        log(`bench: s3: PostgreSQL origin not measured: ${result.postgresSkipped}`);
      }
    }

    for (const size of sizes) {
      const filename = `bench-s3-${size.label.replace(' ', '').toLowerCase()}-1.0.tar.xz`;
      // The same seed and block give the same bytes, so every index names the one object.
      const seed = randomBytes(8);
      const block = randomBytes(MiB);
      let sha512 = '';
      for (const o of origins.filter((x) => x.uploads)) {
        const got = await upload(o.base, filename, size.bytes, seed, block);
        if (sha512 && got !== sha512) throw new Error(`${o.name} stored ${got}, the first upload ${sha512}`);
        sha512 = got;
      }
      if (!sha512) sha512 = (await storage.write(dataStream(size.bytes, seed, block), { expected: { size: size.bytes } })).digests.sha512;
      const readers = [...origins.map((o) => o.name), DIRECT];
      const runs = new Map<string, Omit<S3Cell, 'label' | 'reader'>[]>(readers.map((r) => [r, []]));
      const once = (reader: string, seconds: number) => {
        const origin = origins.find((o) => o.name === reader);
        return origin
          ? originLoad(`${origin.base}/distfiles/${shard(sha512)}`, origin.child.pid, { ...options, duration: seconds })
          : directLoad(storage, sha512, seconds, options.connections);
      };
      for (const reader of readers) await once(reader, 1);
      // Readers take turns, as in the other rows: load from elsewhere on a shared machine spreads over all.
      for (let round = 0; round < options.rounds; round++) {
        for (const reader of readers) {
          const m = await once(reader, options.duration);
          runs.get(reader)!.push(m);
          log(`  ${reader.padEnd(34)} ${size.label.padEnd(6)} by hash: ${m.rps.toFixed(1)} req/s, ${m.mbps.toFixed(1)} MB/s, ${m.cpuPerGiB.toFixed(2)} CPU-s/GiB${m.problems ? ` (${m.problems})` : ''}`);
        }
      }
      for (const [reader, list] of runs) {
        const m = median(list, (x) => x.mbps);
        result.cells.push({ label: size.label, reader, ...m, problems: list.map((x) => x.problems).filter(Boolean).join('; ') });
      }
    }
  } finally {
    for (const o of origins) await o.child.stop();
    await postgres?.stop();
    await swift.stop();
  }
  result.loadAtEnd = os.loadavg();
  return result;
}

const fmt = (n: number) => (n >= 100 ? Math.round(n).toLocaleString('en-US') : n >= 10 ? n.toFixed(1) : n.toFixed(2));
const ratio = (a: number, b: number) => (b > 0 ? `${(a / b).toFixed(2)}×` : 'n/a');

export async function s3Table(r: S3BenchResult): Promise<string> {
  const out: string[] = [];
  const load = (l: number[]) => l.map((x) => x.toFixed(1)).join(' ');
  if (r.skipped) return `S3 row not measured: ${r.skipped}.\n`;
  // Debian installs Swift as a Python egg whose directory name carries the version.
  const swiftVersion = (await readdir('/usr/lib/python3/dist-packages').catch(() => [] as string[]))
    .map((name) => /^swift-([\d.]+)\.egg-info$/.exec(name)?.[1])
    .find(Boolean);
  out.push(
    `S3 (issue 9), ${r.started.toISOString()}, load average at start ${load(r.loadAtStart)}, at end ${load(r.loadAtEnd)}: by-hash GETs ` +
      `(\`/distfiles/ab/cd/ef/<sha512>\`) through fastpull with \`FASTPULL_STORAGE=s3://…\` (OpenStack Swift${swiftVersion ? ` ${swiftVersion}` : ''} ` +
      'all-in-one with its S3 API on loopback, on the same cores; SQLite index; built `dist/`), wrk as above with ' +
      `${r.connections} connections, against a **direct S3 GET** of the same object: this process reading it with the origin's own driver ` +
      `(\`openStorage(config).read\`, one GetObject on an S3Client built from the same settings) in ${r.connections} concurrent loops. ` +
      `Median of ${r.rounds} × ${r.duration} s, the readers taking turns. MB/s is bytes on the wire for wrk (headers included) and body ` +
      'bytes for the SDK; CPU is the reader’s own (the origin’s process tree; this process for the direct GET), not Swift’s. ' +
      '“+ FASTPULL_CACHE_DIR” is a second origin over the same bucket and index with a local read cache, which the 1 s warm-up fills; ' +
      '“+ PostgreSQL” a third with the index in a throwaway PostgreSQL 15 cluster (test/helpers/postgres.ts) instead of SQLite, no read cache: a replica’s setup.',
    '',
  );
  if (r.originSkipped) out.push(`Origin rows not measured: ${r.originSkipped}.`, '');
  if (r.postgresSkipped) out.push(`The PostgreSQL-indexed origin not measured: ${r.postgresSkipped}.`, '');
  out.push('| file | by hash through | req/s | MB/s | × direct S3 GET | reader CPU-s/GiB | CPU × direct |');
  out.push('| --- | --- | ---: | ---: | ---: | ---: | ---: |');
  for (const c of r.cells) {
    const direct = r.cells.find((d) => d.label === c.label && d.reader === DIRECT)!;
    out.push(
      `| ${c.label} | ${c.reader} | ${fmt(c.rps)} | ${fmt(c.mbps)} | ${ratio(c.mbps, direct.mbps)} | ${fmt(c.cpuPerGiB)} | ` +
        `${ratio(c.cpuPerGiB, direct.cpuPerGiB)}${c.problems ? ` (${c.problems})` : ''} |`,
    );
  }
  out.push('');
  return out.join('\n');
}
