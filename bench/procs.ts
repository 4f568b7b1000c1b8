import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { openSync, closeSync, readdirSync, readFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { request } from 'undici';

const children = new Set<ChildProcess>();

// A crash or ^C of the bench must not leave servers behind; 'exit' handlers run synchronously, so SIGKILL.
process.on('exit', () => {
  for (const child of children) child.kill('SIGKILL');
});

/** Load generators too: an interrupted bench must not leave wrk hammering a port. */
export function track(child: ChildProcess): void {
  children.add(child);
  child.once('exit', () => children.delete(child));
}

export interface Child {
  name: string;
  process: ChildProcess;
  pid: number;
  stop(): Promise<void>;
}

/** Starts a server as a child with its output going straight to a log file (never through our event loop). */
export function startChild(name: string, command: string, args: string[], opts: { env?: NodeJS.ProcessEnv; logFile: string; cwd?: string }): Child {
  const fd = openSync(opts.logFile, 'a');
  const child = spawn(command, args, {
    stdio: ['ignore', fd, fd],
    env: opts.env ?? process.env,
    ...(opts.cwd ? { cwd: opts.cwd } : {}),
  });
  closeSync(fd);
  children.add(child);
  child.once('exit', () => children.delete(child));
  if (child.pid === undefined) throw new Error(`${name}: could not start ${command}`);
  return {
    name,
    process: child,
    pid: child.pid,
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
      child.kill('SIGTERM');
      const timedOut = await Promise.race([exited.then(() => false), sleep(5000).then(() => true)]);
      if (timedOut) {
        child.kill('SIGKILL');
        await exited;
      }
    },
  };
}

export async function stopAll(): Promise<void> {
  await Promise.all([...children].map(async (child) => {
    const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    child.kill('SIGTERM');
    await Promise.race([exited, sleep(5000).then(() => child.kill('SIGKILL'))]);
  }));
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      const port = typeof address === 'object' && address ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}

/** Waits until something answers HTTP on the URL (any status), or the child dies, or 20 s pass. */
export async function waitForHttp(url: string, child: Child, logFile: string): Promise<void> {
  const deadline = Date.now() + 20_000;
  while (Date.now() < deadline) {
    if (child.process.exitCode !== null) break;
    try {
      const res = await request(url);
      await res.body.dump();
      return;
    } catch {
      await sleep(100);
    }
  }
  let log = '';
  try {
    log = readFileSync(logFile, 'utf8').slice(-2000);
  } catch {
    // no log yet
  }
  throw new Error(`${child.name} did not start answering ${url}\n${log}`);
}

export interface MemSample {
  rssPeak: number;
  hwm: number;
  samples: number;
}

function statusField(pid: number, field: string): number {
  const text = readFileSync(`/proc/${pid}/status`, 'utf8');
  const m = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(text);
  return m ? Number(m[1]) * 1024 : 0;
}

/** Samples VmRSS every `everyMs` until stopped; VmHWM is the kernel's own high-water mark, which no sampling gap can miss. */
export function sampleMemory(pid: number, everyMs = 10): { stop(): MemSample; rssNow(): number } {
  let rssPeak = 0;
  let samples = 0;
  const tick = () => {
    try {
      rssPeak = Math.max(rssPeak, statusField(pid, 'VmRSS'));
      samples++;
    } catch {
      // the process went away; the caller will notice
    }
  };
  tick();
  const timer = setInterval(tick, everyMs);
  return {
    rssNow: () => statusField(pid, 'VmRSS'),
    stop() {
      clearInterval(timer);
      tick();
      return { rssPeak, hwm: statusField(pid, 'VmHWM'), samples };
    },
  };
}

const CLK_TCK = (() => {
  const out = spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).stdout?.trim();
  const n = Number(out);
  return Number.isFinite(n) && n > 0 ? n : 100;
})();

/**
 * CPU seconds (user + system) used so far by the given processes and every descendant still alive,
 * from /proc/<pid>/stat: what a server costs, whatever its architecture (nginx with workers, node
 * with its libuv threads, which count in their process's stat).
 */
export function treeCpuSeconds(roots: number[]): number {
  const parent = new Map<number, number>();
  const ticks = new Map<number, number>();
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    let stat: string;
    try {
      stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
    } catch {
      continue; // gone meanwhile
    }
    // The command name may hold spaces and parentheses: fields are counted after its closing ')'.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    const pid = Number(entry);
    parent.set(pid, Number(fields[1]));
    ticks.set(pid, Number(fields[11]) + Number(fields[12]));
  }
  const inTree = (pid: number): boolean => {
    for (let p: number | undefined = pid, hops = 0; p !== undefined && p > 1 && hops < 64; p = parent.get(p), hops++) {
      if (roots.includes(p)) return true;
    }
    return false;
  };
  let total = 0;
  for (const [pid, t] of ticks) if (inTree(pid)) total += t;
  return total / CLK_TCK;
}

// wrk's own summary as one JSON line, so nothing depends on its human-readable output.
export const WRK_REPORT = `done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRK {"requests":%d,"bytes":%d,"us":%d,"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}\\n',
    summary.requests, summary.bytes, summary.duration, e.connect, e.read, e.write, e.status, e.timeout))
end
`;

export interface WrkSummary {
  requests: number;
  bytes: number;
  us: number;
  connect: number;
  read: number;
  write: number;
  status: number;
  timeout: number;
}

/**
 * wrk rather than autocannon: autocannon parses responses in JavaScript and tops out far below
 * what nginx serves on loopback (about 25 MB/s against nginx's 480 MB/s for 1 MiB files here),
 * so it would measure itself. One wrk thread leaves the other core to the server.
 * `reportScript` is a file holding WRK_REPORT.
 */
export function wrk(url: string, duration: number, connections: number, reportScript: string): Promise<WrkSummary> {
  return new Promise((resolve, reject) => {
    const args = ['-t1', `-c${connections}`, `-d${duration}s`, '--timeout', '60s', '-s', reportScript, url];
    const child = spawn('wrk', args, { stdio: ['ignore', 'pipe', 'pipe'] });
    track(child);
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (out += d.toString()));
    child.once('error', (err) => reject(new Error(`cannot run wrk (apt-get install -y wrk): ${err.message}`)));
    child.once('exit', (code) => {
      const line = /^WRK (\{.*\})$/m.exec(out);
      if (code !== 0 || !line) reject(new Error(`wrk ${args.join(' ')} failed (${code}):\n${out}`));
      else resolve(JSON.parse(line[1]!) as WrkSummary);
    });
  });
}
