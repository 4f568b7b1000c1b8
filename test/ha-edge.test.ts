import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { chmod, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { loadConfig } from '../src/config.js';
import { runCli } from './helpers/cli.js';
import { nginxMissing, startTemplate, type RunningNginx } from './helpers/nginx.js';
import { startServeProcess, type ServeProcess } from './helpers/serve-process.js';
import { haveTool } from './helpers/tools.js';

const TEMPLATE = new URL('../config/nginx-ha.conf', import.meta.url);
const READINESS = fileURLToPath(new URL('../config/nginx-ha-readiness.sh', import.meta.url));
const read = (file: string) => readFile(fileURLToPath(new URL(`../${file}`, import.meta.url)), 'utf8');
const sha512 = (b: Buffer) => createHash('sha512').update(b).digest('hex');
const TOKEN = randomBytes(24).toString('hex');
const curlMissing = !haveTool('/usr/bin/curl', 'curl');

interface Answer {
  status: number;
  body: Buffer;
  /** The origin(s) nginx tried, as it reports them in X-Fastpull-Upstream ("a:1, b:2" after a failover). */
  upstream: string;
}

async function get(url: string, headers: Record<string, string> = {}, method: 'GET' | 'HEAD' = 'GET'): Promise<Answer> {
  // A fresh connection each time: a reload closes the old workers' idle keep-alive connections, and a request
  // sent on one at that moment fails in the client (curl and wget retry it; undici does not).
  const res = await request(url, { method, headers, reset: true });
  const body = Buffer.from(await res.body.arrayBuffer());
  return { status: res.statusCode, body, upstream: String(res.headers['x-fastpull-upstream'] ?? '') };
}

/** Polls until `probe` holds; a deadline far above what the poller needs only turns a hang into a clear failure. */
async function until(what: string, probe: () => Promise<boolean>, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await probe())) {
    if (Date.now() > deadline) throw new Error(`${what}: not reached`);
    await sleep(100);
  }
}

/**
 * The HA edge as the "ha" compose profile runs it: config/nginx-ha.conf under Debian nginx (master + worker, so
 * a reload works) in front of two real `fastpull serve` processes, with config/nginx-ha-readiness.sh following
 * their /readyz. Each origin has its own local store holding the same blob, standing in for the shared bucket.
 */
