/**
 * `npm run bench`: fastpull against nginx (sendfile, one worker) and a bare node:http server (Node's own
 * ceiling) over the same blob directory, one load generator, one target under load at a time; for each
 * cell req/s, MB/s and the CPU seconds of the server's process tree per request and per GiB. Then a
 * 1,000-keep-alive-connection cell (a fresh connection's time to first byte, server RSS), upload speed
 * against the machine's hashing ceiling, and fastpull's peak RSS over a big upload + download.
 *
 * Then the S3 row (bench/s3.ts): by-hash downloads through an origin on a bucket against a direct S3 GET.
 *
 * Knobs (environment): BENCH_QUICK=1 (short smoke run), BENCH_CONNECTIONS, BENCH_DURATION (s), BENCH_ROUNDS,
 * BENCH_UPLOAD_BYTES, BENCH_BIG_BYTES, BENCH_SKIP=downloads,crowd,upload,memory,s3 (leave sections out),
 * BENCH_KEEP=1 (leave .bench/run-* for inspection).
 */
import { spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { link, mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { request } from 'undici';
import { dataStream } from './data.js';
import { runS3Bench, s3Table } from './s3.js';
import { runUploadBench, uploadTable } from './upload.js';
import { freePort, sampleMemory, startChild, stopAll, treeCpuSeconds, waitForHttp, wrk, WRK_REPORT, type Child, type WrkSummary } from './procs.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;

function envInt(name: string, fallback: number): number {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return fallback;
  const n = Number(raw);
  if (!Number.isSafeInteger(n) || n <= 0) throw new Error(`${name} must be a positive integer`);
  return n;
}

const QUICK = process.env.BENCH_QUICK === '1';
const SKIP = new Set((process.env.BENCH_SKIP ?? '').split(',').filter(Boolean));
const CONNECTIONS = envInt('BENCH_CONNECTIONS', 8);
const DURATION = envInt('BENCH_DURATION', QUICK ? 1 : 3);
const ROUNDS = envInt('BENCH_ROUNDS', QUICK ? 1 : 3);
const WARMUP = 1;
const CROWD = 1000;
const UPLOAD_BYTES = envInt('BENCH_UPLOAD_BYTES', QUICK ? 64 * MiB : GiB);
const BIG_BYTES = envInt('BENCH_BIG_BYTES', QUICK ? 256 * MiB : 4 * GiB);

/** Issue 8's targets, against nginx on the same cell. */
interface Goal {
  /** fastpull's req/s (MB/s for 64 MiB) at least this share of nginx's. */
  speed: number;
  /** fastpull's CPU per request (per GiB for 64 MiB) at most this multiple of nginx's. */
  cpu?: number;
}
const SIZES = [
  { label: '4 KiB', bytes: 4 * KiB, modes: ['hash', 'name'] as Mode[], goal: { speed: 0.5, cpu: 2.5 } as Goal },
  { label: '1 MiB', bytes: MiB, modes: ['hash'] as Mode[], goal: { speed: 0.8 } as Goal },
  { label: '64 MiB', bytes: 64 * MiB, modes: ['hash'] as Mode[], goal: { speed: 0.9, cpu: 2 } as Goal },
];
/**
 * Ratios compare req/s, except for 64 MiB where a handful of requests complete per cell and
 * the ones cut off at the end would swing it: there wire MB/s (partial responses included) is steadier.
 */
const large = (label: string) => label === '64 MiB';
const score = (label: string, m: Measure) => (large(label) ? m.mbps : m.rps);
const cpuScore = (label: string, m: Measure) => (large(label) ? m.cpuPerGiB : m.cpuPerReq);
const TOKEN = randomBytes(24).toString('hex');

const workDir = path.join(ROOT, '.bench', `run-${process.pid}-${Date.now()}`);
const dataDir = path.join(workDir, 'data');
const blobsDir = path.join(dataDir, 'blobs');
const namesDir = path.join(workDir, 'names');
const logDir = path.join(workDir, 'logs');

type Mode = 'hash' | 'name';
interface Target {
  name: string;
  base: string;
  /** Every process whose CPU (and descendants') counts as this target's. */
  pids: number[];
  url(file: BenchFile, mode: Mode): string;
}
interface BenchFile {
  label: string;
  bytes: number;
  filename: string;
  sha512: string;
}
interface Measure {
  rps: number;
  mbps: number;
  /** CPU seconds of the server's process tree per request, in µs. */
  cpuPerReq: number;
  /** CPU seconds of the server's process tree per GiB on the wire. */
  cpuPerGiB: number;
  problems: string;
}

const shard = (h: string) => `${h.slice(0, 2)}/${h.slice(2, 4)}/${h.slice(4, 6)}/${h}`;
const fmt = (n: number) => (n >= 100 ? Math.round(n).toLocaleString('en-US') : n >= 10 ? n.toFixed(1) : n.toFixed(2));
const ratio = (a: number, b: number) => (b > 0 ? `${(a / b).toFixed(2)}×` : 'n/a');
const log = (line: string) => process.stderr.write(`${line}\n`);

/** fastpull sees only the settings we give it: a stray FASTPULL_CONFIG in the caller's shell must not leak in. */
function fastpullEnv(port: number, extra: Record<string, string>): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('FASTPULL_')) env[k] = v;
  return {
    ...env,
    FASTPULL_HOST: '127.0.0.1',
    FASTPULL_PORT: String(port),
    FASTPULL_DATA_DIR: dataDir,
    FASTPULL_ADMIN_TOKEN: TOKEN,
    ...extra,
  };
}

