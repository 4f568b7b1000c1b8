import { createHash } from 'node:crypto';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ADMIN_TOKEN, get, startTestServer, type TestServer } from './helpers/server.js';

const sha512 = (b: Buffer | string) => createHash('sha512').update(b).digest('hex');

/** The /api/v1 routes this branch knows of; routes added elsewhere are checked generically below. */
const API_ROUTES = [
  ['put', '/api/v1/distfiles/{filename}'],
  ['get', '/api/v1/distfiles/{filename}'],
  ['delete', '/api/v1/distfiles/{filename}'],
  ['put', '/api/v1/blobs/{sha512}'],
  ['get', '/api/v1/blobs/{sha512}'],
  ['post', '/api/v1/links'],
  ['get', '/api/v1/status'],
  ['get', '/api/v1/search'],
  ['get', '/api/v1/openapi.json'],
] as const;

const METHODS = ['get', 'put', 'post', 'delete', 'patch', 'head', 'options'];

describe('OpenAPI document', () => {
  let server: TestServer;
  let doc: any;
  beforeAll(async () => {
    server = await startTestServer();
    const res = await get(`${server.baseUrl}/api/v1/openapi.json`);
    expect(res.status).toBe(200);
    expect(res.headers['content-type']).toMatch(/^application\/json/);
    doc = JSON.parse(res.body.toString());
  });
  afterAll(async () => {
    await server?.stop();
  });

  it('is OpenAPI 3 with a title, a version and a bearer scheme', () => {
    expect(doc.openapi).toMatch(/^3\.\d+\.\d+$/);
    expect(doc.info.title).toBeTruthy();
    expect(doc.info.version).toMatch(/^\d+\.\d+\.\d+/);
    expect(doc.components.securitySchemes.bearer).toMatchObject({ type: 'http', scheme: 'bearer' });
  });

  it('lists every /api/v1 route with its method', () => {
    for (const [method, path] of API_ROUTES) {
      expect(doc.paths[path]?.[method], `${method.toUpperCase()} ${path}`).toBeDefined();
    }
  });

  it('lists only routes the server really has, and no download routes', () => {
    for (const [path, item] of Object.entries<any>(doc.paths)) {
      expect(path.startsWith('/api/v1/'), path).toBe(true);
      const url = path.replace(/\{(\w+)\}/g, ':$1');
      for (const method of Object.keys(item).filter((k) => METHODS.includes(k))) {
        expect(server.app.hasRoute({ method: method.toUpperCase() as 'GET', url }), `${method} ${path}`).toBe(true);
      }
    }
    expect(Object.keys(doc.paths).some((p) => p.startsWith('/distfiles') || p === '/{hash}' || p === '/')).toBe(false);
  });

  it('marks the public routes as needing no token and the admin routes as needing one', () => {
    expect(doc.paths['/api/v1/status'].get.security).toEqual([]);
    expect(doc.paths['/api/v1/search'].get.security).toEqual([]);
    const effective = (op: any) => op.security ?? doc.security;
    expect(effective(doc.paths['/api/v1/blobs/{sha512}'].get)).toEqual([{ bearer: [] }]);
    expect(effective(doc.paths['/api/v1/distfiles/{filename}'].put)).toEqual([{ bearer: [] }]);
  });

  it('describes parameters and responses from the route schemas', () => {
    const getName = doc.paths['/api/v1/distfiles/{filename}'].get;
    expect(getName.parameters).toEqual(
      expect.arrayContaining([expect.objectContaining({ name: 'filename', in: 'path', required: true })]),
    );
    expect(getName.responses['200'].content['application/json'].schema.properties.history.type).toBe('array');
    const search = doc.paths['/api/v1/search'].get;
    expect(search.parameters.map((p: any) => `${p.in}:${p.name}`).sort()).toEqual(['query:after', 'query:ignoreCase', 'query:limit', 'query:prefix']);
    const upload = doc.paths['/api/v1/distfiles/{filename}'].put;
    expect(Object.keys(upload.responses)).toEqual(expect.arrayContaining(['200', '201']));
    expect(upload.parameters.map((p: any) => p.name)).toEqual(expect.arrayContaining(['sha512', 'blake2b', 'size']));
  });
});

describe('admin responses with schemas', () => {
  let server: TestServer;
  beforeAll(async () => {
    server = await startTestServer();
  });
  afterAll(async () => {
    await server?.stop();
  });

  const auth = { authorization: `Bearer ${ADMIN_TOKEN}` };

  // A response schema makes fastify serialize with fast-json-stringify, which drops unlisted fields.
  it('still carries every field the handlers produce', async () => {
    const up = await server.upload('schema-1.0.tar.gz', 'schema\n');
    expect(up.status).toBe(201);
    expect(Object.keys(up.json).sort()).toEqual(['blake2b', 'filename', 'sha256', 'sha512', 'size', 'urls']);
    expect(Object.keys(up.json.urls).sort()).toEqual(['contentHash', 'direct', 'filenameHash', 'flat', 'hash']);

    const name = await get(`${server.baseUrl}/api/v1/distfiles/schema-1.0.tar.gz`, auth);
    const nameJson = JSON.parse(name.body.toString());
    expect(nameJson.current).toMatchObject({ sha512: sha512('schema\n'), size: 7, quarantined: false });
    expect(typeof nameJson.current.attachedBy).toBe('string');
    expect(typeof nameJson.current.attachedAt).toBe('string');
    expect(Object.keys(nameJson.history[0]).sort()).toEqual(
      ['attachedAt', 'attachedBy', 'detachedAt', 'detachedBy', 'filename', 'firstAttachedAt', 'sha512'],
    );
    expect(nameJson.history[0].detachedAt).toBeNull();

    const blob = await get(`${server.baseUrl}/api/v1/blobs/${sha512('schema\n')}`, auth);
    const blobJson = JSON.parse(blob.body.toString());
    expect(blobJson).toMatchObject({ size: 7, quarantined: false, pinned: false, verifiedAt: null });
    expect(blobJson.names.map((n: any) => n.filename)).toEqual(['schema-1.0.tar.gz']);

    const del = await request(`${server.baseUrl}/api/v1/distfiles/schema-1.0.tar.gz`, { method: 'DELETE', headers: auth });
    expect(await del.body.json()).toEqual({ filename: 'schema-1.0.tar.gz', detached: 1 });
    const after = JSON.parse((await get(`${server.baseUrl}/api/v1/distfiles/schema-1.0.tar.gz`, auth)).body.toString());
    expect(after.current).toBeNull();
  });

  it('keeps specific error codes and their details', async () => {
    const bad = await server.upload('x.tar.gz', 'x', { sha512: 'nothex' });
    expect(bad.status).toBe(400);
    expect(bad.json.error).toBe('BAD_HASH');
    const mismatch = await server.upload('y.tar.gz', 'abc', { size: '4' });
    expect(mismatch.status).toBe(422);
    expect(mismatch.json.mismatches).toEqual([{ field: 'size', expected: 4, actual: 3 }]);
    const missing = await get(`${server.baseUrl}/api/v1/blobs/${'0'.repeat(128)}`, auth);
    expect(missing.status).toBe(404);
    expect(JSON.parse(missing.body.toString())).toEqual({
      error: 'BLOB_NOT_FOUND',
      message: expect.any(String),
      sha512: '0'.repeat(128),
    });
  });
});