describe.skipIf(nginxMissing || curlMissing)('HA edge (config/nginx-ha.conf + nginx-ha-readiness.sh)', () => {
  const file = randomBytes(64 * 1024 + 17);
  const hash = sha512(file);
  const dirs: string[] = [];
  const origins: { proc: ServeProcess; dataDir: string; hostPort: string }[] = [];
  let edge: RunningNginx;
  let watcher: ChildProcess | undefined;
  let serversFile: string;
  /** The nginx master's pid file: SIGHUP to that pid is what `nginx -s reload` does in the container. */
  let pidFile = '';
  let readinessEnv: Record<string, string>;

  const hashUrl = () => `${edge.url}/distfiles/${hash.slice(0, 2)}/${hash.slice(2, 4)}/${hash.slice(4, 6)}/${hash}`;
  const servers = () => readFile(serversFile, 'utf8');
  /** Sequential requests (each on whichever keep-alive connection nginx picks): which origins answered. */
  async function spread(n: number): Promise<Map<string, number>> {
    const seen = new Map<string, number>();
    for (let i = 0; i < n; i++) {
      const res = await get(hashUrl());
      expect(res.status, `request ${i} via ${res.upstream}`).toBe(200);
      expect(sha512(res.body)).toBe(hash);
      seen.set(res.upstream, (seen.get(res.upstream) ?? 0) + 1);
    }
    return seen;
  }

  beforeAll(async () => {
    for (const _ of [0, 1]) {
      const dataDir = await mkdtemp(path.join(tmpdir(), 'fastpull-ha-'));
      dirs.push(dataDir);
      const proc = await startServeProcess({ FASTPULL_DATA_DIR: dataDir, FASTPULL_ADMIN_TOKEN: TOKEN, FASTPULL_TRUST_PROXY: '127.0.0.1' });
      origins.push({ proc, dataDir, hostPort: new URL(proc.baseUrl).host });
      const up = await request(`${proc.baseUrl}/api/v1/distfiles/ha-1.0.tar.gz`, {
        method: 'PUT',
        body: file,
        headers: { authorization: `Bearer ${TOKEN}` },
      });
      expect(up.statusCode).toBe(201);
      await up.body.dump();
    }
    // The nginx worker runs unprivileged: the servers file must be readable by it.
    const shared = await mkdtemp(path.join(tmpdir(), 'fastpull-ha-edge-'));
    await chmod(shared, 0o755);
    dirs.push(shared);
    serversFile = path.join(shared, 'origins.conf');
    readinessEnv = {
      PATH: process.env.PATH ?? '',
      FASTPULL_HA_ORIGINS: origins.map((o) => o.hostPort).join(' '),
      FASTPULL_HA_SERVERS_FILE: serversFile,
      FASTPULL_HA_SERVER_PARAMS: 'max_fails=2 fail_timeout=10s',
      FASTPULL_HA_CHECK_SECONDS: '0.2',
    };
    const once = spawnSync('sh', [READINESS, 'once'], { env: readinessEnv, encoding: 'utf8' });
    expect(once.status, once.stderr).toBe(0);
    edge = await startTemplate(
      TEMPLATE,
      (port, dir) => {
        pidFile = path.join(dir, 'nginx.pid');
        return { FASTPULL_HA_LISTEN: `127.0.0.1:${port}`, FASTPULL_HA_SERVERS_FILE: serversFile };
      },
      { worker: true },
    );
    watcher = spawn('sh', [READINESS, 'watch'], {
      env: { ...readinessEnv, FASTPULL_HA_RELOAD: `kill -HUP "$(cat ${pidFile})"` },
      stdio: 'ignore',
    });
  });

  afterAll(async () => {
    watcher?.kill('SIGTERM');
    await edge?.stop();
    for (const o of origins) {
      if (o.proc.child.exitCode === null && o.proc.child.signalCode === null) {
        o.proc.child.kill('SIGTERM');
        await o.proc.exited;
      }
    }
    for (const dir of dirs) await rm(dir, { recursive: true, force: true });
  });

  it('lists every ready origin and sends traffic to both', async () => {
    const list = await servers();
    for (const o of origins) expect(list).toContain(`server ${o.hostPort} max_fails=2 fail_timeout=10s;`);
    expect(list).not.toMatch(/ down;/);
    const seen = await spread(12);
    expect([...seen.keys()].sort()).toEqual(origins.map((o) => o.hostPort).sort());
  });

  it('passes the origins’ own answers through: HEAD, ranges, names, a 404', async () => {
    const head = await get(hashUrl(), {}, 'HEAD');
    expect(head.status).toBe(200);
    const range = await get(hashUrl(), { range: 'bytes=10-19' });
    expect(range.status).toBe(206);
    expect(range.body.equals(file.subarray(10, 20))).toBe(true);
    const byName = await get(`${edge.url}/distfiles/ha-1.0.tar.gz`);
    expect(sha512(byName.body)).toBe(hash);
    expect((await get(`${edge.url}/distfiles/absent-1.0.tar.gz`)).status).toBe(404);
    // A 404 is the origin's answer, not a failure: nginx does not try the other origin for it.
    expect((await get(`${edge.url}/distfiles/absent-2.0.tar.gz`)).upstream).not.toContain(',');
    expect((await get(`${edge.url}/metrics`)).status).toBe(404);
  });

  it('takes a drained origin out of the rotation and puts it back after drain --off', async () => {
    const [a, b] = origins as [(typeof origins)[0], (typeof origins)[0]];
    const drain = await runCli(['drain', '--data-dir', a.dataDir]);
    expect(drain.code, drain.stderr).toBe(0);
    await until('origin A marked down', async () => (await servers()).includes(`server ${a.hostPort} max_fails=2 fail_timeout=10s down;`));
    expect(await servers()).toContain(`server ${b.hostPort} max_fails=2 fail_timeout=10s;`);
    // The reload reaches new connections at once; old workers finish their keep-alive connections first.
    await until('only origin B answers', async () => {
      const seen = await spread(6);
      return seen.size === 1 && seen.has(b.hostPort);
    });
    const seen = await spread(12);
    expect([...seen.keys()]).toEqual([b.hostPort]);

    const off = await runCli(['drain', '--off', '--data-dir', a.dataDir]);
    expect(off.code, off.stderr).toBe(0);
    await until('origin A back in', async () => !(await servers()).includes(' down;'));
    await until('both answer again', async () => (await spread(6)).size === 2);
  });

  it('lists every origin when none is ready: a drained origin still beats a 502', async () => {
    for (const o of origins) expect((await runCli(['drain', '--data-dir', o.dataDir])).code).toBe(0);
    await until('both unready', async () => (await servers()).includes('=down') && !(await servers()).includes('=up'));
    expect(await servers()).not.toMatch(/ down;/);
    expect((await spread(4)).size).toBeGreaterThan(0);
    for (const o of origins) expect((await runCli(['drain', '--off', '--data-dir', o.dataDir])).code).toBe(0);
    await until('both ready', async () => !(await servers()).includes('=down'));
    // The file is written before nginx reloads it: wait until the running configuration uses both again.
    await until('both answer again', async () => (await spread(6)).size === 2);
  });

  it('loses no request while a replica shuts down gracefully (SIGTERM) under load, and takes it back after a restart', async () => {
    const b = origins[1]!;
    let stop = false;
    const answers: Answer[] = [];
    // Four clients in a loop, so requests are in flight on both origins when B stops accepting.
    const clients = Array.from({ length: 4 }, async () => {
      while (!stop) answers.push(await get(hashUrl()));
    });
    await until('requests flowing to B', async () => answers.some((a) => a.upstream === b.hostPort));
    const before = answers.length;
    b.proc.child.kill('SIGTERM');
    expect(await b.proc.exited).toBe(0);
    await until('more requests after B left', async () => answers.length > before + 40);
    stop = true;
    await Promise.all(clients);
    expect(answers.filter((a) => a.status !== 200 || sha512(a.body) !== hash).map((a) => `${a.status} via ${a.upstream}`)).toEqual([]);

    // Same data dir, same port: the edge's list needs no change, the poller sees it ready again.
    const proc = await startServeProcess({
      FASTPULL_DATA_DIR: b.dataDir,
      FASTPULL_ADMIN_TOKEN: TOKEN,
      FASTPULL_TRUST_PROXY: '127.0.0.1',
      FASTPULL_PORT: b.hostPort.split(':')[1]!,
    });
    origins[1] = { ...b, proc };
    await until('both answer again', async () => (await spread(6)).size === 2);
  });

  it('keeps answering when an origin is killed: every request goes to the survivor (passive failover alone)', async () => {
    // The readiness poller is stopped first, so what saves these requests is proxy_next_upstream, not a reload;
    // the list is then written by hand with both origins in, whatever the poller last saw on this busy machine.
    const stopped = new Promise((resolve) => watcher!.once('exit', resolve));
    watcher!.kill('SIGTERM');
    await stopped;
    const [a, b] = origins as [(typeof origins)[0], (typeof origins)[0]];
    await writeFile(serversFile, origins.map((o) => `server ${o.hostPort} max_fails=2 fail_timeout=10s;\n`).join(''));
    process.kill(Number(await readFile(pidFile, 'utf8')), 'SIGHUP');
    await until('both answer under the hand-written list', async () => (await spread(6)).size === 2);
    a.proc.child.kill('SIGKILL');
    await a.proc.exited;
    const seen = await spread(20);
    expect([...seen.keys()].every((u) => u.endsWith(b.hostPort))).toBe(true);
    // Some of them tried the dead origin first and were retried on the other before the client saw anything.
    expect([...seen.keys()].some((u) => u.includes(a.hostPort))).toBe(true);
    // Uploads reach the survivor through the edge too.
    const other = randomBytes(5000);
    const up = await request(`${edge.url}/api/v1/distfiles/ha-2.0.tar.gz`, {
      method: 'PUT',
      body: other,
      headers: { authorization: `Bearer ${TOKEN}` },
    });
    expect(up.statusCode).toBe(201);
    expect(((await up.body.json()) as { sha512: string }).sha512).toBe(sha512(other));
  });
});