/** fastpull at its default log level (info: one JSON line per request, to a file), like production. */
async function startFastpull(tag: string, extra: Record<string, string> = {}): Promise<{ child: Child; target: Target }> {
  const port = await freePort();
  const logFile = path.join(logDir, `fastpull-${tag}.log`);
  const child = startChild(`fastpull (${tag})`, process.execPath, [path.join(ROOT, 'bin', 'fastpull.js'), 'serve'], {
    env: fastpullEnv(port, extra),
    logFile,
  });
  const base = `http://127.0.0.1:${port}`;
  await waitForHttp(`${base}/distfiles/layout.conf`, child, logFile);
  return {
    child,
    target: {
      name: tag,
      base,
      pids: [child.pid],
      // The paths Portage itself asks for: content-hash 8:8:8, and flat by name (resolved through SQLite).
      url: (f, mode) => (mode === 'hash' ? `${base}/distfiles/${shard(f.sha512)}` : `${base}/distfiles/${encodeURIComponent(f.filename)}`),
    },
  };
}

function findNginx(): { bin: string; version: string } {
  // nginx -v prints to stderr; a missing binary shows up as a spawn error.
  const bin = ['/usr/sbin/nginx', '/usr/local/sbin/nginx', '/usr/local/nginx/sbin/nginx'].find(
    (p) => spawnSync(p, ['-v']).error === undefined,
  );
  if (!bin) throw new Error('nginx not found: apt-get install -y nginx');
  return { bin, version: spawnSync(bin, ['-v'], { encoding: 'utf8' }).stderr.trim() || 'nginx' };
}

function nginxConfig(tag: string, port: number, site: string): string {
  const dir = path.join(workDir, tag);
  return `# Generated by bench/run.ts. One process, like the node servers it is compared with.
daemon off;
master_process off;
worker_processes 1;
pid ${dir}/nginx.pid;
error_log ${logDir}/${tag}-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  default_type application/octet-stream;
  types { }
  client_body_temp_path ${dir}/client_body;
  proxy_temp_path ${dir}/proxy;
  fastcgi_temp_path ${dir}/fastcgi;
  uwsgi_temp_path ${dir}/uwsgi;
  scgi_temp_path ${dir}/scgi;
${site.replaceAll('${LISTEN}', `127.0.0.1:${port}`)}
}
`;
}

