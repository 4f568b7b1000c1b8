import { createHash, randomBytes } from 'node:crypto';
import { rm } from 'node:fs/promises';
import { request as httpRequest } from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startServeProcess, type ServeProcess } from './helpers/serve-process.js';
import { ADMIN_TOKEN, makeDataDir } from './helpers/server.js';
import { startUpstream, type Upstream } from './helpers/upstream.js';

const sha512 = (b: Buffer) => createHash('sha512').update(b).digest('hex');

/** One request on its own connection, so node:cluster hands each to a worker of its choosing. */
function fresh(url: string, method = 'GET', body?: Buffer | string, headers: Record<string, string> = {}) {
  return new Promise<{ status: number; body: Buffer }>((resolve, reject) => {
    const req = httpRequest(url, { method, agent: false, headers }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks) }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(body);
  });
}

/** pids that wrote a request log line for this path. */
function servingPids(output: string, path: string): Set<number> {
  const pids = new Set<number>();
  for (const line of output.split('\n')) {
    if (!line.startsWith('{')) continue;
    const entry = JSON.parse(line) as { msg?: string; url?: string; pid?: number };
    if (entry.msg === 'request' && entry.url === path && entry.pid) pids.add(entry.pid);
  }
  return pids;
}

const workerPids = (output: string) =>
  output
    .split('\n')
    .filter((l) => l.includes('"serving process ready"'))
    .map((l) => (JSON.parse(l) as { pid: number }).pid);

const alive = (pid: number) => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

async function until<T>(what: string, probe: () => T | undefined | Promise<T | undefined>, ms = 20_000): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await probe();
    if (value !== undefined && value !== false) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

