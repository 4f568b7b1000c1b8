import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ConfigError, loadConfig, SETTING_ENV_NAMES } from '../src/config.js';
import { runCli } from './helpers/cli.js';
import { get, startTestServer } from './helpers/server.js';

const EXAMPLE = fileURLToPath(new URL('../config/fastpull.example.json', import.meta.url));
const EXAMPLE_YAML = fileURLToPath(new URL('../config/fastpull.example.yaml', import.meta.url));
const example = JSON.parse(readFileSync(EXAMPLE, 'utf8')) as Record<string, unknown>;
const exampleYaml = readFileSync(EXAMPLE_YAML, 'utf8');
const settings = Object.keys(SETTING_ENV_NAMES) as (keyof typeof SETTING_ENV_NAMES)[];

describe('config/fastpull.example.json', () => {
  it('is accepted by loadConfig', () => {
    const config = loadConfig({}, { FASTPULL_CONFIG: EXAMPLE });
    expect(config.configFile).toBe(EXAMPLE);
  });

  it('documents every setting under "$name", naming its environment variable', () => {
    for (const key of settings) {
      const doc = example[`$${key}`];
      expect(typeof doc, `$${key}`).toBe('string');
      expect((doc as string).startsWith(`${SETTING_ENV_NAMES[key]}: `), `$${key} names ${SETTING_ENV_NAMES[key]}`).toBe(true);
    }
  });

  it('documents nothing that is not a setting', () => {
    for (const key of Object.keys(example)) {
      const name = key.startsWith('$') ? key.slice(1) : key;
      if (name === 'comment') continue;
      expect(settings, key).toContain(name);
    }
  });

  it('shows every setting at its default (null where the default is "unset"), except drainFile, whose default is under dataDir', () => {
    const defaults = loadConfig({}, {});
    const fromFile = loadConfig({}, { FASTPULL_CONFIG: EXAMPLE });
    expect({ ...fromFile, configFile: undefined }).toEqual({ ...defaults, configFile: undefined });
    expect(settings.filter((key) => !(key in example))).toEqual(['drainFile']);
  });
});