/** `site` is http{}-level text; ${LISTEN} in it becomes the address nginx listens on. */
async function startNginx(tag: string, site: string, pidsToo: number[] = []): Promise<{ child: Child; base: string; pids: number[] }> {
  const { bin } = findNginx();
  const port = await freePort();
  const conf = path.join(workDir, tag, 'nginx.conf');
  await mkdir(path.dirname(conf), { recursive: true });
  await writeFile(conf, nginxConfig(tag, port, site));
  const logFile = path.join(logDir, `${tag}.log`);
  // -e: the error log before the config is read, so nginx never touches /var/log/nginx.
  const child = startChild(tag, bin, ['-p', workDir, '-e', path.join(logDir, `${tag}-error.log`), '-c', conf], { logFile });
  const base = `http://127.0.0.1:${port}`;
  await waitForHttp(`${base}/`, child, logFile);
  return { child, base, pids: [child.pid, ...pidsToo] };
}

async function startPlainNginx(): Promise<{ child: Child; target: Target }> {
  const { child, base, pids } = await startNginx(
    'nginx',
    `  server {
    listen \${LISTEN} backlog=4096;
    # By hash: the content-hash path maps straight onto the store's own layout.
    location /distfiles/ { alias ${blobsDir}/; }
    # By name: nginx cannot ask SQLite, so it gets a flat directory of hard links named by filename.
    location /names/ { alias ${namesDir}/; }
  }`,
  );
  return {
    child,
    target: {
      name: 'nginx',
      base,
      pids,
      url: (f, mode) => (mode === 'hash' ? `${base}/distfiles/${shard(f.sha512)}` : `${base}/names/${encodeURIComponent(f.filename)}`),
    },
  };
}

async function startBareNode(): Promise<{ child: Child; target: Target }> {
  const port = await freePort();
  const logFile = path.join(logDir, 'node.log');
  const child = startChild('node:http', process.execPath, [path.join(ROOT, 'bench', 'node-server.mjs')], {
    env: { ...process.env, BENCH_PORT: String(port), BENCH_BLOBS: blobsDir, BENCH_NAMES: namesDir },
    logFile,
    cwd: ROOT,
  });
  const base = `http://127.0.0.1:${port}`;
  await waitForHttp(`${base}/`, child, logFile);
  return {
    child,
    target: {
      name: 'node:http',
      base,
      pids: [child.pid],
      url: (f, mode) => (mode === 'hash' ? `${base}/distfiles/${shard(f.sha512)}` : `${base}/names/${encodeURIComponent(f.filename)}`),
    },
  };
}

async function upload(base: string, filename: string, size: number, seed: Buffer, block?: Buffer): Promise<{ sha512: string; seconds: number }> {
  const t0 = process.hrtime.bigint();
  const res = await request(`${base}/api/v1/distfiles/${encodeURIComponent(filename)}`, {
    method: 'PUT',
    body: dataStream(size, seed, block),
    headers: { authorization: `Bearer ${TOKEN}`, 'content-length': String(size), 'content-type': 'application/octet-stream' },
    headersTimeout: 0,
    bodyTimeout: 0,
  });
  const json = (await res.body.json()) as any;
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  if (res.statusCode !== 201 && res.statusCode !== 200) throw new Error(`upload of ${filename}: HTTP ${res.statusCode} ${JSON.stringify(json)}`);
  if (json.size !== size) throw new Error(`upload of ${filename}: stored ${json.size} bytes, sent ${size}`);
  return { sha512: json.sha512 as string, seconds };
}

/** Every target must serve the exact bytes before its speed means anything. */
async function verify(target: Target, file: BenchFile, mode: Mode): Promise<void> {
  const url = target.url(file, mode);
  const res = await request(url);
  const hash = createHash('sha512');
  for await (const chunk of res.body) hash.update(chunk as Buffer);
  const got = hash.digest('hex');
  if (res.statusCode !== 200 || got !== file.sha512) {
    throw new Error(`${target.name} ${url}: HTTP ${res.statusCode}, sha512 ${got.slice(0, 16)}… (want ${file.sha512.slice(0, 16)}…)`);
  }
}

