import SwaggerParser from '@apidevtools/swagger-parser';
import { Ajv } from 'ajv';
import addFormats from 'ajv-formats';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sha512 } from './helpers/core.js';
import { ADMIN_TOKEN, makeDataDir, startTestServer, type TestServer } from './helpers/server.js';

const METHODS = ['get', 'put', 'post', 'delete', 'patch'];
const A = { authorization: `Bearer ${ADMIN_TOKEN}` };
const WRONG = { authorization: 'Bearer not-a-token' };

interface Answer {
  status: number;
  body: unknown;
}

type Servers = Record<'main' | 'readOnly' | 'full' | 'limited', TestServer>;

async function send(server: TestServer, method: string, path: string, headers: Record<string, string> = {}, body?: string | Buffer): Promise<Answer> {
  const res = await request(server.baseUrl + path, { method: method as 'GET', headers, ...(body !== undefined ? { body } : {}) });
  const text = await res.body.text();
  let json: unknown;
  try {
    json = text ? JSON.parse(text) : undefined;
  } catch {
    json = text;
  }
  return { status: res.statusCode, body: json };
}

const JSON_HEADERS = { ...A, 'content-type': 'application/json' };
const STORED = 'stored bytes\n';
const H = sha512(STORED);
let counter = 0;
const fresh = () => `fresh ${++counter} ${Math.random()}\n`;

/**
 * How to make each route answer each status it documents, against real servers: `main` (uploads up to
 * 1 KiB, a read-api-only token), `readOnly`, `full` (above its high watermark) and `limited` (one admin
 * request a minute). A documented status without a way to provoke it fails the test, and so does one
 * listed here that the document does not mention.
 */
