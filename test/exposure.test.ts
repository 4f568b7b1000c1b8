import { rm } from 'node:fs/promises';
import { Writable } from 'node:stream';
import { pino } from 'pino';
import { describe, expect, it } from 'vitest';
import { loadConfig } from '../src/config.js';
import { publicListeners } from '../src/ops/startup.js';
import { startServer } from '../src/server.js';
import { get, makeDataDir } from './helpers/server.js';

/** Starts a real server with `overrides` and returns its start-up log lines. */
async function startupLog(overrides: Parameters<typeof loadConfig>[0]): Promise<{ lines: Record<string, unknown>[]; url: string }> {
  const lines: Record<string, unknown>[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, done) {
      for (const l of chunk.toString('utf8').split('\n')) if (l) lines.push(JSON.parse(l) as Record<string, unknown>);
      done();
    },
  });
  const dataDir = await makeDataDir();
  const server = await startServer(loadConfig({ port: 0, dataDir, ...overrides }, {}), { logger: pino({ level: 'info' }, sink) });
  try {
    // Reached over loopback whatever the bind address: nothing leaves the machine.
    expect((await get(`http://127.0.0.1:${new URL(server.url).port}/healthz`)).status).toBe(200);
    return { lines, url: server.url };
  } finally {
    await server.close();
    await rm(dataDir, { recursive: true, force: true });
  }
}

describe('public listeners are named at start', () => {
  it('warns when the API and /metrics listen on every interface (the quick-start default)', async () => {
    expect(loadConfig({}, {}).host).toBe('0.0.0.0');
    const { lines } = await startupLog({ host: '0.0.0.0' });
    const warning = lines.find((l) => Array.isArray(l.public));
    expect(warning).toBeDefined();
    expect(warning!.level).toBe(40);
    expect(warning!.public).toEqual([{ address: expect.stringMatching(/^http:\/\/0\.0\.0\.0:\d+$/), serves: expect.stringMatching(/admin API .* and \/metrics/) }]);
    expect(warning!.msg).toMatch(/FASTPULL_HOST=127\.0\.0\.1/);
  });

  it('names the separate metrics listener too', async () => {
    const { lines } = await startupLog({ host: '0.0.0.0', metricsPort: 0 });
    const listed = (lines.find((l) => Array.isArray(l.public))!.public as { address: string; serves: string }[]).map((l) => l.serves);
    expect(listed).toEqual([expect.not.stringContaining('/metrics'), '/metrics']);
  });

  it('says nothing when bound to loopback', async () => {
    const { lines } = await startupLog({ host: '127.0.0.1' });
    expect(lines.some((l) => 'public' in l)).toBe(false);
  });

  it('treats every loopback spelling as private and anything else as public', () => {
    for (const host of ['127.0.0.1', '127.1.2.3', '::1', 'localhost', '::ffff:127.0.0.1']) {
      expect(publicListeners({ host, metricsPort: undefined }, 8080, undefined), host).toEqual([]);
    }
    expect(publicListeners({ host: '::', metricsPort: 9090 }, 8080, 9090).map((l) => l.address)).toEqual(['http://[::]:8080', 'http://[::]:9090']);
    for (const host of ['0.0.0.0', '::', '192.0.2.7', 'origin.example']) {
      expect(publicListeners({ host, metricsPort: undefined }, 8080, undefined), host).toHaveLength(1);
    }
  });
});
