/**
 * Upload ingest against its ceilings, in one run on one machine:
 *   - each digest the store computes (sha512, blake2b512, sha256), alone, in this process;
 *   - fsync'd write speed into the data directory's filesystem;
 *   - a real PUT of BENCH_UPLOAD_BYTES (1 GiB) through `node bin/fastpull.js serve` (built dist/),
 *     with the server's CPU seconds (utime + stime of every thread, /proc/<pid>/stat) per GiB.
 * Target (issue 8): upload ≥ 0.8 × min(slowest digest, fsync'd write).
 *
 *   node --import tsx bench/upload.ts            (builds dist/ first; BENCH_NO_BUILD=1 skips that)
 * Knobs: BENCH_UPLOAD_BYTES, BENCH_DIGEST_BYTES, BENCH_ROUNDS (PUTs, median reported), BENCH_DATA_DIR,
 * BENCH_FASTPULL_ROOT (another checkout's built tree, to compare before and after on the same machine).
 */
import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { mkdir, mkdtemp, open, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { request } from 'undici';
import { chunks, dataStream } from './data.js';
import { freePort, startChild, waitForHttp } from './procs.js';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const TOKEN = 'bench-upload-token-0123456789';
const GiB = 1024 ** 3;
const DIGESTS = ['sha512', 'blake2b512', 'sha256'] as const;

export interface UploadBenchResult {
  bytes: number;
  digestMBps: Record<(typeof DIGESTS)[number], number>;
  /** All three in one thread, one after the other per chunk (the old ingest's ceiling). */
  oneThreadMBps: number;
  fsyncWriteMBps: number;
  /** Median of the rounds. */
  uploadMBps: number;
  uploadRoundsMBps: number[];
  /** Server CPU seconds (all threads) per GiB uploaded, median of the rounds. */
  serverCpuSecondsPerGiB: number;
  /** upload / min(slowest digest, fsync'd write). */
  ratio: number;
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const seconds = (t0: bigint) => Number(process.hrtime.bigint() - t0) / 1e9;

function digestSpeeds(size: number, block: Buffer): Pick<UploadBenchResult, 'digestMBps' | 'oneThreadMBps'> {
  const digestMBps = {} as UploadBenchResult['digestMBps'];
  const seed = randomBytes(8);
  for (const algorithm of DIGESTS) {
    const hash = createHash(algorithm);
    const t0 = process.hrtime.bigint();
    for (const chunk of chunks(size, seed, block)) hash.update(chunk);
    hash.digest();
    digestMBps[algorithm] = size / 1e6 / seconds(t0);
  }
  const all = DIGESTS.map((a) => createHash(a));
  const t0 = process.hrtime.bigint();
  for (const chunk of chunks(size, seed, block)) for (const h of all) h.update(chunk);
  for (const h of all) h.digest();
  return { digestMBps, oneThreadMBps: size / 1e6 / seconds(t0) };
}

/** Writes `size` bytes in 1 MiB writes and fsyncs them: what the store's own write costs the disk. */
async function fsyncWriteSpeed(dir: string, size: number, block: Buffer): Promise<number> {
  const file = path.join(dir, `fsync-probe-${process.pid}.bin`);
  const handle = await open(file, 'w');
  try {
    const t0 = process.hrtime.bigint();
    for (const chunk of chunks(size, randomBytes(8), block)) await handle.write(chunk);
    await handle.sync();
    return size / 1e6 / seconds(t0);
  } finally {
    await handle.close();
    await rm(file, { force: true });
  }
}

const CLK_TCK = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;

/** utime + stime of the whole process (every thread), in seconds. */
function cpuSeconds(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  // Fields after the parenthesised command name: state is field 3, utime 14, stime 15.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) / CLK_TCK;
}

export async function runUploadBench(options: { bytes?: number; digestBytes?: number; rounds?: number; dataDir?: string; log?: (line: string) => void } = {}): Promise<UploadBenchResult> {
  const bytes = options.bytes ?? Number(process.env.BENCH_UPLOAD_BYTES ?? GiB);
  const digestBytes = options.digestBytes ?? Number(process.env.BENCH_DIGEST_BYTES ?? 512 * 1024 ** 2);
  const rounds = options.rounds ?? Number(process.env.BENCH_ROUNDS ?? 3);
  const log = options.log ?? ((line: string) => console.error(line));
  const parent = options.dataDir ?? process.env.BENCH_DATA_DIR ?? tmpdir();
  await mkdir(parent, { recursive: true });
  const work = await mkdtemp(path.join(parent, 'fastpull-bench-upload-'));
  const block = randomBytes(1024 * 1024);
  try {
    const speeds = digestSpeeds(digestBytes, block);
    log(`upload bench: digests ${DIGESTS.map((a) => `${a} ${speeds.digestMBps[a].toFixed(0)}`).join(', ')} MB/s; all three in one thread ${speeds.oneThreadMBps.toFixed(0)} MB/s`);
    const fsyncWriteMBps = await fsyncWriteSpeed(work, bytes, block);
    log(`upload bench: fsync'd write ${fsyncWriteMBps.toFixed(0)} MB/s`);

    const dataDir = path.join(work, 'data');
    const port = await freePort();
    const logFile = path.join(work, 'fastpull.log');
    const env: NodeJS.ProcessEnv = {};
    for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('FASTPULL_')) env[k] = v;
    Object.assign(env, {
      FASTPULL_HOST: '127.0.0.1',
      FASTPULL_PORT: String(port),
      FASTPULL_DATA_DIR: dataDir,
      FASTPULL_ADMIN_TOKEN: TOKEN,
      FASTPULL_LOG_LEVEL: 'warn',
    });
    const root = process.env.BENCH_FASTPULL_ROOT ?? ROOT;
    const server = startChild('fastpull', process.execPath, [path.join(root, 'bin', 'fastpull.js'), 'serve'], { env, logFile });
    const base = `http://127.0.0.1:${port}`;
    const mbps: number[] = [];
    const cpu: number[] = [];
    try {
      await waitForHttp(`${base}/healthz`, server, logFile);
      for (let round = 0; round < rounds; round++) {
        const seed = randomBytes(8);
        const cpu0 = cpuSeconds(server.pid);
        const t0 = process.hrtime.bigint();
        const res = await request(`${base}/api/v1/distfiles/bench-upload-${round}.tar.xz`, {
          method: 'PUT',
          body: dataStream(bytes, seed, block),
          headers: { authorization: `Bearer ${TOKEN}`, 'content-length': String(bytes) },
          headersTimeout: 0,
          bodyTimeout: 0,
        });
        const json = (await res.body.json()) as { size?: number; sha512?: string };
        const wall = seconds(t0);
        const used = cpuSeconds(server.pid) - cpu0;
        if (res.statusCode !== 201 || json.size !== bytes) throw new Error(`PUT: HTTP ${res.statusCode} ${JSON.stringify(json)}`);
        const want = createHash('sha512');
        for (const chunk of chunks(bytes, seed, block)) want.update(chunk);
        if (json.sha512 !== want.digest('hex')) throw new Error('PUT: the server stored other bytes than were sent');
        mbps.push(bytes / 1e6 / wall);
        cpu.push(used / (bytes / GiB));
        log(`upload bench: PUT ${round + 1}/${rounds} ${(bytes / 1e6 / wall).toFixed(0)} MB/s, server ${(used / (bytes / GiB)).toFixed(2)} CPU-s/GiB`);
        await rm(path.join(dataDir, 'blobs'), { recursive: true, force: true });
      }
    } finally {
      await server.stop();
    }
    const uploadMBps = median(mbps);
    const ceiling = Math.min(...Object.values(speeds.digestMBps), fsyncWriteMBps);
    return {
      bytes,
      ...speeds,
      fsyncWriteMBps,
      uploadMBps,
      uploadRoundsMBps: mbps,
      serverCpuSecondsPerGiB: median(cpu),
      ratio: uploadMBps / ceiling,
    };
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}

/** The result as a Markdown table (for bench/results.md and the README). */
export function uploadTable(r: UploadBenchResult): string {
  const f = (x: number) => x.toFixed(0);
  return [
    '| upload | sha512 MB/s | blake2b512 MB/s | sha256 MB/s | one thread, all three | fsync\'d write MB/s | PUT MB/s (median) | ratio to min(slowest digest, write) | server CPU-s/GiB |',
    '| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |',
    `| ${(r.bytes / GiB).toFixed(r.bytes % GiB === 0 ? 0 : 2)} GiB | ${f(r.digestMBps.sha512)} | ${f(r.digestMBps.blake2b512)} | ${f(r.digestMBps.sha256)} | ${f(r.oneThreadMBps)} | ${f(r.fsyncWriteMBps)} | ${f(r.uploadMBps)} (${r.uploadRoundsMBps.map(f).join(', ')}) | ${r.ratio.toFixed(2)}× (target 0.8×) | ${r.serverCpuSecondsPerGiB.toFixed(2)} |`,
  ].join('\n');
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  if (process.env.BENCH_NO_BUILD !== '1') execFileSync('npm', ['run', 'build'], { cwd: ROOT, stdio: ['ignore', 'ignore', 'inherit'] });
  const result = await runUploadBench();
  console.log(uploadTable(result));
  console.log(JSON.stringify(result));
}