/** wrk's load, reporting through the script main() writes into the work dir. */
const load = (url: string, duration: number, connections = CONNECTIONS): Promise<WrkSummary> =>
  wrk(url, duration, connections, path.join(workDir, 'report.lua'));

async function measureOnce(target: Target, file: BenchFile, mode: Mode): Promise<Measure> {
  const cpu0 = treeCpuSeconds(target.pids);
  const r = await load(target.url(file, mode), DURATION);
  const cpu = treeCpuSeconds(target.pids) - cpu0;
  const errors = r.connect + r.read + r.write + r.timeout;
  const problems = [errors ? `${errors} socket errors` : '', r.status ? `${r.status} non-2xx` : ''].filter(Boolean).join(', ');
  const seconds = r.us / 1e6;
  const m: Measure = {
    rps: r.requests / seconds,
    mbps: r.bytes / 1e6 / seconds,
    cpuPerReq: r.requests ? (cpu / r.requests) * 1e6 : 0,
    cpuPerGiB: r.bytes ? cpu / (r.bytes / GiB) : 0,
    problems,
  };
  log(
    `  ${target.name.padEnd(16)} ${file.label.padEnd(6)} by ${mode}: ${fmt(m.rps)} req/s, ${fmt(m.mbps)} MB/s, ` +
      `${fmt(m.cpuPerReq)} µs CPU/req, ${fmt(m.cpuPerGiB)} CPU-s/GiB${problems ? ` (${problems})` : ''}`,
  );
  return m;
}

/**
 * Each target is warmed up once, then measured ROUNDS times with the targets taking turns, and
 * the median round kept: on a shared machine, load from elsewhere comes and goes, and taking
 * turns spreads it over all targets instead of landing on whichever ran at the wrong moment.
 */
async function measureRow(targets: Target[], file: BenchFile, mode: Mode): Promise<Map<string, Measure>> {
  for (const t of targets) await load(t.url(file, mode), WARMUP);
  const runs = new Map<Target, Measure[]>(targets.map((t) => [t, []]));
  for (let round = 0; round < ROUNDS; round++) {
    for (const t of targets) runs.get(t)!.push(await measureOnce(t, file, mode));
  }
  const out = new Map<string, Measure>();
  for (const [t, list] of runs) {
    const sorted = [...list].sort((a, b) => score(file.label, a) - score(file.label, b));
    const median = sorted[Math.floor(sorted.length / 2)]!;
    out.set(t.name, { ...median, problems: list.map((m) => m.problems).filter(Boolean).join('; ') });
  }
  return out;
}

/** One fresh connection: ms from connect() to the first response byte (Infinity when it never comes). */
function firstByte(base: string, pathname: string, timeoutMs: number): Promise<number> {
  const { hostname, port } = new URL(base);
  return new Promise((resolve) => {
    const t0 = process.hrtime.bigint();
    const socket = net.connect(Number(port), hostname);
    const done = (ms: number) => {
      clearTimeout(timer);
      socket.destroy();
      resolve(ms);
    };
    const timer = setTimeout(() => done(Infinity), timeoutMs);
    socket.once('connect', () => socket.write(`GET ${pathname} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n`));
    socket.once('data', () => done(Number(process.hrtime.bigint() - t0) / 1e6));
    socket.once('error', () => done(Infinity));
  });
}

interface Crowd {
  rps: number;
  p50: number;
  p99: number;
  max: number;
  probes: number;
  failed: number;
  rssPeak: number;
}

/**
 * CROWD keep-alive clients (half on the 4 KiB file, half on the 1 MiB one) while a fresh connection
 * every 20 ms asks for the 4 KiB file: how long does a newcomer wait for its first byte, and how much
 * memory does the server hold meanwhile.
 */
