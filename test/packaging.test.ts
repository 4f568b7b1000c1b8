import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { parse } from 'yaml';

const read = (file: string) => readFileSync(fileURLToPath(new URL(`../${file}`, import.meta.url)), 'utf8');

/** No Docker engine runs here: these check what the image and compose file promise, as written. */
describe('Dockerfile and docker-compose.yml', () => {
  const dockerfile = read('Dockerfile');
  const compose = parse(read('docker-compose.yml')) as {
    services: Record<string, { environment?: Record<string, string>; ports?: string[]; volumes?: string[]; profiles?: string[] }>;
  };

  it('builds on a supported LTS line and runs as uid 1000 (node) over /data', () => {
    expect(dockerfile).toMatch(/^ARG NODE_IMAGE=node:(22|24)-[a-z]+-slim$/m);
    expect(dockerfile).toMatch(/^USER node$/m);
    expect(dockerfile).toMatch(/chown node:node \/data/);
    expect(dockerfile).toMatch(/uid 1000/);
  });

  it('probes health well before 30 s after start', () => {
    const line = /^HEALTHCHECK (.*)\\$/m.exec(dockerfile)![1]!;
    const seconds = (flag: string) => Number(new RegExp(`--${flag}=(\\d+)s`).exec(line)?.[1]);
    expect(seconds('start-interval')).toBeLessThanOrEqual(5);
    expect(seconds('interval')).toBeLessThan(30);
  });

  it('publishes both the origin and the edge on loopback unless told otherwise', () => {
    const ports = Object.values(compose.services).flatMap((s) => s.ports ?? []);
    // The default stack publishes two; the "ha" profile's services are checked in test/ha-edge.test.ts.
    expect(Object.values(compose.services).filter((s) => !s.profiles).flatMap((s) => s.ports ?? []).length).toBe(2);
    for (const port of ports) expect(port, port).toMatch(/^(127\.0\.0\.1|\$\{FASTPULL_(HA_)?EDGE_BIND:-127\.0\.0\.1\}):/);
  });

  it("gives the edge's upstream its own name and fills every placeholder of the nginx template", () => {
    const edge = compose.services.edge!;
    expect(Object.keys(edge.environment!)).not.toContain('FASTPULL_ORIGIN');
    const template = read('config/nginx-cdn.conf');
    const placeholders = [...new Set([...template.matchAll(/\$\{(\w+)\}/g)].map((m) => m[1]!))].sort();
    expect(placeholders).toEqual(Object.keys(edge.environment!).sort());
  });
});