describe('FASTPULL_WORKERS: several serving processes on one port', () => {
  let dataDir: string;
  let up: Upstream;
  let server: ServeProcess;
  const pulled = randomBytes(300_000);
  let upstreamHits = 0;

  beforeAll(async () => {
    dataDir = await makeDataDir();
    up = await startUpstream({
      // Slow to answer, so every one of the concurrent misses arrives while the first is in flight.
      '/pulled-1.0.tar.gz': async (_req, res) => {
        upstreamHits++;
        await new Promise((r) => setTimeout(r, 800));
        res.writeHead(200, { 'content-length': pulled.length }).end(pulled);
      },
      '/job-1.tar.gz': (_req, res) => void res.writeHead(200).end('job one\n'),
      '/job-2.tar.gz': (_req, res) => void res.writeHead(200).end('job two\n'),
      '/job-3.tar.gz': (_req, res) => void res.writeHead(200).end('job three\n'),
      '/job-4.tar.gz': (_req, res) => void res.writeHead(200).end('job four\n'),
    });
    server = await startServeProcess({
      FASTPULL_WORKERS: '2',
      FASTPULL_DATA_DIR: dataDir,
      FASTPULL_ADMIN_TOKEN: ADMIN_TOKEN,
      FASTPULL_PULL_THROUGH: 'true',
      FASTPULL_UPSTREAMS: `flat=${up.url}`,
      FASTPULL_FETCH_ALLOW_CIDRS: '127.0.0.0/8',
      FASTPULL_SHUTDOWN_GRACE_MS: '2000',
    });
    await until('both workers', () => workerPids(server.output()).length >= 2 || undefined);
  });

  afterAll(async () => {
    if (server.child.exitCode === null) server.child.kill('SIGKILL');
    await up.close();
    await rm(dataDir, { recursive: true, force: true });
  });

  it('logs "listening" once, from the primary, and runs one leader and one follower', () => {
    const out = server.output();
    expect(out.match(/fastpull origin listening/g)).toHaveLength(1);
    const roles = out
      .split('\n')
      .filter((l) => l.includes('"serving process ready"'))
      .map((l) => (JSON.parse(l) as { role: string }).role)
      .sort();
    expect(roles).toEqual(['follower', 'leader']);
  });

  it('serves an upload through every worker, and /metrics adds up all of them', async () => {
    const body = Buffer.from('spread over workers\n');
    const put = await fresh(`${server.baseUrl}/api/v1/distfiles/spread-1.0.tar.gz`, 'PUT', body, {
      authorization: `Bearer ${ADMIN_TOKEN}`,
    });
    expect(put.status).toBe(201);
    const path = `/distfiles/${sha512(body)}`;
    const results = await Promise.all(Array.from({ length: 40 }, () => fresh(`${server.baseUrl}${path}`)));
    for (const r of results) {
      expect(r.status).toBe(200);
      expect(r.body.equals(body)).toBe(true);
    }
    await until('request log lines', () => servingPids(server.output(), path).size >= 2 || undefined, 5_000);
    expect(servingPids(server.output(), path).size).toBe(2);

    // Whichever worker answers /metrics, the count covers both workers' requests.
    for (let i = 0; i < 3; i++) {
      const text = (await fresh(`${server.baseUrl}/metrics`)).body.toString();
      const line = text.split('\n').find((l) => l.startsWith('fastpull_http_requests_total{') && l.includes('kind="hash"') && l.includes('status="200"'));
      expect(line, text).toBeDefined();
      expect(Number(line!.split(' ').pop())).toBeGreaterThanOrEqual(40);
      // Gauges read from the shared index are reported once, not once per worker.
      const blobs = text.split('\n').find((l) => /^fastpull_(blobs_stored|stored_blobs)\b/.test(l));
      if (blobs) expect(Number(blobs.split(' ').pop())).toBe(1);
    }
  });

  it("shows the whole cluster's last hour on the status page, whichever worker answers", async () => {
    // The test above sent an upload and 40 downloads spread over both workers.
    for (let i = 0; i < 3; i++) {
      const status = JSON.parse((await fresh(`${server.baseUrl}/api/v1/status`)).body.toString());
      const minutes = status.traffic.minutes as { requests: number; s2xx: number }[];
      expect(minutes).toHaveLength(60);
      expect(minutes.reduce((n, m) => n + m.s2xx, 0)).toBeGreaterThanOrEqual(41);
    }
  });

  it('100 concurrent misses spread over the workers cause one upstream fetch', async () => {
    const results = await Promise.all(Array.from({ length: 100 }, () => fresh(`${server.baseUrl}/distfiles/pulled-1.0.tar.gz`)));
    const statuses = results.map((r) => r.status);
    expect(statuses.filter((s) => s === 200)).toHaveLength(100);
    for (const r of results) expect(sha512(r.body)).toBe(sha512(pulled));
    expect(upstreamHits).toBe(1);
    await until('request log lines', () => servingPids(server.output(), '/distfiles/pulled-1.0.tar.gz').size >= 2 || undefined, 5_000);
  });

  it('fetch jobs queued through any worker are run (by the leader alone)', async () => {
    const ids: string[] = [];
    for (let i = 1; i <= 4; i++) {
      const res = await fresh(
        `${server.baseUrl}/api/v1/fetches`,
        'POST',
        JSON.stringify({ items: [{ url: `${up.url}/job-${i}.tar.gz`, filename: `job-${i}.tar.gz` }] }),
        { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/json' },
      );
      expect(res.status).toBe(202);
      ids.push((JSON.parse(res.body.toString()) as { id: string }).id);
    }
    for (const id of ids) {
      const state = await until(`job ${id}`, async () => {
        const res = await fresh(`${server.baseUrl}/api/v1/fetches/${id}`, 'GET', undefined, { authorization: `Bearer ${ADMIN_TOKEN}` });
        const job = JSON.parse(res.body.toString()) as { state: string };
        return job.state === 'queued' || job.state === 'running' ? undefined : job.state;
      });
      expect(state).toBe('done');
    }
    for (let i = 1; i <= 4; i++) expect(up.count(`/job-${i}.tar.gz`)).toBe(1);
  });

  it('replaces a serving process that dies, and keeps serving meanwhile', async () => {
    const [victim] = workerPids(server.output());
    process.kill(victim!, 'SIGKILL');
    await until('a replacement worker', () => workerPids(server.output()).length >= 3 || undefined);
    expect(server.output()).toContain('serving process died; starting another');
    const res = await fresh(`${server.baseUrl}/distfiles/spread-1.0.tar.gz`);
    expect(res.status).toBe(200);
  });

  it('SIGTERM stops every serving process and the primary exits 0', async () => {
    const pids = workerPids(server.output()).filter(alive);
    expect(pids.length).toBe(2);
    server.child.kill('SIGTERM');
    expect(await server.exited).toBe(0);
    for (const pid of pids) expect(alive(pid)).toBe(false);
    expect(server.output()).toContain('fastpull origin stopped');
  });
});
