import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { Logger } from 'pino';
import { request } from 'undici';
import { loadConfig, type Config } from '../../src/config.js';
import { startServer, type Server } from '../../src/server.js';

export const ADMIN_TOKEN = 'test-admin-token-0123456789';

export interface TestServer extends Server {
  baseUrl: string;
  dataDir: string;
  config: Config;
  /** PUT /api/v1/distfiles/{name}; returns status and parsed JSON. */
  upload(filename: string, body: Buffer | string, query?: Record<string, string>): Promise<{ status: number; json: any }>;
  stop(): Promise<void>;
}

export async function makeDataDir(): Promise<string> {
  return mkdtemp(path.join(tmpdir(), 'fastpull-test-'));
}

/** A real server on 127.0.0.1:<random port> over a fresh data directory (or the one given). */
export async function startTestServer(overrides: Partial<Config> = {}, options: { logger?: Logger } = {}): Promise<TestServer> {
  const dataDir = overrides.dataDir ?? (await makeDataDir());
  const config = loadConfig(
    { host: '127.0.0.1', port: 0, adminToken: ADMIN_TOKEN, logLevel: 'silent', ...overrides, dataDir },
    {},
  );
  const server = await startServer(config, options);
  const baseUrl = server.url;
  return {
    ...server,
    baseUrl,
    dataDir,
    config,
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
      if (!overrides.dataDir) await rm(dataDir, { recursive: true, force: true });
    },
  };
}

export async function get(url: string, headers: Record<string, string> = {}, method: 'GET' | 'HEAD' = 'GET') {
  const res = await request(url, { method, headers });
  const body = Buffer.from(await res.body.arrayBuffer());
  return { status: res.statusCode, headers: res.headers, body };
}
