import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { metric, parseMetrics } from './helpers/prom.js';
import { get, startTestServer, type TestServer } from './helpers/server.js';
import { LOOPBACK_CIDRS } from './helpers/upstream.js';

/** A loopback port nothing listens on: connections are refused at once. */
async function deadPort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((resolve) => s.listen(0, '127.0.0.1', resolve));
  const { port } = s.address() as AddressInfo;
  await new Promise<void>((resolve) => s.close(() => resolve()));
  return port;
}

describe('upstream mirrors on the status API and in /metrics', () => {
  let server: TestServer;
  let port: number;
  beforeAll(async () => {
    port = await deadPort();
    server = await startTestServer({
      pullThrough: true,
      upstreams: [{ kind: 'flat', url: `http://mirror-user:mirror-secret@127.0.0.1:${port}/private` }],
      upstreamFailureThreshold: 1,
      upstreamCooldownSeconds: 3600,
      fetchRetries: 0,
      // Loopback stands in for the internet here; without this the guard refuses it before connecting.
      fetchAllowCidrs: LOOPBACK_CIDRS,
    });
  });
  afterAll(async () => server?.stop());

  it('show the breaker closed, then open after the mirror fails, without its credentials', async () => {
    const before = JSON.parse((await get(`${server.baseUrl}/api/v1/status`)).body.toString());
    expect(before.upstreams).toEqual({
      pullThrough: true,
      mirrors: [{ kind: 'flat', host: `127.0.0.1:${port}`, breakerOpen: false, failures: 0 }],
    });
    let text = (await get(`${server.baseUrl}/metrics`)).body.toString();
    const labels = { mirror: `http://127.0.0.1:${port}/private`, kind: 'flat' };
    expect(metric(parseMetrics(text), 'fastpull_upstream_breaker_open', labels)).toBe(0);

    expect((await get(`${server.baseUrl}/distfiles/wanted-1.0.tar.gz`)).status).toBe(404);

    const res = await get(`${server.baseUrl}/api/v1/status`);
    const after = JSON.parse(res.body.toString());
    expect(after.upstreams.mirrors).toEqual([{ kind: 'flat', host: `127.0.0.1:${port}`, breakerOpen: true, failures: 0 }]);
    text = (await get(`${server.baseUrl}/metrics`)).body.toString();
    const samples = parseMetrics(text);
    expect(metric(samples, 'fastpull_upstream_breaker_open', labels)).toBe(1);
    expect(metric(samples, 'fastpull_upstream_fetch_duration_seconds_count', { result: 'network' })).toBe(1);
    for (const body of [res.body.toString(), text]) {
      expect(body).not.toContain('mirror-secret');
      expect(body).not.toContain('mirror-user');
    }
  });
});