async function crowd(target: Target, small: BenchFile, medium: BenchFile): Promise<Crowd> {
  const seconds = DURATION + 2;
  const mem = target.pids.map((pid) => sampleMemory(pid, 50));
  const loads = [load(target.url(small, 'hash'), seconds, CROWD / 2), load(target.url(medium, 'hash'), seconds, CROWD / 2)];
  await new Promise((r) => setTimeout(r, 1000));
  const probes: Promise<number>[] = [];
  const probePath = new URL(target.url(small, 'hash')).pathname;
  const until = Date.now() + (seconds - 2) * 1000;
  while (Date.now() < until) {
    probes.push(firstByte(target.base, probePath, 30_000));
    await new Promise((r) => setTimeout(r, 20));
  }
  const [a, b] = await Promise.all(loads);
  const times = (await Promise.all(probes)).sort((x, y) => x - y);
  const rssPeak = mem.map((m) => m.stop().rssPeak).reduce((x, y) => x + y, 0);
  const pick = (q: number) => times[Math.min(times.length - 1, Math.floor(q * times.length))] ?? NaN;
  const result = {
    rps: (a!.requests + b!.requests) / seconds,
    p50: pick(0.5),
    p99: pick(0.99),
    max: times.at(-1) ?? NaN,
    probes: times.length,
    failed: times.filter((t) => t === Infinity).length,
    rssPeak,
  };
  log(`  ${target.name.padEnd(16)} ${CROWD} clients: ${fmt(result.rps)} req/s, first byte p50 ${fmt(result.p50)} ms, p99 ${fmt(result.p99)} ms, RSS ${mib(rssPeak)}`);
  return result;
}

async function download(url: string): Promise<{ bytes: number; seconds: number; status: number }> {
  const t0 = process.hrtime.bigint();
  const res = await request(url, { headersTimeout: 0, bodyTimeout: 0 });
  let bytes = 0;
  for await (const chunk of res.body) bytes += (chunk as Buffer).length;
  return { bytes, seconds: Number(process.hrtime.bigint() - t0) / 1e9, status: res.statusCode };
}

const mib = (bytes: number) => `${(bytes / MiB).toFixed(0)} MiB`;
const size = (bytes: number) => (bytes >= GiB ? `${(bytes / GiB).toFixed(bytes % GiB ? 1 : 0)} GiB` : mib(bytes));

interface Row {
  file: BenchFile;
  mode: Mode;
  goal: Goal;
  m: Map<string, Measure>;
}

function verdict(row: Row, m: Measure, nginx: Measure): string {
  const label = row.file.label;
  const speed = score(label, m) / score(label, nginx);
  const cpu = cpuScore(label, m) / cpuScore(label, nginx);
  const parts = [`≥ ${row.goal.speed}×: ${speed >= row.goal.speed ? 'met' : 'not met'}`];
  if (row.goal.cpu !== undefined) parts.push(`CPU ≤ ${row.goal.cpu}×: ${cpu <= row.goal.cpu ? 'met' : 'not met'}`);
  return parts.join(', ');
}