function provocations(s: Servers, reader: Record<string, string>): Record<string, () => Promise<Answer>> {
  const up = (server: TestServer, path: string, body: string | Buffer, headers: Record<string, string> = A) => send(server, 'PUT', path, headers, body);
  const twice = async (method: string, path: string, headers: Record<string, string>, body?: string) => {
    await send(s.limited, method, path, headers, body);
    return send(s.limited, method, path, headers, body);
  };
  const job = () => JSON.stringify({ items: [{ url: 'http://127.0.0.1:9/nothing.tar.gz', filename: 'nothing.tar.gz' }] });
  return {
    'PUT /api/v1/distfiles/{filename} 200': () => up(s.main, '/api/v1/distfiles/stored-again.tar.gz', STORED),
    'PUT /api/v1/distfiles/{filename} 201': () => up(s.main, '/api/v1/distfiles/new.tar.gz', fresh()),
    'PUT /api/v1/distfiles/{filename} 400': () => up(s.main, '/api/v1/distfiles/x.tar.gz?sha512=nothex', 'x'),
    'PUT /api/v1/distfiles/{filename} 401': () => up(s.main, '/api/v1/distfiles/x.tar.gz', 'x', {}),
    'PUT /api/v1/distfiles/{filename} 403': () => up(s.main, '/api/v1/distfiles/x.tar.gz', 'x', reader),
    'PUT /api/v1/distfiles/{filename} 413': () => up(s.main, '/api/v1/distfiles/big.tar.gz', Buffer.alloc(2048)),
    'PUT /api/v1/distfiles/{filename} 422': () => up(s.main, `/api/v1/distfiles/x.tar.gz?sha512=${H}`, 'not those bytes'),
    'PUT /api/v1/distfiles/{filename} 429': () => twice('PUT', '/api/v1/distfiles/x.tar.gz', A, 'x'),
    'PUT /api/v1/distfiles/{filename} 503': () => up(s.readOnly, '/api/v1/distfiles/x.tar.gz', 'x'),
    'PUT /api/v1/distfiles/{filename} 507': () => up(s.full, '/api/v1/distfiles/x.tar.gz', fresh()),

    'PUT /api/v1/blobs/{sha512} 200': () => up(s.main, `/api/v1/blobs/${H}`, STORED),
    'PUT /api/v1/blobs/{sha512} 201': () => {
      const body = fresh();
      return up(s.main, `/api/v1/blobs/${sha512(body)}`, body);
    },
    'PUT /api/v1/blobs/{sha512} 400': () => up(s.main, '/api/v1/blobs/nothex', 'x'),
    'PUT /api/v1/blobs/{sha512} 401': () => up(s.main, `/api/v1/blobs/${H}`, STORED, {}),
    'PUT /api/v1/blobs/{sha512} 403': () => up(s.main, `/api/v1/blobs/${H}`, STORED, WRONG),
    'PUT /api/v1/blobs/{sha512} 413': () => up(s.main, `/api/v1/blobs/${H}`, Buffer.alloc(2048)),
    'PUT /api/v1/blobs/{sha512} 422': () => up(s.main, `/api/v1/blobs/${H}`, 'other bytes'),
    'PUT /api/v1/blobs/{sha512} 429': () => twice('PUT', `/api/v1/blobs/${H}`, A, STORED),
    'PUT /api/v1/blobs/{sha512} 503': () => up(s.readOnly, `/api/v1/blobs/${H}`, STORED),
    'PUT /api/v1/blobs/{sha512} 507': () => {
      const body = fresh();
      return up(s.full, `/api/v1/blobs/${sha512(body)}`, body);
    },

    'GET /api/v1/distfiles/{filename} 200': () => send(s.main, 'GET', '/api/v1/distfiles/stored.tar.gz', A),
    'GET /api/v1/distfiles/{filename} 400': () => send(s.main, 'GET', '/api/v1/distfiles/a%01b', A),
    'GET /api/v1/distfiles/{filename} 401': () => send(s.main, 'GET', '/api/v1/distfiles/stored.tar.gz'),
    'GET /api/v1/distfiles/{filename} 403': () => send(s.main, 'GET', '/api/v1/distfiles/stored.tar.gz', WRONG),
    'GET /api/v1/distfiles/{filename} 404': () => send(s.main, 'GET', '/api/v1/distfiles/never-seen.tar.gz', A),
    'GET /api/v1/distfiles/{filename} 429': () => twice('GET', '/api/v1/distfiles/stored.tar.gz', A),

    'DELETE /api/v1/distfiles/{filename} 200': async () => {
      await up(s.main, '/api/v1/distfiles/doomed.tar.gz', fresh());
      return send(s.main, 'DELETE', '/api/v1/distfiles/doomed.tar.gz', A);
    },
    'DELETE /api/v1/distfiles/{filename} 400': () => send(s.main, 'DELETE', '/api/v1/distfiles/a%01b', A),
    'DELETE /api/v1/distfiles/{filename} 401': () => send(s.main, 'DELETE', '/api/v1/distfiles/stored.tar.gz'),
    'DELETE /api/v1/distfiles/{filename} 403': () => send(s.main, 'DELETE', '/api/v1/distfiles/stored.tar.gz', reader),
    'DELETE /api/v1/distfiles/{filename} 404': () => send(s.main, 'DELETE', '/api/v1/distfiles/never-seen.tar.gz', A),
    'DELETE /api/v1/distfiles/{filename} 429': () => twice('DELETE', '/api/v1/distfiles/never-seen.tar.gz', A),
    'DELETE /api/v1/distfiles/{filename} 503': () => send(s.readOnly, 'DELETE', '/api/v1/distfiles/stored.tar.gz', A),

    'GET /api/v1/blobs/{sha512} 200': () => send(s.main, 'GET', `/api/v1/blobs/${H}`, A),
    'GET /api/v1/blobs/{sha512} 400': () => send(s.main, 'GET', '/api/v1/blobs/nothex', A),
    'GET /api/v1/blobs/{sha512} 401': () => send(s.main, 'GET', `/api/v1/blobs/${H}`),
    'GET /api/v1/blobs/{sha512} 403': () => send(s.main, 'GET', `/api/v1/blobs/${H}`, WRONG),
    'GET /api/v1/blobs/{sha512} 404': () => send(s.main, 'GET', `/api/v1/blobs/${'0'.repeat(128)}`, A),
    'GET /api/v1/blobs/{sha512} 429': () => twice('GET', `/api/v1/blobs/${H}`, A),

    'POST /api/v1/links 200': () => send(s.main, 'POST', '/api/v1/links', JSON_HEADERS, JSON.stringify({ filename: 'alias.tar.gz', sha512: H })),
    'POST /api/v1/links 400': () => send(s.main, 'POST', '/api/v1/links', JSON_HEADERS, '{}'),
    'POST /api/v1/links 401': () => send(s.main, 'POST', '/api/v1/links', { 'content-type': 'application/json' }, '{}'),
    'POST /api/v1/links 403': () => send(s.main, 'POST', '/api/v1/links', { ...reader, 'content-type': 'application/json' }, '{}'),
    'POST /api/v1/links 404': () => send(s.main, 'POST', '/api/v1/links', JSON_HEADERS, JSON.stringify({ filename: 'a.tar.gz', sha512: '0'.repeat(128) })),
    'POST /api/v1/links 413': () => send(s.main, 'POST', '/api/v1/links', JSON_HEADERS, JSON.stringify({ filename: 'x'.repeat(2 * 1024 * 1024), sha512: H })),
    'POST /api/v1/links 429': () => twice('POST', '/api/v1/links', JSON_HEADERS, '{}'),
    'POST /api/v1/links 503': () => send(s.readOnly, 'POST', '/api/v1/links', JSON_HEADERS, JSON.stringify({ filename: 'a.tar.gz', sha512: H })),

    'POST /api/v1/fetches 202': () => send(s.main, 'POST', '/api/v1/fetches', JSON_HEADERS, job()),
    'POST /api/v1/fetches 400': () => send(s.main, 'POST', '/api/v1/fetches', JSON_HEADERS, '{"items": []}'),
    'POST /api/v1/fetches 401': () => send(s.main, 'POST', '/api/v1/fetches', { 'content-type': 'application/json' }, job()),
    'POST /api/v1/fetches 403': () => send(s.main, 'POST', '/api/v1/fetches', { ...reader, 'content-type': 'application/json' }, job()),
    'POST /api/v1/fetches 413': () => send(s.main, 'POST', '/api/v1/fetches', JSON_HEADERS, JSON.stringify({ items: [{ url: 'x'.repeat(5 * 1024 * 1024) }] })),
    'POST /api/v1/fetches 503': () => send(s.readOnly, 'POST', '/api/v1/fetches', JSON_HEADERS, job()),
    'POST /api/v1/fetches 507': () => send(s.full, 'POST', '/api/v1/fetches', JSON_HEADERS, job()),

    'GET /api/v1/fetches/{id} 200': async () => {
      const created = (await send(s.main, 'POST', '/api/v1/fetches', JSON_HEADERS, job())).body as { id: string };
      return send(s.main, 'GET', `/api/v1/fetches/${created.id}`, A);
    },
    'GET /api/v1/fetches/{id} 401': () => send(s.main, 'GET', '/api/v1/fetches/1'),
    'GET /api/v1/fetches/{id} 403': () => send(s.main, 'GET', '/api/v1/fetches/1', WRONG),
    'GET /api/v1/fetches/{id} 404': () => send(s.main, 'GET', '/api/v1/fetches/no-such-job', A),

    'GET /api/v1/upstreams 200': () => send(s.main, 'GET', '/api/v1/upstreams', A),
    'GET /api/v1/upstreams 401': () => send(s.main, 'GET', '/api/v1/upstreams'),
    'GET /api/v1/upstreams 403': () => send(s.main, 'GET', '/api/v1/upstreams', WRONG),

    'GET /api/v1/status 200': () => send(s.main, 'GET', '/api/v1/status'),
    'GET /api/v1/status 4XX': () => send(s.main, 'GET', '/api/v1/status?recent=lots'),
    'GET /api/v1/search 200': () => send(s.main, 'GET', '/api/v1/search?prefix=stored'),
    'GET /api/v1/search 4XX': () => send(s.main, 'GET', '/api/v1/search'),
    'GET /api/v1/openapi.json 200': () => send(s.main, 'GET', '/api/v1/openapi.json'),
    'GET /api/v1/events 200': () => send(s.main, 'GET', '/api/v1/events?after=0', A),
    'GET /api/v1/events 400': () => send(s.main, 'GET', '/api/v1/events?limit=0', A),
    'GET /api/v1/events 401': () => send(s.main, 'GET', '/api/v1/events'),
    'GET /api/v1/events 403': () => send(s.main, 'GET', '/api/v1/events', WRONG),
  };
}

