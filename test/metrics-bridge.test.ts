import { createServer, type Server as HttpServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { get, startTestServer, type TestServer } from './helpers/server.js';
import { metric, parseMetrics } from './helpers/prom.js';
import { LOOPBACK_CIDRS } from './helpers/upstream.js';

/** Counters kept outside the Prometheus registry (spider, storage guard) must still reach /metrics. */
describe('metrics fed by the spider and the storage guard', () => {
  const cleanups: (() => Promise<void>)[] = [];
  afterEach(async () => {
    while (cleanups.length) await cleanups.pop()!();
  });

  async function scrape(server: TestServer) {
    const res = await get(`${server.baseUrl}/metrics`);
    expect(res.status).toBe(200);
    return parseMetrics(res.body.toString());
  }

  it('counts a pull-through hit and a miss', async () => {
    const upstream: HttpServer = createServer((req, res) => {
      if (req.url === '/present-1.0.tar.gz') res.end('bytes from upstream\n');
      else res.writeHead(404).end();
    });
    await new Promise<void>((resolve) => upstream.listen(0, '127.0.0.1', resolve));
    cleanups.push(() => new Promise((resolve) => upstream.close(() => resolve())));
    const { port } = upstream.address() as AddressInfo;
    const server = await startTestServer({
      pullThrough: true,
      upstreams: [{ kind: 'flat', url: `http://127.0.0.1:${port}` }],
      fetchAllowCidrs: LOOPBACK_CIDRS,
    });
    cleanups.push(() => server.stop());

    const before = await scrape(server);
    expect(metric(before, 'fastpull_pull_through_total', { result: 'hit' })).toBe(0);

    const hit = await get(`${server.baseUrl}/distfiles/present-1.0.tar.gz`);
    expect(hit.status).toBe(200);
    expect(hit.body.toString()).toBe('bytes from upstream\n');
    const miss = await get(`${server.baseUrl}/distfiles/absent-1.0.tar.gz`);
    expect(miss.status).toBe(404);

    const after = await scrape(server);
    expect(metric(after, 'fastpull_pull_through_total', { result: 'hit' })).toBe(1);
    expect(metric(after, 'fastpull_pull_through_total', { result: 'miss' })).toBe(1);
    // The hit was one upstream download read to its end; the miss was a 404.
    expect(metric(after, 'fastpull_upstream_fetch_duration_seconds_count', { result: 'complete' })).toBe(1);
    expect(metric(after, 'fastpull_upstream_fetch_duration_seconds_count', { result: 'not-found' })).toBe(1);
  });

  it('counts uploads refused above the high watermark', async () => {
    const server = await startTestServer({ highWatermarkBytes: 30 });
    cleanups.push(() => server.stop());
    expect((await server.upload('first.tar.gz', 'more than ten bytes of data')).status).toBe(201);
    // 27 bytes stored + 12 more would cross 30.
    const refused = await server.upload('second.tar.gz', 'another file');
    expect(refused.status).toBe(507);
    expect(refused.json.error).toBe('INSUFFICIENT_STORAGE');

    const samples = await scrape(server);
    expect(metric(samples, 'fastpull_storage_refusals_total', { reason: 'watermark' })).toBe(1);
  });
});
