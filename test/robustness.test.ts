import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { indexCounts } from './helpers/backend.js';
import { AUTH, errorBody, rawRequest, sha512 } from './helpers/core.js';
import { startTestServer, type TestServer } from './helpers/server.js';

/**
 * Odd but harmless input must get a precise 4xx (or a normal answer), never a 5xx: a 500 on a
 * read path would show up as an origin failure in the CDN, and on the API it hides the real cause.
 */
describe('odd input never causes a 5xx', () => {
  let server: TestServer;
  let h: string;
  beforeAll(async () => {
    server = await startTestServer();
    const up = await server.upload('odd-1.0.tar.gz', 'odd bytes');
    h = up.json.sha512;
  });
  afterAll(async () => server.stop());

  it('on read paths, whatever the headers', async () => {
    const paths = [`/distfiles/${h}`, '/distfiles/odd-1.0.tar.gz', '/distfiles/layout.conf', '/distfiles/missing', '/'];
    const headerSets: Record<string, string>[] = [
      { range: 'bytes=' },
      { range: 'bytes=-' },
      { range: 'bytes=abc-def' },
      { range: 'bytes=5-2' },
      { range: 'bytes=99999999999999999999999-' },
      { range: 'bytes=0-99999999999999999999999' },
      { range: 'bytes=-99999999999999999999999' },
      { range: 'bytes=0-1,,,' },
      { range: 'bytes=0-1', 'if-range': '' },
      { range: 'bytes=0-1', 'if-range': 'garbage' },
      { 'if-none-match': '' },
      { 'if-none-match': ',,,' },
      { 'if-none-match': 'W/' },
      { 'if-modified-since': 'yesterday' },
      { 'if-modified-since': '' },
      { 'x-request-id': 'x'.repeat(500) },
      { 'x-request-id': '../../etc' },
      { 'accept-encoding': '*' },
    ];
    for (const p of paths) {
      for (const headers of headerSets) {
        for (const method of ['GET', 'HEAD']) {
          const res = await rawRequest(server.baseUrl, p, { method, headers });
          expect(res.status, `${method} ${p} ${JSON.stringify(headers)}`).toBeLessThan(500);
        }
      }
    }
  });

  it('on the admin API, with odd methods, bodies and content types', async () => {
    const json = { ...AUTH, 'content-type': 'application/json' };
    const cases: [string, string, Record<string, string>, string?][] = [
      ['POST', '/api/v1/links', json, 'null'],
      ['POST', '/api/v1/links', json, '[]'],
      ['POST', '/api/v1/links', json, '"string"'],
      ['POST', '/api/v1/links', json, '{"filename":null,"sha512":null}'],
      ['POST', '/api/v1/links', json, `{"filename":{"a":1},"sha512":"${h}"}`],
      ['POST', '/api/v1/links', json, '{"__proto__":{"x":1},"filename":"a","sha512":"b"}'],
      ['POST', '/api/v1/links', { ...AUTH, 'content-type': 'text/plain' }, 'filename=a'],
      ['POST', '/api/v1/links', AUTH, ''],
      ['PATCH', '/api/v1/distfiles/odd-1.0.tar.gz', AUTH, 'x'],
      ['POST', '/api/v1/distfiles/odd-1.0.tar.gz', AUTH, 'x'],
      ['PUT', '/api/v1/distfiles/', AUTH, 'x'],
      ['PUT', '/api/v1/distfiles/a.tar.gz?size=', AUTH, 'x'],
      ['PUT', '/api/v1/distfiles/a.tar.gz?size=99999999999999999', AUTH, 'x'],
      ['PUT', '/api/v1/distfiles/a.tar.gz?sha512=', AUTH, 'x'],
      ['GET', '/api/v1/distfiles/%FF', AUTH],
      ['GET', `/api/v1/blobs/${'0'.repeat(2000)}`, AUTH],
      ['DELETE', '/api/v1/blobs/' + h, AUTH],
      ['OPTIONS', '/distfiles/odd-1.0.tar.gz', {}],
      ['PUT', `/distfiles/${h}`, AUTH, 'x'],
      ['DELETE', `/distfiles/${h}`, AUTH],
    ];
    const before = (await indexCounts(server));
    for (const [method, p, headers, body] of cases) {
      const res = await rawRequest(server.baseUrl, p, { method, headers, ...(body !== undefined ? { body } : {}) });
      const label = `${method} ${p} ${body ?? ''}`;
      expect(res.status, label).toBeGreaterThanOrEqual(400);
      expect(res.status, label).toBeLessThan(500);
      expect(typeof errorBody(res.body).error, label).toBe('string');
    }
    // `?size=` with an empty value and the like must not have stored anything either.
    expect((await indexCounts(server))).toEqual(before);
    expect((await rawRequest(server.baseUrl, `/distfiles/${h}`)).body.toString()).toBe('odd bytes');
    expect(sha512('odd bytes')).toBe(h);
  });

  it('stores an upload body raw whatever Content-Type it claims (no parser touches it)', async () => {
    for (const [type, body] of [
      ['application/json', '{not json'],
      ['multipart/form-data; boundary=x', '--x--'],
      ['application/x-www-form-urlencoded', 'a=1&b=2'],
      ['application/gzip', '\x1f\x8b'],
    ]) {
      const res = await rawRequest(server.baseUrl, '/api/v1/distfiles/typed.tar.gz', {
        method: 'PUT',
        headers: { ...AUTH, 'content-type': type! },
        body: body!,
      });
      expect([200, 201], type).toContain(res.status);
      expect(JSON.parse(res.body.toString()).sha512, type).toBe(sha512(body!));
      expect((await rawRequest(server.baseUrl, '/distfiles/typed.tar.gz')).body.toString(), type).toBe(body);
    }
  });
});
