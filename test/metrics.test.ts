import { createHash, randomBytes } from 'node:crypto';
import { statfs } from 'node:fs/promises';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseMetrics, metric, type Sample } from './helpers/prom.js';
import { ADMIN_TOKEN, get, startTestServer, type TestServer } from './helpers/server.js';

const sha512 = (b: Buffer | string) => createHash('sha512').update(b).digest('hex');

async function scrape(url: string): Promise<Sample[]> {
  const res = await get(url);
  expect(res.status).toBe(200);
  expect(res.headers['content-type']).toMatch(/^text\/plain; version=0\.0\.4/);
  return parseMetrics(res.body.toString());
}

describe('metrics on the main port', () => {
  let server: TestServer;
  beforeAll(async () => {
    server = await startTestServer();
  });
  afterAll(async () => server.stop());

  it('moves request, byte, upload, ingest and lookup counters and reads gauges from the index and disk', async () => {
    const url = `${server.baseUrl}/metrics`;
    const body = randomBytes(200_000);
    const hash = sha512(body);
    const before = await scrape(url);
    expect(metric(before, 'fastpull_stored_blobs')).toBe(0);

    const up = await server.upload('big-1.0.tar.gz', body);
    expect(up.status).toBe(201);
    const again = await server.upload('big-1.0.tar.gz', body);
    expect(again.status).toBe(200);
    // A wrong declared hash is only found after the body was read, so ingest itself counts the failure.
    const bad = await server.upload('bad-1.0.tar.gz', 'abc', { sha512: '0'.repeat(128) });
    expect(bad.status).toBe(422);

    const dl = await get(`${server.baseUrl}/distfiles/${hash.slice(0, 2)}/${hash.slice(2, 4)}/${hash.slice(4, 6)}/${hash}`);
    expect(dl.status).toBe(200);
    expect(sha512(dl.body)).toBe(hash);
    const ranged = await get(`${server.baseUrl}/distfiles/big-1.0.tar.gz`, { range: 'bytes=199000-' });
    expect(ranged.status).toBe(206);
    expect(ranged.body.length).toBe(1000);
    const missing = await get(`${server.baseUrl}/${'0'.repeat(128)}`);
    expect(missing.status).toBe(404);
    const layout = await get(`${server.baseUrl}/distfiles/layout.conf`);
    expect(layout.status).toBe(200);

    const after = await scrape(url);
    const delta = (name: string, labels: Record<string, string> = {}) =>
      metric(after, name, labels) - metric(before, name, labels);

    expect(delta('fastpull_http_requests_total', { kind: 'hash', status: '200' })).toBe(1);
    expect(delta('fastpull_http_requests_total', { kind: 'hash', status: '404' })).toBe(1);
    expect(delta('fastpull_http_requests_total', { kind: 'name', status: '206' })).toBe(1);
    expect(delta('fastpull_http_requests_total', { kind: 'layout', status: '200' })).toBe(1);
    expect(delta('fastpull_http_requests_total', { kind: 'api', status: '201' })).toBe(1);
    expect(delta('fastpull_http_requests_total', { kind: 'api', status: '422' })).toBe(1);

    // Wire bytes: the body plus a header block, never less than the body, never a second copy.
    const hashBytes = delta('fastpull_http_response_bytes_total', { kind: 'hash' });
    expect(hashBytes).toBeGreaterThanOrEqual(body.length);
    expect(hashBytes).toBeLessThan(body.length + 4096);
    const nameBytes = delta('fastpull_http_response_bytes_total', { kind: 'name' });
    expect(nameBytes).toBeGreaterThanOrEqual(1000);
    expect(nameBytes).toBeLessThan(1000 + 4096);

    expect(delta('fastpull_uploads_total', { status: '201', code: 'OK' })).toBe(1);
    expect(delta('fastpull_uploads_total', { status: '200', code: 'OK' })).toBe(1);
    expect(delta('fastpull_uploads_total', { status: '422', code: 'DIGEST_MISMATCH' })).toBe(1);
    expect(delta('fastpull_ingests_total', { result: 'created' })).toBe(1);
    expect(delta('fastpull_ingests_total', { result: 'existing' })).toBe(1);
    expect(delta('fastpull_ingests_total', { result: 'DIGEST_MISMATCH' })).toBe(1);
    expect(delta('fastpull_ingested_bytes_total', { result: 'created' })).toBe(body.length);
    expect(delta('fastpull_ingested_bytes_total', { result: 'existing' })).toBe(body.length);

    expect(delta('fastpull_index_lookups_total', { by: 'hash', result: 'hit' })).toBe(1);
    expect(delta('fastpull_index_lookups_total', { by: 'hash', result: 'miss' })).toBe(1);
    expect(delta('fastpull_index_lookups_total', { by: 'name', result: 'hit' })).toBe(1);

    expect(metric(after, 'fastpull_stored_blobs')).toBe(1);
    expect(metric(after, 'fastpull_stored_blob_bytes')).toBe(body.length);
    expect(metric(after, 'fastpull_quarantined_blobs')).toBe(0);
    // One upload, one re-upload of the same bytes under the same name: nothing shared between names yet.
    expect(metric(after, 'fastpull_dedup_saved_bytes')).toBe(0);
    expect(metric(after, 'fastpull_attached_names')).toBe(1);
    // The deprecated names still carry the same values.
    expect(metric(after, 'fastpull_blobs_stored')).toBe(1);
    expect(metric(after, 'fastpull_blob_bytes_stored')).toBe(body.length);

    // Durations: one observation per response, in the histogram of its kind and status class.
    for (const [kind, cls, n] of [['hash', '2xx', 1], ['hash', '4xx', 1], ['name', '2xx', 1], ['layout', '2xx', 1], ['api', '2xx', 2], ['api', '4xx', 1]] as const) {
      for (const h of ['fastpull_http_request_duration_seconds', 'fastpull_http_time_to_first_byte_seconds']) {
        const labels = { kind, status_class: cls };
        expect(delta(`${h}_count`, labels), `${h} ${kind} ${cls}`).toBe(n);
        // Every observation lands in the +Inf bucket; the smallest bucket is 100 µs.
        expect(delta(`${h}_bucket`, { ...labels, le: '+Inf' })).toBe(n);
        expect(after.some((x) => x.name === `${h}_bucket` && x.labels.le === '0.0001' && x.labels.kind === kind)).toBe(true);
        expect(after.some((x) => x.name === `${h}_bucket` && x.labels.le === '3600' && x.labels.kind === kind)).toBe(true);
      }
    }
    // The first byte comes no later than the last.
    expect(metric(after, 'fastpull_http_time_to_first_byte_seconds_sum', { kind: 'hash', status_class: '2xx' })).toBeLessThanOrEqual(
      metric(after, 'fastpull_http_request_duration_seconds_sum', { kind: 'hash', status_class: '2xx' }),
    );
    expect(delta('fastpull_ingest_duration_seconds_count', { result: 'created' })).toBe(1);
    expect(delta('fastpull_ingest_duration_seconds_count', { result: 'existing' })).toBe(1);
    expect(delta('fastpull_ingest_duration_seconds_count', { result: 'DIGEST_MISMATCH' })).toBe(1);

    // prom-client's process and Node.js metrics.
    for (const name of ['process_open_fds', 'process_resident_memory_bytes', 'nodejs_eventloop_lag_seconds', 'nodejs_eventloop_lag_p99_seconds', 'nodejs_heap_size_used_bytes']) {
      expect(after.some((x) => x.name === name), name).toBe(true);
    }
    const fs = await statfs(server.dataDir);
    const free = metric(after, 'fastpull_disk_free_bytes');
    // Other processes write to the same disk meanwhile: same order of magnitude is what can be asserted.
    expect(free).toBeGreaterThan(0);
    expect(Math.abs(free - fs.bavail * fs.bsize)).toBeLessThan(fs.blocks * fs.bsize * 0.05);
  });

  it('exports the counters other subsystems increment', async () => {
    server.metrics.pullThrough.labels('hit').inc();
    server.metrics.pullThrough.labels('failure').inc(2);
    server.metrics.fetchItems.labels('done').inc(3);
    server.metrics.storageRefusals.labels('watermark').inc();
    const s = await scrape(`${server.baseUrl}/metrics`);
    expect(metric(s, 'fastpull_pull_through_total', { result: 'hit' })).toBe(1);
    expect(metric(s, 'fastpull_pull_through_total', { result: 'failure' })).toBe(2);
    expect(metric(s, 'fastpull_fetch_items_total', { result: 'done' })).toBe(3);
    expect(metric(s, 'fastpull_storage_refusals_total', { reason: 'watermark' })).toBe(1);
  });

  it('keeps each server on its own registry', async () => {
    const other = await startTestServer();
    try {
      const s = await scrape(`${other.baseUrl}/metrics`);
      expect(metric(s, 'fastpull_pull_through_total', { result: 'hit' })).toBe(0);
      expect(metric(s, 'fastpull_http_requests_total', { kind: 'hash', status: '200' })).toBe(0);
    } finally {
      await other.stop();
    }
  });
});