async function main(): Promise<string> {
  await mkdir(blobsDir, { recursive: true });
  await mkdir(namesDir, { recursive: true });
  await mkdir(logDir, { recursive: true });
  await writeFile(path.join(workDir, 'report.lua'), WRK_REPORT);
  const started = new Date();
  // On a shared machine the other tenants' load is part of every figure: the report says how much there was.
  const loadAtStart = os.loadavg();
  log(`bench: work dir ${workDir}`);

  // 1. fastpull is populated through its own upload API.
  let fp = await startFastpull('fastpull');
  const files: BenchFile[] = [];
  const seed = randomBytes(8);
  for (const s of SIZES) {
    const filename = `bench-${s.label.replace(' ', '').toLowerCase()}-1.0.tar.xz`;
    const { sha512 } = await upload(fp.target.base, filename, s.bytes, seed);
    files.push({ label: s.label, bytes: s.bytes, filename, sha512 });
    // nginx and node:http resolve names through the filesystem, so they get hard links to the same blobs.
    await link(path.join(blobsDir, shard(sha512)), path.join(namesDir, filename));
  }

  const ng = await startPlainNginx();
  const bare = await startBareNode();
  const extras = await startExtras(fp.target);
  const targets = [ng.target, bare.target, fp.target, ...extras.targets];
  for (const t of targets) for (const f of files) for (const mode of ['hash', 'name'] as const) await verify(t, f, mode);
  log(`bench: all targets serve identical bytes; ${CONNECTIONS} connections, median of ${ROUNDS} × ${DURATION} s per cell after ${WARMUP} s warm-up`);

  const rows: Row[] = [];
  for (const [i, file] of SKIP.has('downloads') ? [] : files.entries()) {
    const spec = SIZES[i]!;
    for (const mode of spec.modes) {
      const cellTargets = targets.filter((t) => !extras.only.has(t.name) || extras.only.get(t.name)!.includes(spec.label));
      rows.push({ file, mode, goal: spec.goal, m: await measureRow(cellTargets, file, mode) });
    }
  }

  const crowds = new Map<string, Crowd>();
  if (!SKIP.has('crowd')) {
    for (const t of [ng.target, bare.target, fp.target]) crowds.set(t.name, await crowd(t, files[0]!, files[1]!));
  }
  await extras.stop();
  await ng.child.stop();
  await bare.child.stop();

  // 2. Upload against issue 8's ceiling, min(slowest single digest, fsync'd write), measured in this run
  // by bench/upload.ts with its own server (so the downloads above leave no state behind in it).
  let uploadLine: string | undefined;
  if (!SKIP.has('upload')) {
    const result = await runUploadBench({ bytes: UPLOAD_BYTES, rounds: QUICK ? 1 : ROUNDS, log });
    uploadLine = uploadTable(result);
  }
  await fp.child.stop();

  // 3. Memory: a fresh process, so VmHWM covers exactly start-up + one big upload + one big download.
  const memLines: string[] = [];
  if (!SKIP.has('memory')) {
    fp = await startFastpull('memory');
    const idle = sampleMemory(fp.child.pid).stop();
    const upMem = sampleMemory(fp.child.pid);
    const big = await upload(fp.target.base, 'bench-big-1.0.tar.xz', BIG_BYTES, randomBytes(8));
    const upStats = upMem.stop();
    const downMem = sampleMemory(fp.child.pid);
    const got = await download(`${fp.target.base}/distfiles/${shard(big.sha512)}`);
    const downStats = downMem.stop();
    if (got.status !== 200 || got.bytes !== BIG_BYTES) throw new Error(`big download: HTTP ${got.status}, ${got.bytes} of ${BIG_BYTES} bytes`);
    log(`bench: ${size(BIG_BYTES)} upload peak RSS ${mib(upStats.rssPeak)}, download peak RSS ${mib(downStats.rssPeak)}, VmHWM ${mib(downStats.hwm)}`);
    await fp.child.stop();
    memLines.push(
      `| fastpull memory (${size(BIG_BYTES)}, fresh process, VmRSS sampled every 10 ms) | RSS |`,
      '| --- | ---: |',
      `| idle after start | ${mib(idle.rssPeak)} |`,
      `| peak during upload (${fmt(BIG_BYTES / 1e6 / big.seconds)} MB/s) | ${mib(upStats.rssPeak)} |`,
      `| peak during download (${fmt(got.bytes / 1e6 / got.seconds)} MB/s) | ${mib(downStats.rssPeak)} |`,
      `| VmHWM (kernel high-water mark, whole process life) | ${mib(downStats.hwm)} |`,
      '',
    );
  }

  // 4. Blobs in a bucket: the origin on S3 against the S3 service read directly (starts its own Swift).
  let s3Lines: string | undefined;
  if (!SKIP.has('s3')) {
    s3Lines = await s3Table(
      await runS3Bench({ workDir, wrkScript: path.join(workDir, 'report.lua'), duration: DURATION, rounds: ROUNDS, connections: CONNECTIONS, log }),
    );
  }

  // Report.
  const cpu = os.cpus()[0]?.model ?? 'unknown CPU';
  const out: string[] = [];
  out.push(`# fastpull benchmark`, '');
  out.push(
    `${started.toISOString()} · ${cpu}, ${os.cpus().length} cores · Linux ${os.release()} · Node ${process.version} · ${findNginx().version.replace('nginx version: ', '')}` +
      ` · load average at start ${loadAtStart.map((l) => l.toFixed(1)).join(' ')}, at end ${os.loadavg().map((l) => l.toFixed(1)).join(' ')}` +
      `${QUICK ? ' · **BENCH_QUICK smoke run: numbers are not meaningful**' : ''}`,
    '',
  );
  out.push(
    `Downloads: wrk (1 thread), ${CONNECTIONS} keep-alive connections, loopback, one target under load at a time; each cell is the median of ${ROUNDS} runs of ` +
      `${DURATION} s, the targets taking turns, after a ${WARMUP} s warm-up. ` +
      'Each server is one process: nginx (`sendfile on`, `master_process off`, one worker, access log off), a bare `node:http` server ' +
      '(`bench/node-server.mjs`: descriptors opened once, no framework, no index, no log: Node’s own ceiling) and fastpull ' +
      '(`node bin/fastpull.js serve` at its default log level, `info`: one JSON line per request, to a file). ' +
      'By hash is `/distfiles/ab/cd/ef/<sha512>` (nginx and node:http map it straight onto `<data>/blobs/`); ' +
      'by name is fastpull’s flat `/distfiles/<name>`, resolved through SQLite, while nginx and node:http ' +
      'serve a flat directory of hard links named by filename. MB/s is bytes on the wire (headers included). ' +
      'CPU is user + system seconds of the server’s whole process tree (from /proc), per request and per GiB on the wire. ' +
      '“× nginx” compares req/s, except at 64 MiB where it compares MB/s; “CPU × nginx” compares CPU per request, at 64 MiB per GiB.' +
      (extras.note ? ` ${extras.note}` : ''),
    '',
  );
  out.push('| file | path | server | req/s | MB/s | × nginx | CPU µs/req | CPU-s/GiB | CPU × nginx | target (fastpull vs nginx) |');
  out.push('| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |');
  for (const row of rows) {
    const nginx = row.m.get('nginx')!;
    for (const [name, m] of row.m) {
      const label = row.file.label;
      const goal =
        name === 'fastpull' ? verdict(row, m, nginx) : extras.targets.some((t) => t.name === name) ? extras.goal(name, label, m, nginx, row.m.get('fastpull')) : '';
      out.push(
        `| ${label} | by ${row.mode} | ${name} | ${fmt(m.rps)} | ${fmt(m.mbps)} | ${ratio(score(label, m), score(label, nginx))} | ` +
          `${fmt(m.cpuPerReq)} | ${fmt(m.cpuPerGiB)} | ${ratio(cpuScore(label, m), cpuScore(label, nginx))} | ${goal}${m.problems ? ` (${m.problems})` : ''} |`,
      );
    }
  }
  out.push('');
  if (crowds.size) {
    out.push(
      `${CROWD} keep-alive clients (wrk, ${CROWD / 2} on the 4 KiB file and ${CROWD / 2} on the 1 MiB one, ${DURATION + 2} s) while a fresh ` +
        'connection every 20 ms asks for the 4 KiB file; first byte is measured from connect(). Target: fastpull p99 ≤ 1,000 ms, RSS ≤ 200 MB.',
      '',
    );
    out.push('| server | req/s | fresh connections | first byte p50 ms | p99 ms | max ms | never answered (30 s) | server RSS peak |');
    out.push('| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |');
    for (const [name, c] of crowds) {
      out.push(`| ${name} | ${fmt(c.rps)} | ${c.probes} | ${fmt(c.p50)} | ${fmt(c.p99)} | ${fmt(c.max)} | ${c.failed} | ${mib(c.rssPeak)} |`);
    }
    out.push('');
  }
  if (uploadLine) out.push(uploadLine, '');
  out.push(...memLines);
  if (s3Lines) out.push(s3Lines);
  return out.join('\n');
}

