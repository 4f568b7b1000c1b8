import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { loadConfig, SETTING_ENV_NAMES } from '../src/config.js';

const EXAMPLE = fileURLToPath(new URL('../config/fastpull.example.json', import.meta.url));
const example = JSON.parse(readFileSync(EXAMPLE, 'utf8')) as Record<string, unknown>;
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

  it('shows every setting that has a default, at that default', () => {
    const defaults = loadConfig({}, {});
    const fromFile = loadConfig({}, { FASTPULL_CONFIG: EXAMPLE });
    expect({ ...fromFile, configFile: undefined }).toEqual({ ...defaults, configFile: undefined });
    for (const key of settings) {
      if (defaults[key] !== undefined) expect(Object.keys(example), key).toContain(key);
    }
  });
});
