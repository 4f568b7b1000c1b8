import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { Logger } from 'pino';
import { request } from 'undici';
import { loadConfig, type Config } from '../../src/config.js';
import { startServer, type Server } from '../../src/server.js';
import { backendConfig, forgetTarget, rememberTarget, targetFor, type BackendTarget } from './backend.js';

export const ADMIN_TOKEN = 'test-admin-token-0123456789';

export interface TestServer extends Server {
  baseUrl: string;
  dataDir: string;
  config: Config;
  /** Its bucket prefix and database under FASTPULL_TEST_BACKEND=s3+postgres; undefined on the local backend. */
  backend: BackendTarget | undefined;
  /** PUT /api/v1/distfiles/{name}; returns status and parsed JSON. */
  upload(filename: string, body: Buffer | string, query?: Record<string, string>): Promise<{ status: number; json: any }>;
  /** Another server (own data dir and port) on the SAME bucket prefix and database: s3+postgres only. */
  replica(overrides?: Partial<Config>): Promise<TestServer>;
  stop(): Promise<void>;
}

export async function makeDataDir(): Promise<string> {
  return mkdtemp(path.join(tmpdir(), 'fastpull-test-'));
}

/**
 * A real server on 127.0.0.1:<random port> over a fresh data directory (or the one given). Under
 * FASTPULL_TEST_BACKEND=s3+postgres it stores blobs under its own bucket prefix and indexes them in its own
 * database (the same ones again when restarted over the same data dir), unless `overrides` name storage or a
 * database themselves.
 */
export async function startTestServer(
  overrides: Partial<Config> = {},
  options: { logger?: Logger; backend?: BackendTarget } = {},
): Promise<TestServer> {
  const dataDir = overrides.dataDir ?? (await makeDataDir());
  const ownsDataDir = overrides.dataDir === undefined;
  const explicit = overrides.storage !== undefined || overrides.databaseUrl !== undefined;
  let backend = explicit ? undefined : options.backend;
  if (backend) rememberTarget(dataDir, backend);
  else if (!explicit) backend = await targetFor(dataDir);
  const config = loadConfig(
    { host: '127.0.0.1', port: 0, adminToken: ADMIN_TOKEN, logLevel: 'silent', ...(backend ? backendConfig(backend) : {}), ...overrides, dataDir },
    {},
  );
  let server: Server;
  try {
    server = await startServer(config, options.logger ? { logger: options.logger } : {});
  } catch (err) {
    if (ownsDataDir) {
      // A replica's failure must not drop the database its primary still uses.
      if (backend && !options.backend) await backend.release();
      forgetTarget(dataDir);
      await rm(dataDir, { recursive: true, force: true });
    }
    throw err;
  }
  const baseUrl = server.url;
  return {
    ...server,
    baseUrl,
    dataDir,
    config,
    backend,
    async replica(replicaOverrides = {}) {
      if (!backend) throw new Error('replica(): a second server on the same store and index needs FASTPULL_TEST_BACKEND=s3+postgres');
      const { dataDir: _own, ...rest } = { ...overrides, ...replicaOverrides };
      return startTestServer(rest, { ...options, backend });
    },
    async upload(filename, body, query = {}) {
      const qs = new URLSearchParams(query).toString();
      const res = await request(`${baseUrl}/api/v1/distfiles/${encodeURIComponent(filename)}${qs ? `?${qs}` : ''}`, {
        method: 'PUT',
        body,
        headers: { authorization: `Bearer ${ADMIN_TOKEN}` },
      });
      return { status: res.statusCode, json: await res.body.json() };
    },
    async stop() {
      await server.close();
      if (ownsDataDir) {
        // The target belongs to the server that created it; a replica (options.backend) leaves it to that one.
        if (backend && !options.backend) await backend.release();
        forgetTarget(dataDir);
        await rm(dataDir, { recursive: true, force: true });
      }
    },
  };
}

export async function get(url: string, headers: Record<string, string> = {}, method: 'GET' | 'HEAD' = 'GET') {
  const res = await request(url, { method, headers });
  const body = Buffer.from(await res.body.arrayBuffer());
  return { status: res.statusCode, headers: res.headers, body };
}