/**
 * Variants of fastpull, each its own process over the same data directory: behind nginx with the
 * shipped config/nginx-offload.conf (FASTPULL_ACCEL_REDIRECT; CPU counts both processes), and with
 * FASTPULL_VERIFY_ON_SERVE on (64 MiB only: what hashing every body costs).
 */
async function startExtras(_fastpull: Target): Promise<{
  targets: Target[];
  only: Map<string, string[]>;
  note: string;
  goal(name: string, label: string, m: Measure, nginx: Measure, fastpull: Measure | undefined): string;
  stop(): Promise<void>;
}> {
  const accel = await startFastpull('fastpull-accel', { FASTPULL_ACCEL_REDIRECT: '/_fastpull_blobs/' });
  const template = await readFile(path.join(ROOT, 'config', 'nginx-offload.conf'), 'utf8');
  const vars: Record<string, string> = {
    FASTPULL_OFFLOAD_LISTEN: '${LISTEN}',
    FASTPULL_ORIGIN: new URL(accel.target.base).host,
    FASTPULL_BLOBS_DIR: blobsDir,
  };
  const site = template.replace(/\$\{(\w+)\}/g, (whole, name: string) => vars[name] ?? whole);
  const front = await startNginx('offload', site, [accel.child.pid]);
  const offload: Target = {
    name: 'nginx+fastpull',
    base: front.base,
    pids: front.pids,
    url: (f, mode) => accel.target.url(f, mode).replace(accel.target.base, front.base),
  };
  const verifying = await startFastpull('fastpull-verify', { FASTPULL_VERIFY_ON_SERVE: 'true' });
  verifying.target.name = 'fastpull verify-on-serve';
  return {
    targets: [offload, verifying.target],
    only: new Map([[verifying.target.name, ['64 MiB']]]),
    note:
      '“nginx+fastpull” is nginx (one process, sendfile) running the shipped `config/nginx-offload.conf` in front of a fastpull with ' +
      '`FASTPULL_ACCEL_REDIRECT=/_fastpull_blobs/`: fastpull decides and answers headers, nginx sends bytes of blobs over 64 KiB; its CPU is both processes. ' +
      '“fastpull verify-on-serve” is fastpull with `FASTPULL_VERIFY_ON_SERVE=true` (every full body hashed as it is sent).',
    goal(name, label, m, nginx, fastpull) {
      if (name === 'nginx+fastpull') {
        if (large(label)) {
          const speed = score(label, m) / score(label, nginx);
          const cpu = cpuScore(label, m) / cpuScore(label, nginx);
          return `≥ 0.95×: ${speed >= 0.95 ? 'met' : 'not met'}, CPU ≤ 1.2×: ${cpu <= 1.2 ? 'met' : 'not met'}`;
        }
        if (label === '4 KiB' && fastpull) return `no worse than fastpull alone: ${m.rps >= 0.95 * fastpull.rps ? 'met' : 'not met'} (${ratio(m.rps, fastpull.rps)})`;
        return '';
      }
      if (fastpull) return `cost: ${fmt(m.cpuPerGiB - fastpull.cpuPerGiB)} CPU-s/GiB over fastpull (${ratio(m.cpuPerGiB, fastpull.cpuPerGiB)})`;
      return '';
    },
    async stop() {
      await front.child.stop();
      await accel.child.stop();
      await verifying.child.stop();
    },
  };
}

let cleaning: Promise<void> | undefined;
function cleanup(): Promise<void> {
  return (cleaning ??= (async () => {
    await stopAll();
    if (process.env.BENCH_KEEP === '1') log(`bench: kept ${workDir}`);
    else await rm(workDir, { recursive: true, force: true });
  })());
}
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.once(signal, () => {
    log(`bench: ${signal}, cleaning up`);
    void cleanup().finally(() => process.exit(130));
  });
}

try {
  const report = await main();
  await writeFile(path.join(ROOT, 'bench', 'results.md'), report);
  process.stdout.write(`${report}\n`);
  log('bench: wrote bench/results.md');
} catch (err) {
  log(`bench: failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
  process.exitCode = 1;
} finally {
  await cleanup();
}