/** No Docker engine runs here: what the compose file promises is checked against the files it mounts. */
describe('docker-compose.yml profile "ha"', () => {
  type Service = {
    image?: string;
    build?: unknown;
    profiles?: string[];
    environment?: Record<string, string>;
    volumes?: string[];
    ports?: string[];
    depends_on?: Record<string, { condition: string }>;
    networks?: Record<string, { ipv4_address?: string }> | string[];
    network_mode?: string;
    command?: string[];
  };
  let services: Record<string, Service>;
  const ha = () => Object.entries(services).filter(([, s]) => s.profiles?.includes('ha'));
  /** ${NAME:?…} / ${NAME:-default} as compose fills them, with made-up secrets. */
  const interpolate = (value: string) =>
    value.replace(/\$\{(\w+)(?::[-?]([^}]*))?\}/g, (_all, name: string, rest?: string) => (name.includes('PASSWORD') ? 'pw' : rest && !rest.startsWith('set ') ? rest : `x${name}`));

  beforeAll(async () => {
    services = (parse(await read('docker-compose.yml')) as { services: Record<string, Service> }).services;
  });

  it('leaves the default services as they were and puts every new one in the profile', () => {
    expect(Object.entries(services).filter(([, s]) => !s.profiles).map(([n]) => n)).toEqual(['origin', 'edge']);
    expect(ha().map(([n]) => n).sort()).toEqual(['db', 'edge-ha', 'origin-a', 'origin-b', 's3', 's3-init']);
  });

  it('runs two origins on S3 and PostgreSQL with one set of settings, each with its own data volume', () => {
    const a = services['origin-a']!;
    const b = services['origin-b']!;
    expect(b.environment).toEqual(a.environment);
    expect(a.volumes![0]).not.toEqual(b.volumes![0]);
    const env = Object.fromEntries(Object.entries(a.environment!).map(([k, v]) => [k, interpolate(String(v))]));
    const config = loadConfig({}, env);
    expect(config.storage).toEqual({ kind: 's3', bucket: services['s3-init']!.environment!.FASTPULL_HA_BUCKET, prefix: 'origin' });
    expect(config.s3ForcePathStyle).toBe(true);
    const db = new URL(config.databaseUrl!);
    expect(db.hostname).toBe('db');
    expect(db.pathname).toBe(`/${services.db!.environment!.POSTGRES_DB}`);
    expect(db.username).toBe(services.db!.environment!.POSTGRES_USER);
    expect(new URL(config.s3Endpoint!).hostname).toBe('s3');
    expect(config.cacheDir).toMatch(/^\/data\//);
    // The S3 credentials the origins use are the key s3-init imports.
    expect(a.environment!.AWS_ACCESS_KEY_ID).toBe(services['s3-init']!.environment!.FASTPULL_HA_S3_KEY_ID);
    expect(a.environment!.AWS_SECRET_ACCESS_KEY).toBe(services['s3-init']!.environment!.FASTPULL_HA_S3_SECRET);
    for (const origin of [a, b]) {
      expect(origin.depends_on?.db?.condition).toBe('service_healthy');
      expect(origin.depends_on?.['s3-init']?.condition).toBe('service_completed_successfully');
    }
  });

  it('points the origins at Garage’s S3 port and region, as config/garage.toml sets them', async () => {
    const toml = await read('config/garage.toml');
    const s3Section = toml.slice(toml.indexOf('[s3_api]'));
    const port = /^api_bind_addr = "\[::\]:(\d+)"/m.exec(s3Section)?.[1];
    const region = /^s3_region = "([^"]+)"/m.exec(s3Section)?.[1];
    const env = services['origin-a']!.environment!;
    expect(new URL(env.AWS_ENDPOINT_URL_S3!).port).toBe(port);
    expect(env.AWS_REGION).toBe(region);
    expect(services.s3!.volumes).toContain('./config/garage.toml:/etc/garage.toml:ro');
    expect(services['s3-init']!.volumes).toContain('./config/garage.toml:/etc/garage.toml:ro');
    expect(services['s3-init']!.network_mode).toBe('service:s3');
    expect(services['s3-init']!.command).toEqual(['sh', '/garage-init.sh']);
    expect(services['s3-init']!.volumes).toContain('./config/garage-init.sh:/garage-init.sh:ro');
    // The same RPC secret on the node and on the CLI that sets it up.
    expect(services['s3-init']!.environment!.GARAGE_RPC_SECRET).toBe(services.s3!.environment!.GARAGE_RPC_SECRET);
  });

  it('gives the edge the HA template, the readiness script, and every origin by its service name and port', async () => {
    const edge = services['edge-ha']!;
    expect(edge.volumes).toContain('./config/nginx-ha.conf:/etc/nginx/templates/default.conf.template:ro');
    expect(edge.volumes).toContain('./config/nginx-ha-readiness.sh:/docker-entrypoint.d/40-fastpull-ha-readiness.sh:ro');
    // The image's entrypoint runs only executable files from /docker-entrypoint.d/ (and skips the rest with a notice).
    expect((await stat(READINESS)).mode & 0o111).not.toBe(0);
    const template = await read('config/nginx-ha.conf');
    const placeholders = [...new Set([...template.matchAll(/\$\{(\w+)\}/g)].map((m) => m[1]!))].sort();
    expect(placeholders).toEqual(['FASTPULL_HA_LISTEN', 'FASTPULL_HA_SERVERS_FILE']);
    for (const name of placeholders) expect(edge.environment![name], name).toBeTruthy();
    // Not under conf.d/, which nginx.conf includes at http{} level.
    expect(edge.environment!.FASTPULL_HA_SERVERS_FILE).not.toMatch(/conf\.d/);
    const origins = ha().filter(([, s]) => s.environment?.FASTPULL_STORAGE).map(([name]) => name);
    const port = String(loadConfig({}, {}).port);
    expect(edge.environment!.FASTPULL_HA_ORIGINS!.split(' ').sort()).toEqual(origins.map((n) => `${n}:${port}`).sort());
    expect(edge.environment!.FASTPULL_HA_LISTEN).toBe(port);
    expect(edge.ports!.every((p) => p.endsWith(`:${port}`))).toBe(true);
    for (const name of origins) expect(edge.depends_on?.[name]?.condition).toBe('service_healthy');
    // The origins believe X-Forwarded-For from the edge's fixed address only.
    const address = (edge.networks as Record<string, { ipv4_address?: string }>).fastpull!.ipv4_address!;
    for (const name of origins) {
      expect(loadConfig({}, { FASTPULL_TRUST_PROXY: services[name]!.environment!.FASTPULL_TRUST_PROXY! }).trustProxy).toEqual([`${address}/32`]);
    }
    // Failover as the issue asks: retries on these conditions, and a passive mark-down per origin.
    expect(template).toMatch(/^\s*proxy_next_upstream error timeout http_502 http_503 http_504;$/m);
    expect(edge.environment!.FASTPULL_HA_SERVER_PARAMS).toMatch(/max_fails=\d+ fail_timeout=\d+s/);
  });
});