describe('config/fastpull.example.yaml', () => {
  it('loads unchanged and equals the built-in defaults', () => {
    const fromYaml = loadConfig({}, { FASTPULL_CONFIG: EXAMPLE_YAML });
    expect(fromYaml.configFile).toBe(EXAMPLE_YAML);
    expect({ ...fromYaml, configFile: undefined }).toEqual({ ...loadConfig({}, {}), configFile: undefined });
  });

  it('shows every setting, each after a comment naming its environment variable', () => {
    for (const key of settings) {
      const at = new RegExp(`^(# )?${key}: `, 'm').exec(exampleYaml);
      expect(at, key).not.toBeNull();
      const comment = exampleYaml.slice(0, at!.index).split('\n\n').pop()!;
      expect(comment, key).toMatch(new RegExp(`^(# .*\\n)*# ${SETTING_ENV_NAMES[key]}: `));
    }
  });

  it('says the same as the JSON example, setting by setting', () => {
    const squash = (text: string) => text.replace(/\s+/g, ' ').trim();
    for (const key of settings) {
      const at = new RegExp(`^(# )?${key}: `, 'm').exec(exampleYaml)!;
      const comment = exampleYaml.slice(0, at.index).split('\n\n').pop()!.split('\n').filter((l) => l.startsWith('# ') && !l.startsWith('#   ') && !/^# In YAML/.test(l));
      expect(squash(comment.map((l) => l.slice(2)).join(' ')), key).toBe(squash(example[`$${key}`] as string));
    }
  });
});

describe('config files and values', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'fastpull-config-'));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });
  const write = async (name: string, text: string) => {
    const file = path.join(dir, name);
    await writeFile(file, text);
    return file;
  };

  it('reads YAML by extension (.yaml, .yml) and JSON otherwise; env still wins over the file', async () => {
    const yaml = await write('a.yaml', '# comment\nport: 9999\nupstreams:\n  - kind: gentoo\n    url: https://mirror.example/\n');
    expect(loadConfig({}, { FASTPULL_CONFIG: yaml })).toMatchObject({ port: 9999, upstreams: [{ kind: 'gentoo', url: 'https://mirror.example' }] });
    expect(loadConfig({}, { FASTPULL_CONFIG: yaml, FASTPULL_PORT: '7000' }).port).toBe(7000);
    const yml = await write('b.yml', 'readOnly: true\n');
    expect(loadConfig({}, { FASTPULL_CONFIG: yml }).readOnly).toBe(true);
    const empty = await write('empty.yaml', '# everything commented out\n');
    expect(loadConfig({}, { FASTPULL_CONFIG: empty }).port).toBe(8080);
    const json = await write('c.conf', '{"port": 1234}');
    expect(loadConfig({}, { FASTPULL_CONFIG: json }).port).toBe(1234);
  });

  it('names the file, the setting or the variable in every error', async () => {
    const broken = await write('broken.yaml', 'port: [1, 2\n');
    expect(() => loadConfig({}, { FASTPULL_CONFIG: broken })).toThrow(new RegExp(`cannot read config file ${broken} \\(FASTPULL_CONFIG\\)`));
    const list = await write('list.yaml', '- port: 1\n');
    expect(() => loadConfig({}, { FASTPULL_CONFIG: list })).toThrow(/must hold a YAML mapping/);
    const unknown = await write('unknown.yaml', 'prot: 1\n');
    expect(() => loadConfig({}, { FASTPULL_CONFIG: unknown })).toThrow(/unknown setting "prot"/);
    const badPort = await write('bad.yaml', 'port: eighty\n');
    expect(() => loadConfig({}, { FASTPULL_CONFIG: badPort })).toThrow(new RegExp(`invalid configuration port in ${badPort}`));
    expect(() => loadConfig({}, { FASTPULL_UPSTREAMS: '[{"kind":"gentoo",' })).toThrow(/^invalid configuration FASTPULL_UPSTREAMS: not valid JSON/);
    expect(() => loadConfig({}, { FASTPULL_UPSTREAMS: 'gentoo=ftp://x' })).toThrow(/^invalid configuration FASTPULL_UPSTREAMS: mirror 0: url must be http\(s\)/);
    expect(() => loadConfig({}, { FASTPULL_PORT: 'abc' })).toThrow(ConfigError);
  });

  it('takes null for a setting whose default is "unset", meaning that default', async () => {
    const file = await write('nulls.json', '{"metricsPort": null, "highWatermarkBytes": null, "adminToken": null}');
    expect(loadConfig({}, { FASTPULL_CONFIG: file })).toMatchObject({ metricsPort: undefined, highWatermarkBytes: undefined, adminToken: undefined });
    expect(loadConfig({}, { FASTPULL_METRICS_PORT: '' }).metricsPort).toBeUndefined();
  });

  it('drainFile: null means no drain file: readyz ignores <dataDir>/drain and `fastpull drain` refuses', async () => {
    const file = await write('nodrain.yaml', 'drainFile: null\n');
    const server = await startTestServer({ drainFile: loadConfig({}, { FASTPULL_CONFIG: file }).drainFile });
    try {
      await writeFile(path.join(server.dataDir, 'drain'), 'x');
      const ready = await get(`${server.baseUrl}/readyz`);
      expect(ready.status).toBe(200);
      expect(JSON.parse(ready.body.toString()).checks.drain).toEqual({ ok: true, detail: 'no drain file (drainFile: null)' });
      const drain = await runCli(['drain'], { FASTPULL_CONFIG: file, FASTPULL_DATA_DIR: server.dataDir });
      expect(drain.code).toBe(2);
      expect(drain.stderr).toMatch(/^fastpull drain: draining by file is off \(drainFile: null in /);
      // Left out, it is <dataDir>/drain as before.
      const normal = await runCli(['drain'], { FASTPULL_DATA_DIR: server.dataDir });
      expect(normal.code, normal.stderr).toBe(0);
      expect(await readFile(path.join(server.dataDir, 'drain'), 'utf8')).toMatch(/^drained at /);
    } finally {
      await server.stop();
    }
  });
});
