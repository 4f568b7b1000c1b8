import net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TEST_BACKEND } from './helpers/backend.js';
import { content, flipBit, quarantined, sha512, waitFor } from './helpers/integrity.js';
import { get, startTestServer, type TestServer } from './helpers/server.js';

/** One GET over a raw socket, pipelined with a second request: what arrived, and whether the connection survived. */
async function rawGet(baseUrl: string, path: string): Promise<{ head: string; body: Buffer; secondAnswered: boolean }> {
  const { port } = new URL(baseUrl);
  const socket = net.connect(Number(port), '127.0.0.1');
  const chunks: Buffer[] = [];
  await new Promise<void>((resolve) => {
    socket.on('data', (c: Buffer) => chunks.push(c));
    socket.on('close', () => resolve());
    socket.on('error', () => undefined);
    socket.write(`GET ${path} HTTP/1.1\r\nHost: x\r\n\r\nGET /distfiles/layout.conf HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`);
  });
  const all = Buffer.concat(chunks);
  const end = all.indexOf('\r\n\r\n');
  return { head: all.subarray(0, end).toString('latin1'), body: all.subarray(end + 4), secondAnswered: all.includes('[structure]') };
}

describe('FASTPULL_VERIFY_ON_SERVE (issue 7, item 2)', () => {
  let server: TestServer;
  beforeAll(async () => {
    server = await startTestServer({ verifyOnServe: true });
  });
  afterAll(async () => server.stop());

  it('serves good bytes whole, by hash and by name', async () => {
    const data = content('vos-good', 3 * 1024 * 1024 + 5);
    expect((await server.upload('vos-good-1.0.tar.gz', data)).status).toBe(201);
    for (const p of [`/distfiles/${sha512(data)}`, '/distfiles/vos-good-1.0.tar.gz']) {
      const res = await get(server.baseUrl + p);
      expect(res.status, p).toBe(200);
      expect(res.body.equals(data), p).toBe(true);
    }
    // Both full bodies were hashed on their way out, and /metrics says so. On S3 the read path hashes every body
    // itself, whatever this setting, outside the verify-on-serve meter.
    if (TEST_BACKEND !== 'local') return;
    const metrics = (await get(`${server.baseUrl}/metrics`)).body.toString();
    const verified = Number(/^fastpull_served_verified_bytes_total (\d+)/m.exec(metrics)?.[1]);
    expect(verified).toBeGreaterThanOrEqual(2 * data.length);
  });

  it('cuts the connection before the last byte of a damaged body, then quarantines the blob (404)', async () => {
    const size = 4 * 1024 * 1024 + 17;
    const data = content('vos-bad', size);
    const h = sha512(data);
    expect((await server.upload('vos-bad-1.0.tar.gz', data)).status).toBe(201);
    await flipBit(server.dataDir, h, 12345);

    const got = await rawGet(server.baseUrl, `/distfiles/${h}`);
    expect(got.head).toMatch(/^HTTP\/1\.1 200/);
    expect(got.head).toMatch(new RegExp(`content-length: ${size}`, 'i'));
    // Short, and the connection did not live on to answer the pipelined request: no cache can take it as whole.
    expect(got.body.length).toBeLessThan(size);
    expect(got.secondAnswered).toBe(false);

    expect(await waitFor(async () => (await quarantined(server.dataDir, h)).length === 1)).toBe(true);
    for (const p of [`/distfiles/${h}`, '/distfiles/vos-bad-1.0.tar.gz']) expect((await get(server.baseUrl + p)).status, p).toBe(404);
  });

  it('quarantines a damaged small blob too (its bytes are hashed on their way into memory)', async () => {
    const data = content('vos-small', 10 * 1024);
    const h = sha512(data);
    expect((await server.upload('vos-small-1.0.tar.gz', data)).status).toBe(201);
    await flipBit(server.dataDir, h, 77);
    expect((await get(`${server.baseUrl}/distfiles/${h}`)).status).toBe(404);
    expect(await waitFor(async () => (await quarantined(server.dataDir, h)).length === 1)).toBe(true);
  });
});

describe('without FASTPULL_VERIFY_ON_SERVE', () => {
  let server: TestServer;
  beforeAll(async () => {
    server = await startTestServer();
  });
  afterAll(async () => server.stop());

  // Local store only: on S3 the read path hashes every body, so damage is always caught.
  it.skipIf(TEST_BACKEND !== 'local')('is off by default: a large damaged body is sent whole and nothing is quarantined', async () => {
    expect(server.config.verifyOnServe).toBe(false);
    const data = content('vos-off', 2 * 1024 * 1024);
    const h = sha512(data);
    expect((await server.upload('vos-off-1.0.tar.gz', data)).status).toBe(201);
    await flipBit(server.dataDir, h, 999);
    const res = await get(`${server.baseUrl}/distfiles/${h}`);
    expect(res.status).toBe(200);
    expect(res.body.length).toBe(data.length);
    expect((await quarantined(server.dataDir, h))).toHaveLength(0);
  });
});
