import { readFileSync } from 'node:fs';
import path from 'node:path';

/**
 * The only module that reads process.env.
 * Precedence: built-in defaults < JSON config file (FASTPULL_CONFIG) < FASTPULL_* environment variables.
 */

type Parser<T> = (raw: unknown, source: string) => T;

interface Setting<T> {
  env: string;
  default: T;
  parse: Parser<T>;
}

function fail(source: string, message: string): never {
  throw new Error(`invalid configuration ${source}: ${message}`);
}

const str: Parser<string> = (raw, source) => {
  if (typeof raw !== 'string') fail(source, 'expected a string');
  return raw;
};

const optionalStr: Parser<string | undefined> = (raw, source) => {
  if (raw === undefined || raw === null || raw === '') return undefined;
  return str(raw, source);
};

const int =
  (min: number, max = Number.MAX_SAFE_INTEGER): Parser<number> =>
  (raw, source) => {
    const n = typeof raw === 'number' ? raw : typeof raw === 'string' && raw.trim() !== '' ? Number(raw) : NaN;
    if (!Number.isSafeInteger(n) || n < min || n > max) fail(source, `expected an integer in [${min}, ${max}]`);
    return n;
  };

const bool: Parser<boolean> = (raw, source) => {
  if (typeof raw === 'boolean') return raw;
  if (raw === 'true' || raw === '1' || raw === 'yes') return true;
  if (raw === 'false' || raw === '0' || raw === 'no' || raw === '') return false;
  fail(source, 'expected true or false');
};

const oneOf =
  <T extends string>(...values: T[]): Parser<T> =>
  (raw, source) => {
    if (typeof raw !== 'string' || !values.includes(raw as T)) fail(source, `expected one of ${values.join(', ')}`);
    return raw as T;
  };

/** Declarative table: the README's configuration table mirrors this list. */
const SETTINGS = {
  host: { env: 'FASTPULL_HOST', default: '0.0.0.0', parse: str },
  port: { env: 'FASTPULL_PORT', default: 8080, parse: int(0, 65535) },
  dataDir: { env: 'FASTPULL_DATA_DIR', default: './data', parse: str },
  adminToken: { env: 'FASTPULL_ADMIN_TOKEN', default: undefined, parse: optionalStr },
  logLevel: {
    env: 'FASTPULL_LOG_LEVEL',
    default: 'info',
    parse: oneOf('trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'),
  },
  notFoundMaxAge: { env: 'FASTPULL_NOT_FOUND_MAX_AGE', default: 60, parse: int(0) },
  nameMaxAge: { env: 'FASTPULL_NAME_MAX_AGE', default: 300, parse: int(0) },
  layoutMaxAge: { env: 'FASTPULL_LAYOUT_MAX_AGE', default: 3600, parse: int(0) },
  maxUploadBytes: { env: 'FASTPULL_MAX_UPLOAD_BYTES', default: 64 * 1024 ** 3, parse: int(1) },
  trustProxy: { env: 'FASTPULL_TRUST_PROXY', default: false, parse: bool },
} satisfies Record<string, Setting<unknown>>;

type Settings = typeof SETTINGS;
export type Config = { [K in keyof Settings]: ReturnType<Settings[K]['parse']> } & {
  /** Absolute path of the config file that was read, if any. */
  configFile: string | undefined;
};

export const SETTING_ENV_NAMES: Record<keyof Settings, string> = Object.fromEntries(
  Object.entries(SETTINGS).map(([k, s]) => [k, s.env]),
) as Record<keyof Settings, string>;

/**
 * Builds the configuration. `overrides` win over everything (tests use it);
 * `env` defaults to process.env so callers never touch it themselves.
 */
export function loadConfig(
  overrides: Partial<Config> = {},
  env: NodeJS.ProcessEnv = process.env,
): Config {
  const configFile = env.FASTPULL_CONFIG ? path.resolve(env.FASTPULL_CONFIG) : undefined;
  let fileValues: Record<string, unknown> = {};
  if (configFile) {
    try {
      fileValues = JSON.parse(readFileSync(configFile, 'utf8')) as Record<string, unknown>;
    } catch (err) {
      throw new Error(`cannot read config file ${configFile}: ${(err as Error).message}`, { cause: err });
    }
    if (typeof fileValues !== 'object' || fileValues === null || Array.isArray(fileValues)) {
      throw new Error(`config file ${configFile} must hold a JSON object`);
    }
    for (const key of Object.keys(fileValues)) {
      if (!(key in SETTINGS) && !key.startsWith('$')) throw new Error(`config file ${configFile}: unknown setting "${key}"`);
    }
  }

  const out: Record<string, unknown> = { configFile };
  for (const [key, setting] of Object.entries(SETTINGS) as [string, Setting<unknown>][]) {
    let value: unknown = setting.default;
    if (key in fileValues) value = setting.parse(fileValues[key], `${key} in ${configFile}`);
    const fromEnv = env[setting.env];
    if (fromEnv !== undefined) value = setting.parse(fromEnv, setting.env);
    if (key in overrides) value = (overrides as Record<string, unknown>)[key];
    out[key] = value;
  }
  const config = out as Config;
  config.dataDir = path.resolve(config.dataDir);
  return config;
}
