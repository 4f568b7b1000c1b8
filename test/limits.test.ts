import { createHash } from 'node:crypto';
import { connect } from 'node:net';
import { Readable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ADMIN_TOKEN, get, startTestServer, type TestServer } from './helpers/server.js';

const sha512 = (b: Buffer | string) => createHash('sha512').update(b).digest('hex');

/** Writes `text` on a raw connection and collects everything until the server closes it. */
function rawExchange(base: string, text: string): Promise<string> {
  const { hostname, port } = new URL(base);
  return new Promise((resolve, reject) => {
    const socket = connect(Number(port), hostname);
    let data = '';
    socket.on('data', (d) => (data += d.toString()));
    socket.on('error', reject);
    socket.on('close', () => resolve(data));
    socket.write(text);
  });
}

describe('limits against slow and oversized clients', () => {
  let server: TestServer;
  beforeAll(async () => {
    server = await startTestServer({ headersTimeoutMs: 400, idleTimeoutMs: 1000, adminRateLimitPerMinute: 0 });
  });
  afterAll(async () => server.stop());

  it('drops a client that never finishes its headers', async () => {
    const { hostname, port } = new URL(server.baseUrl);
    // Never sends the blank line that ends the header block.
    const answer = await rawExchange(server.baseUrl, `GET /healthz HTTP/1.1\r\nHost: ${hostname}:${port}\r\nX-Slow: 1\r\n`);
    expect(answer).toMatch(/^HTTP\/1\.1 408 /);
  });

  it('refuses an oversized header block with 431', async () => {
    const res = await get(`${server.baseUrl}/healthz`, { 'x-big': 'a'.repeat(20 * 1024) });
    expect(res.status).toBe(431);
  });

  it('accepts an upload that trickles for longer than the idle timeout, as long as bytes keep moving', async () => {
    const chunks = Array.from({ length: 12 }, (_, i) => Buffer.from(`chunk ${i} `.repeat(100)));
    const all = Buffer.concat(chunks);
    async function* trickle() {
      for (const c of chunks) {
        yield c;
        await sleep(250);
      }
    }
    const started = Date.now();
    const res = await request(`${server.baseUrl}/api/v1/distfiles/trickle-1.0.tar.gz`, {
      method: 'PUT',
      body: Readable.from(trickle()),
      headers: { authorization: `Bearer ${ADMIN_TOKEN}` },
    });
    const json = (await res.body.json()) as any;
    // Took well over the 1 s idle timeout in total, yet no request-wide timeout cut it.
    expect(Date.now() - started).toBeGreaterThan(2000);
    expect(res.statusCode).toBe(201);
    expect(json.sha512).toBe(sha512(all));
  });

  it('drops an upload that stalls for longer than the idle timeout', async () => {
    const { hostname, port } = new URL(server.baseUrl);
    const answer = await rawExchange(
      server.baseUrl,
      `PUT /api/v1/distfiles/stall-1.0.tar.gz HTTP/1.1\r\nHost: ${hostname}:${port}\r\nAuthorization: Bearer ${ADMIN_TOKEN}\r\nContent-Length: 1000\r\n\r\nonly a few bytes`,
    );
    // The connection is closed without a success; the name never appears.
    expect(answer).not.toMatch(/^HTTP\/1\.1 20/);
    const info = await get(`${server.baseUrl}/api/v1/distfiles/stall-1.0.tar.gz`, { authorization: `Bearer ${ADMIN_TOKEN}` });
    expect(info.status).toBe(404);
  });
});
