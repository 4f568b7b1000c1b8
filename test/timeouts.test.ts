import { randomBytes } from 'node:crypto';
import { rm } from 'node:fs/promises';
import { connect, type Socket } from 'node:net';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../src/config.js';
import { serverTimeoutOptions } from '../src/http/ops.js';
import { startServer, type Server } from '../src/server.js';
import { metric, parseMetrics } from './helpers/prom.js';
import { captureLogs } from './helpers/log-capture.js';
import { makeDataDir } from './helpers/server.js';

const TOKEN = 'timeouts-test-token-0123456789';
const HEADERS_TIMEOUT_MS = 2_000;
const IDLE_TIMEOUT_MS = 2_000;

/**
 * Timeouts must fire at their configured values, not at a multiple of them. These are behaviour
 * checks with short configured values and wide windows (configured ± 1.5 s), not performance.
 */
describe('connection timeouts fire at their configured values', () => {
  let server: Server;
  let dataDir: string;
  const logs = captureLogs();
  /** When the server side of each connection closed, by the client's local port. */
  const closedAt = new Map<number, number>();

  beforeAll(async () => {
    dataDir = await makeDataDir();
    const config = loadConfig(
      {
        host: '127.0.0.1',
        port: 0,
        adminToken: TOKEN,
        dataDir,
        headersTimeoutMs: HEADERS_TIMEOUT_MS,
        idleTimeoutMs: IDLE_TIMEOUT_MS,
        adminRateLimitPerMinute: 0,
      },
      {},
    );
    server = await startServer(config, { logger: logs.logger });
    server.app.server.on('connection', (socket: Socket) => {
      const port = socket.remotePort!;
      socket.once('close', () => closedAt.set(port, Date.now()));
    });
  });
  afterAll(async () => {
    await server.close();
    await rm(dataDir, { recursive: true, force: true });
  });

  const { hostname, port } = { hostname: '127.0.0.1', port: () => Number(new URL(server.url).port) };

  async function serverClosed(socket: Socket): Promise<number> {
    const local = socket.localPort!;
    for (let i = 0; i < 200 && !closedAt.has(local); i++) await new Promise((r) => setTimeout(r, 50));
    return closedAt.get(local)!;
  }

  it('cuts a slowloris client (one header byte every 100 ms) at the headers timeout, with 408', async () => {
    const socket = connect(port(), hostname);
    let answer = '';
    socket.on('data', (d) => (answer += d.toString()));
    socket.on('error', () => undefined);
    await new Promise((r) => socket.once('connect', r));
    const started = Date.now();
    const text = `GET /healthz HTTP/1.1\r\nHost: ${hostname}\r\nX-Slow: ${'a'.repeat(200)}`;
    let i = 0;
    const drip = setInterval(() => {
      if (socket.destroyed || i >= text.length) return clearInterval(drip);
      socket.write(text[i++]!);
    }, 100);
    const closed = await serverClosed(socket);
    clearInterval(drip);
    socket.destroy();
    expect(closed - started).toBeGreaterThan(HEADERS_TIMEOUT_MS - 500);
    // Node checks this timeout on an interval; it must not add more than a second (it added 10 s at 20 s).
    expect(closed - started).toBeLessThan(HEADERS_TIMEOUT_MS + 1_000);
    expect(answer).toMatch(/^HTTP\/1\.1 408 /);
  });

  it('drops a download whose client stopped reading after the idle timeout, not twice that', async () => {
    const data = randomBytes(24 * 1024 * 1024);
    const up = await request(`${server.url}/api/v1/distfiles/big-1.0.bin`, {
      method: 'PUT',
      body: data,
      headers: { authorization: `Bearer ${TOKEN}` },
    });
    expect(up.statusCode).toBe(201);
    await up.body.dump();

    const socket = connect(port(), hostname);
    socket.on('error', () => undefined);
    await new Promise((r) => socket.once('connect', r));
    // Read the first bytes, then stop reading: the socket buffers fill and the server's writes stall.
    socket.write(`GET /distfiles/big-1.0.bin HTTP/1.1\r\nHost: ${hostname}\r\n\r\n`);
    await new Promise((r) => socket.once('data', r));
    socket.pause();
    const stalled = Date.now();
    const closed = await serverClosed(socket);
    socket.destroy();
    expect(closed - stalled).toBeGreaterThan(IDLE_TIMEOUT_MS - 500);
    expect(closed - stalled).toBeLessThan(IDLE_TIMEOUT_MS + 1_500);
    const line = await logs.waitFor((l) => l.url === '/distfiles/big-1.0.bin' && l.aborted !== undefined);
    expect(line.aborted).toBe('idle-timeout');
  });

  it('logs and counts an upload that stalls as cut by the idle timeout (408), not as a 200', async () => {
    const socket = connect(port(), hostname);
    socket.on('data', () => undefined);
    socket.on('error', () => undefined);
    await new Promise((r) => socket.once('connect', r));
    const started = Date.now();
    // A real slow uploader: declares 100 kB, sends a little, a little more, then nothing.
    socket.write(
      `PUT /api/v1/distfiles/stalled-1.0.tar.gz HTTP/1.1\r\nHost: ${hostname}\r\nAuthorization: Bearer ${TOKEN}\r\nContent-Length: 100000\r\n\r\n`,
    );
    socket.write(Buffer.alloc(1000, 1));
    await new Promise((r) => setTimeout(r, 300));
    socket.write(Buffer.alloc(1000, 2));
    const closed = await serverClosed(socket);
    socket.destroy();
    expect(closed - started).toBeLessThan(IDLE_TIMEOUT_MS + 300 + 1_500);
    const line = await logs.waitFor((l) => l.msg === 'request' && l.url === '/api/v1/distfiles/stalled-1.0.tar.gz');
    expect(line.status).toBe(408);
    expect(line.aborted).toBe('idle-timeout');
    expect(logs.lines.some((l) => l.msg === 'client closed the connection' && l.reqId === line.reqId)).toBe(false);

    const scrape = await request(`${server.url}/metrics`);
    const samples = parseMetrics(await scrape.body.text());
    expect(metric(samples, 'fastpull_uploads_total', { status: '408', code: 'REQUEST_TIMEOUT' })).toBe(1);
    const info = await request(`${server.url}/api/v1/distfiles/stalled-1.0.tar.gz`, { headers: { authorization: `Bearer ${TOKEN}` } });
    expect(info.statusCode).toBe(404);
    await info.body.dump();
  });

  it('checks the headers timeout often enough for the production value to hold within a second', () => {
    for (const headersTimeoutMs of [20_000, 60_000, 2_000, 300]) {
      const options = serverTimeoutOptions(loadConfig({ headersTimeoutMs }, {}));
      expect(options.http?.headersTimeout).toBe(headersTimeoutMs);
      expect(options.http?.connectionsCheckingInterval, String(headersTimeoutMs)).toBeLessThanOrEqual(1_000);
    }
  });
});