describe('metrics on a separate port', () => {
  let server: TestServer;
  beforeAll(async () => {
    server = await startTestServer({ metricsPort: 0 });
  });
  afterAll(async () => server.stop());

  it('serves /metrics only on the metrics port', async () => {
    expect(server.metricsUrl).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
    expect(server.metricsUrl).not.toBe(server.baseUrl);
    const main = await get(`${server.baseUrl}/metrics`);
    expect(main.status).toBe(404);
    expect(JSON.parse(main.body.toString()).error).toBe('NOT_FOUND');

    const res = await request(`${server.baseUrl}/api/v1/distfiles/x-1.tar.gz`, {
      method: 'PUT',
      body: 'x',
      headers: { authorization: `Bearer ${ADMIN_TOKEN}` },
    });
    await res.body.dump();
    expect(res.statusCode).toBe(201);
    const s = await scrape(`${server.metricsUrl}/metrics`);
    expect(metric(s, 'fastpull_uploads_total', { status: '201', code: 'OK' })).toBe(1);
    // The main port's 404 for /metrics was counted like any other request.
    expect(metric(s, 'fastpull_http_requests_total', { kind: 'other', status: '404' })).toBe(1);
    const other = await get(`${server.metricsUrl}/healthz`);
    expect(other.status).toBe(404);
  });
});
