import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { countRows, indexCounts, storedBlobs, unfinishedWrites } from './helpers/backend.js';
import { AUTH, pseudoRandomBytes, sha512 } from './helpers/core.js';
import { startTestServer, type TestServer } from './helpers/server.js';

/**
 * A write with a query parameter the endpoint does not know (a misspelt digest) or one given twice
 * must be refused before any byte is stored: otherwise `?sha521=<wrong>` uploads unverified.
 */
describe('strict query strings on write endpoints', () => {
  let server: TestServer;
  beforeAll(async () => {
    server = await startTestServer({ adminRateLimitPerMinute: 0 });
  });
  afterAll(async () => server.stop());

  const body = pseudoRandomBytes(20_000, 7);
  const wrong = sha512('something else');

  async function send(method: 'PUT' | 'POST' | 'DELETE' | 'GET', pathAndQuery: string, payload?: string | Buffer) {
    const res = await request(`${server.baseUrl}/api/v1${pathAndQuery}`, {
      method,
      headers: { ...AUTH, ...(typeof payload === 'string' ? { 'content-type': 'application/json' } : {}) },
      ...(payload !== undefined ? { body: payload } : {}),
    });
    const text = await res.body.text();
    return { status: res.statusCode, json: text ? JSON.parse(text) : undefined };
  }

  it.each([
    ['sha521', `sha521=${wrong}`],
    ['SHA512', `SHA512=${wrong}`],
    ['sha512[]', `sha512%5B%5D=${wrong}`],
    ['sha512[]', `sha512[]=${wrong}`],
    ['sha_512', `sha_512=${wrong}`],
    ['cachebust', 'cachebust=1'],
    ['size', `size=${body.length}&size=${body.length}`],
    ['sha512', `sha512=${sha512(body)}&sha512=${wrong}`],
  ])('PUT by name refuses %s (%s) with 400 BAD_QUERY and stores nothing', async (parameter, query) => {
    const res = await send('PUT', `/distfiles/q-1.0.tar.gz?${query}`, body);
    expect(res.status).toBe(400);
    expect(res.json.error).toBe('BAD_QUERY');
    expect(res.json.parameter).toBe(parameter);
    expect(res.json.message).toContain(parameter);
    expect((await indexCounts(server))).toEqual({ blobs: 0, names: 0 });
    expect(await storedBlobs(server)).toEqual([]);
    expect(await unfinishedWrites(server)).toEqual([]);
  });

  it('refuses unknown parameters on every other write endpoint, naming them, and changes nothing', async () => {
    const byHash = await send('PUT', `/blobs/${sha512(body)}?sha521=${wrong}`, body);
    expect([byHash.status, byHash.json.error, byHash.json.parameter]).toEqual([400, 'BAD_QUERY', 'sha521']);
    const link = await send('POST', '/links?force=1', JSON.stringify({ filename: 'l-1.tar.gz', sha512: sha512(body) }));
    expect([link.status, link.json.error, link.json.parameter]).toEqual([400, 'BAD_QUERY', 'force']);
    const del = await send('DELETE', '/distfiles/q-1.0.tar.gz?all=true');
    expect([del.status, del.json.error, del.json.parameter]).toEqual([400, 'BAD_QUERY', 'all']);
    const job = await send('POST', '/fetches?dryRun=1', JSON.stringify({ items: [{ url: 'http://example.invalid/x.tgz', filename: 'x.tgz' }] }));
    expect([job.status, job.json.error, job.json.parameter]).toEqual([400, 'BAD_QUERY', 'dryRun']);
    expect((await indexCounts(server))).toEqual({ blobs: 0, names: 0 });
    expect(await countRows(server, 'fetch_jobs')).toBe(0);
  });

  it('still accepts the documented parameters, and reads still tolerate cache-busters', async () => {
    const ok = await send('PUT', `/distfiles/q-1.0.tar.gz?size=${body.length}&sha512=${sha512(body)}`, body);
    expect(ok.status).toBe(201);
    const mismatch = await send('PUT', `/distfiles/q-2.0.tar.gz?sha512=${wrong}`, body);
    expect([mismatch.status, mismatch.json.error]).toEqual([422, 'DIGEST_MISMATCH']);
    expect((await send('GET', `/distfiles/q-1.0.tar.gz?_=${Date.now()}`)).status).toBe(200);
    expect((await send('GET', `/blobs/${sha512(body)}?x=1&x=2`)).status).toBe(200);
    const download = await request(`${server.baseUrl}/distfiles/q-1.0.tar.gz?cachebust=1&cachebust=2`);
    expect(download.statusCode).toBe(200);
    expect(sha512(Buffer.from(await download.body.arrayBuffer()))).toBe(sha512(body));
  });
});