describe('the OpenAPI document is complete and true', () => {
  let servers: Servers;
  let doc: any;
  let reader: Record<string, string>;

  beforeAll(async () => {
    const fullDir = await makeDataDir();
    const seed = await startTestServer({ dataDir: fullDir });
    await seed.upload('seed.tar.gz', 'seed bytes\n');
    await seed.stop();
    const main = await startTestServer({ maxUploadBytes: 1024 });
    const readOnly = await startTestServer({ readOnly: true });
    const limited = await startTestServer({ adminRateLimitPerMinute: 1 });
    // Last: the storage guard keeps its byte count in a module-wide object, which each new server resets.
    const full = await startTestServer({ dataDir: fullDir, highWatermarkBytes: 1 });
    servers = { main, readOnly, full, limited };
    expect((await servers.main.upload('stored.tar.gz', STORED)).status).toBe(201);
    reader = { authorization: `Bearer ${await servers.main.tokens.create('reader', ['read-api'])}` };
    doc = (await send(servers.main, 'GET', '/api/v1/openapi.json')).body;
  });
  afterAll(async () => {
    for (const server of Object.values(servers ?? {})) await server.stop();
  });

  const operations = () =>
    Object.entries<any>(doc.paths).flatMap(([path, item]) =>
      Object.entries<any>(item)
        .filter(([m]) => METHODS.includes(m))
        .map(([method, op]) => ({ method: method.toUpperCase(), path, op })),
    );

  it('passes @apidevtools/swagger-parser validation', async () => {
    await expect(SwaggerParser.validate(structuredClone(doc))).resolves.toBeDefined();
  });

  it('gives every operation a unique operationId, a summary and a schema for every JSON response', () => {
    const ids = operations().map(({ op }) => op.operationId);
    expect(ids.every((id) => typeof id === 'string' && /^[a-z][A-Za-z0-9]+$/.test(id)), ids.join(' ')).toBe(true);
    expect(new Set(ids).size).toBe(ids.length);
    for (const { method, path, op } of operations()) {
      expect(op.summary, `${method} ${path}`).toBeTruthy();
      for (const [status, response] of Object.entries<any>(op.responses)) {
        expect(response.content?.['application/json']?.schema, `${method} ${path} ${status}`).toBeDefined();
      }
    }
    expect(Object.keys(doc.components.schemas)).toEqual(expect.arrayContaining(['Error', 'DownloadPaths', 'IngestResult', 'NameEntry', 'FetchJob', 'Upstreams']));
  });

  it('documents the upload bodies, the fetch body, integer sizes and the 202 of POST /fetches', () => {
    for (const path of ['/api/v1/distfiles/{filename}', '/api/v1/blobs/{sha512}']) {
      const put = doc.paths[path].put;
      expect(put.requestBody.content['application/octet-stream'].schema).toMatchObject({ type: 'string', format: 'binary' });
      expect(put.parameters.find((p: any) => p.name === 'size').schema.type).toBe('integer');
    }
    const post = doc.paths['/api/v1/fetches'].post;
    expect(post.requestBody.content['application/json'].schema.oneOf).toHaveLength(3);
    expect(Object.keys(post.responses).filter((s) => s.startsWith('2'))).toEqual(['202']);
    expect(post.responses['202'].headers.location).toBeDefined();
  });

  it('lists only statuses each route really answers, provoked against real servers, with bodies that match', { timeout: 120_000 }, async () => {
    const table = provocations(servers, reader);
    const ajv = new Ajv({ strict: false, allErrors: true });
    addFormats.default(ajv);
    ajv.addSchema({ $id: 'doc', components: doc.components });
    const toAjv = (schema: unknown): unknown => JSON.parse(JSON.stringify(schema).replaceAll('"#/components/', '"doc#/components/'));
    const documented = new Set<string>();
    for (const { method, path, op } of operations()) {
      for (const [status, response] of Object.entries<any>(op.responses)) {
        if (status === 'default') continue;
        const key = `${method} ${path} ${status}`;
        documented.add(key);
        const provoke = table[key];
        expect(provoke, `no way to provoke ${key}: add one to provocations()`).toBeDefined();
        const answer = await provoke!();
        if (/^\dXX$/.test(status)) expect(String(answer.status)[0], key).toBe(status[0]);
        else expect(answer.status, `${key}: ${JSON.stringify(answer.body)}`).toBe(Number(status));
        const schema = response.content?.['application/json']?.schema;
        if (schema) {
          const validate = ajv.compile(toAjv(schema) as object);
          expect(validate(answer.body), `${key}: ${ajv.errorsText(validate.errors)}`).toBe(true);
        }
      }
    }
    expect(Object.keys(table).filter((key) => !documented.has(key))).toEqual([]);
  });
});
