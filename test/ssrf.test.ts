import { createServer } from 'node:net';
import type { AddressInfo } from 'node:net';
import { request } from 'undici';
import { afterEach, describe, expect, it } from 'vitest';
import { loadConfig } from '../src/config.js';
import { AddressPolicy } from '../src/upstream/address-guard.js';
import { storedBlobs } from './helpers/backend.js';
import { ADMIN_TOKEN, get, startTestServer, type TestServer } from './helpers/server.js';
import { bytes, serve, sha512, sleep, startUpstream, type Upstream } from './helpers/upstream.js';

const cleanup: (() => Promise<void>)[] = [];
afterEach(async () => {
  while (cleanup.length) await cleanup.pop()!();
});

async function upstream(routes: Parameters<typeof startUpstream>[0], host?: string): Promise<Upstream> {
  const up = await startUpstream(routes, host);
  cleanup.push(() => up.close());
  return up;
}

async function origin(overrides: Parameters<typeof startTestServer>[0] = {}): Promise<TestServer> {
  const s = await startTestServer({ fetchRetries: 0, adminRateLimitPerMinute: 0, ...overrides });
  cleanup.push(() => s.stop());
  return s;
}

async function fetchJob(s: TestServer, items: { url: string; filename: string }[]): Promise<any> {
  const res = await request(`${s.baseUrl}/api/v1/fetches`, {
    method: 'POST',
    headers: { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/json' },
    body: JSON.stringify({ items }),
  });
  expect(res.statusCode).toBe(202);
  const { id } = (await res.body.json()) as { id: string };
  for (let i = 0; i < 400; i++) {
    const view = await request(`${s.baseUrl}/api/v1/fetches/${id}`, { headers: { authorization: `Bearer ${ADMIN_TOKEN}` } });
    const job = (await view.body.json()) as any;
    if (job.counts.done + job.counts.failed === job.counts.total) return job;
    await sleep(25);
  }
  throw new Error('job did not settle');
}

/** A port on which nothing listens (bound, then closed). */
async function closedPort(): Promise<number> {
  const srv = createServer();
  await new Promise<void>((resolve) => srv.listen(0, '127.0.0.1', resolve));
  const { port } = srv.address() as AddressInfo;
  await new Promise<void>((resolve) => srv.close(() => resolve()));
  return port;
}

describe('outbound address guard (SSRF)', () => {
  it('by default refuses loopback in every spelling, the origin itself, and says only "address not allowed"', async () => {
    const data = bytes(3000, 11);
    const up = await upstream({ '/x.tgz': serve(data) });
    const s = await origin();
    const port = new URL(up.url).port;
    const dead = await closedPort();
    const urls = [
      `http://127.0.0.1:${port}/x.tgz`,
      `http://localhost:${port}/x.tgz`,
      `http://0x7f000001:${port}/x.tgz`,
      `http://2130706433:${port}/x.tgz`,
      `http://127.1:${port}/x.tgz`,
      `http://[::1]:${port}/x.tgz`,
      `http://[::ffff:127.0.0.1]:${port}/x.tgz`,
      `http://0.0.0.0:${port}/x.tgz`,
      `${s.baseUrl}/metrics`,
      `http://127.0.0.1:${dead}/x.tgz`,
    ];
    const job = await fetchJob(
      s,
      urls.map((url, i) => ({ url, filename: `x-${i}.tgz` })),
    );
    expect(job.counts.failed).toBe(urls.length);
    for (const item of job.items) {
      // The same words for an open port, a closed one and the origin itself: nothing to scan with.
      expect(item.reason, item.url).toMatch(/address not allowed/);
      expect(item.reason).not.toMatch(/refused|reset|timeout/i);
    }
    expect(up.requests).toEqual([]);
    expect(await storedBlobs(s)).toEqual([]);
  });

  it('checks every redirect hop: an allowed host redirecting to a refused one is not followed', async () => {
    const data = bytes(3000, 12);
    const inside = await upstream({ '/secret.tgz': serve(data) });
    const outside = await upstream(
      {
        '/bounce.tgz': (_req, res) => {
          res.writeHead(302, { location: `${inside.url}/secret.tgz` }).end();
        },
      },
      '127.0.0.2',
    );
    // Only the "outside" host is allowed; the redirect target 127.0.0.1 is not.
    const s = await origin({ fetchAllowCidrs: ['127.0.0.2/32'] });
    const job = await fetchJob(s, [{ url: `${outside.url}/bounce.tgz`, filename: 'bounce.tgz' }]);
    expect(job.counts.failed).toBe(1);
    expect(job.items[0].reason).toMatch(/address not allowed/);
    expect(outside.count('/bounce.tgz')).toBe(1);
    expect(inside.requests).toEqual([]);
    expect(await storedBlobs(s)).toEqual([]);
  });

  it('pull-through does not reach a loopback mirror unless it is allowed', async () => {
    const data = bytes(3000, 13);
    const up = await upstream({ '/p-1.tgz': serve(data) });
    const refused = await origin({ pullThrough: true, upstreams: [{ kind: 'flat', url: up.url }] });
    expect((await get(`${refused.baseUrl}/distfiles/p-1.tgz`)).status).toBe(404);
    expect(up.requests).toEqual([]);

    const allowed = await origin({ pullThrough: true, upstreams: [{ kind: 'flat', url: up.url }], fetchAllowCidrs: ['127.0.0.0/8'] });
    const res = await get(`${allowed.baseUrl}/distfiles/p-1.tgz`);
    expect(res.status).toBe(200);
    expect(sha512(res.body)).toBe(sha512(data));
  });

  it('classifies addresses: non-public ranges and their IPv6 embeddings are refused, public ones allowed', () => {
    const policy = new AddressPolicy();
    const refused = [
      '127.0.0.1', '127.255.255.254', '10.1.2.3', '172.16.0.1', '172.31.255.255', '192.168.1.1', '100.64.0.1',
      '100.127.255.255', '169.254.169.254', '0.0.0.0', '224.0.0.1', '255.255.255.255', '::', '::1', 'fc00::1',
      'fd12:3456::1', 'fe80::1', 'fe80::1%lo', 'ff02::1', '::ffff:127.0.0.1', '::ffff:7f00:1', '::ffff:169.254.169.254',
      '::ffff:0.0.0.0', '::127.0.0.1', '64:ff9b::a00:1', '2002:7f00:1::1', '0:0:0:0:0:ffff:c0a8:101',
    ];
    const allowed = ['8.8.8.8', '1.1.1.1', '100.63.255.255', '100.128.0.0', '172.32.0.1', '2001:4860:4860::8888', '::ffff:8.8.8.8', '2606:4700::1111'];
    for (const a of refused) expect(policy.allows(a), a).toBe(false);
    for (const a of allowed) expect(policy.allows(a), a).toBe(true);
    const open = new AddressPolicy(['127.0.0.0/8', '::1/128', '10.0.0.0/8']);
    for (const a of ['127.0.0.1', '::1', '::ffff:127.0.0.1', '10.9.9.9']) expect(open.allows(a), a).toBe(true);
    for (const a of ['169.254.169.254', '192.168.1.1', 'fd00::1']) expect(open.allows(a), a).toBe(false);
  });

  it('parses FASTPULL_FETCH_ALLOW_CIDRS and names the variable when an entry is wrong', () => {
    expect(loadConfig({}, { FASTPULL_FETCH_ALLOW_CIDRS: ' 127.0.0.0/8, ::1/128 ,10.0.0.1' }).fetchAllowCidrs).toEqual([
      '127.0.0.0/8',
      '::1/128',
      '10.0.0.1/32',
    ]);
    expect(loadConfig({}, {}).fetchAllowCidrs).toEqual([]);
    for (const bad of ['127.0.0.0/33', 'localhost', '10.0.0.0/8,fe80::/129', '1.2.3.4/x']) {
      expect(() => loadConfig({}, { FASTPULL_FETCH_ALLOW_CIDRS: bad }), bad).toThrow(/FASTPULL_FETCH_ALLOW_CIDRS/);
    }
  });
});
