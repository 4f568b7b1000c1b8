import { readFileSync } from 'node:fs';
import { isIP } from 'node:net';
import { availableParallelism } from 'node:os';
import path from 'node:path';
import { parse as parseYaml } from 'yaml';

/**
 * The only module that reads process.env.
 * Precedence: built-in defaults < config file (FASTPULL_CONFIG: JSON, or YAML by its .yaml/.yml extension)
 * < FASTPULL_* environment variables.
 */

/** A setting or the config file is wrong: the CLI names it and exits 2, like a bad flag. */
export class ConfigError extends Error {}

type Parser<T> = (raw: unknown, source: string) => T;

interface Setting<T> {
  env: string;
  default: T;
  parse: Parser<T>;
}

function fail(source: string, message: string): never {
  throw new ConfigError(`invalid configuration ${source}: ${message}`);
}

const str: Parser<string> = (raw, source) => {
  if (typeof raw !== 'string') fail(source, 'expected a string');
  return raw;
};

const optionalStr: Parser<string | undefined> = (raw, source) => {
  if (raw === undefined || raw === null || raw === '') return undefined;
  return str(raw, source);
};

/** For settings whose default is "unset": null in the file (or an empty variable) means that default. */
const optional =
  <T>(parse: Parser<T>): Parser<T | undefined> =>
  (raw, source) =>
    raw === undefined || raw === null || raw === '' ? undefined : parse(raw, source);

/** A path, or null (in the file) to turn the feature off; unset means the built-in place. */
const pathOrOff: Parser<string | null | undefined> = (raw, source) => (raw === null ? null : optionalStr(raw, source));

const int =
  (min: number, max = Number.MAX_SAFE_INTEGER): Parser<number> =>
  (raw, source) => {
    const n = typeof raw === 'number' ? raw : typeof raw === 'string' && raw.trim() !== '' ? Number(raw) : NaN;
    if (!Number.isSafeInteger(n) || n < min || n > max) fail(source, `expected an integer in [${min}, ${max}]`);
    return n;
  };

/** A process count: a positive integer, or `auto` for one per available CPU. */
const workerCount: Parser<number> = (raw, source) => {
  if (raw === 'auto') return availableParallelism();
  return int(1, 256)(raw, source);
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

export type UpstreamKind = 'gentoo' | 'fastpull' | 'flat';
export interface UpstreamMirror {
  kind: UpstreamKind;
  url: string;
}

/** `[{"kind":"gentoo","url":"https://…"}]` (file or env) or, in env, `gentoo=https://…,flat=https://…`. */
const upstreamList: Parser<UpstreamMirror[]> = (raw, source) => {
  let items: unknown = raw;
  if (typeof raw === 'string') {
    const text = raw.trim();
    if (text === '') return [];
    let parsed: unknown;
    if (text.startsWith('[')) {
      try {
        parsed = JSON.parse(text);
      } catch (err) {
        fail(source, `not valid JSON (${(err as Error).message}); expected [{"kind":"gentoo","url":"https://…"}] or gentoo=https://…,flat=https://…`);
      }
    }
    items = text.startsWith('[')
      ? parsed
      : text.split(',').map((part) => {
          const eq = part.indexOf('=');
          return eq === -1 ? { kind: 'flat', url: part.trim() } : { kind: part.slice(0, eq).trim(), url: part.slice(eq + 1).trim() };
        });
  }
  if (!Array.isArray(items)) fail(source, 'expected a list of upstream mirrors');
  return items.map((item: unknown, i) => {
    const { kind, url } = (item ?? {}) as Record<string, unknown>;
    if (kind !== 'gentoo' && kind !== 'fastpull' && kind !== 'flat') fail(source, `mirror ${i}: kind must be gentoo, fastpull or flat`);
    if (typeof url !== 'string' || !/^https?:\/\/./.test(url)) fail(source, `mirror ${i}: url must be http(s)`);
    return { kind, url: url.replace(/\/+$/, '') };
  });
};

/** Splits `a.b.c.d/n` or `<ipv6>/n` (a bare address is a /32 or /128); throws a plain message. */
export function parseCidr(text: string): readonly [string, number] {
  const slash = text.indexOf('/');
  const network = (slash === -1 ? text : text.slice(0, slash)).trim();
  const family = isIP(network);
  if (family === 0) throw new Error(`"${text}" is not an IPv4 or IPv6 address or CIDR`);
  const max = family === 4 ? 32 : 128;
  const prefixText = slash === -1 ? String(max) : text.slice(slash + 1).trim();
  if (!/^\d{1,3}$/.test(prefixText) || Number(prefixText) > max) throw new Error(`"${text}" needs a prefix length from 0 to ${max}`);
  return [network, Number(prefixText)];
}

/** `127.0.0.0/8,::1/128` (env) or a JSON list (file): each entry validated, returned normalised. */
const cidrList: Parser<string[]> = (raw, source) => {
  const items = typeof raw === 'string' ? raw.split(',').map((s) => s.trim()).filter((s) => s !== '') : raw;
  if (!Array.isArray(items)) fail(source, 'expected a comma-separated list of CIDRs such as 127.0.0.0/8,::1/128');
  return items.map((item: unknown) => {
    if (typeof item !== 'string') fail(source, 'expected a list of CIDR strings');
    try {
      const [network, prefix] = parseCidr(item);
      return `${network}/${prefix}`;
    } catch (err) {
      fail(source, (err as Error).message);
    }
  });
};

/**
 * Which connecting peers may set X-Forwarded-For: `false` (nobody), the proxies' addresses or CIDRs
 * (`127.0.0.1,10.0.0.0/8`), or a number of proxy hops. `true` is refused: it would believe a value
 * any client wrote, handing out fresh admin rate-limit allowances and forged log addresses.
 */
export type TrustProxy = false | number | string[];
const trustProxy: Parser<TrustProxy> = (raw, source) => {
  if (raw === false || raw === 'false' || raw === '0' || raw === 'no' || raw === '' || raw === 0) return false;
  if (raw === true || raw === 'true' || raw === 'yes') {
    fail(
      source,
      'true would believe an X-Forwarded-For written by any client; give the proxies\' addresses or CIDRs ' +
        '(e.g. 127.0.0.1,10.0.0.0/8) or the number of proxy hops in front of the origin (e.g. 1)',
    );
  }
  if (typeof raw === 'number' || (typeof raw === 'string' && /^\d+$/.test(raw.trim()))) return int(1, 16)(raw, source);
  return cidrList(raw, source);
};

/** Where blobs live: the local store under the data dir (default), or an S3-compatible bucket. */
export type StorageLocation = { kind: 'local' } | { kind: 's3'; bucket: string; prefix: string };

/** `s3://BUCKET[/PREFIX]`; unset or empty keeps today's `<dataDir>/blobs`. */
const storageLocation: Parser<StorageLocation> = (raw, source) => {
  if (raw === undefined || raw === null || raw === '') return { kind: 'local' };
  const m = /^s3:\/\/([^/]*)(?:\/(.*))?$/.exec(str(raw, source).trim());
  if (!m) fail(source, 'expected s3://BUCKET[/PREFIX] (unset keeps blobs in <dataDir>/blobs)');
  const bucket = m[1]!;
  if (!/^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/.test(bucket)) fail(source, `"${bucket}" is not an S3 bucket name (3-63 of a-z 0-9 . -)`);
  const prefix = (m[2] ?? '').replace(/\/+$/, '');
  // eslint-disable-next-line no-control-regex
  if (prefix !== '' && (prefix.split('/').some((s) => s === '' || s === '.' || s === '..') || /[\u0000-\u001f\u007f\\]/.test(prefix))) {
    fail(source, `prefix "${prefix}" must be plain path segments`);
  }
  return { kind: 's3', bucket, prefix };
};

/** The same rule for a location given on a command line (`migrate-storage --to`); `source` names it in errors. */
export function parseStorageLocation(raw: string, source: string): StorageLocation {
  return storageLocation(raw, source);
}

/** `postgres://…` or `postgresql://…` selects the PostgreSQL index; unset keeps `<dataDir>/index.sqlite`. */
const databaseUrl: Parser<string | undefined> = (raw, source) => {
  const text = optionalStr(raw, source);
  if (text !== undefined && !/^postgres(ql)?:\/\/./.test(text)) {
    fail(source, 'expected postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE (unset keeps the index in <dataDir>/index.sqlite)');
  }
  return text;
};

const httpUrl: Parser<string | undefined> = (raw, source) => {
  const text = optionalStr(raw, source);
  if (text !== undefined && !/^https?:\/\/[^/]/.test(text)) fail(source, 'expected an http(s) URL');
  return text;
};

/** `https://a/hook https://b/hook` or `a,b` (env), or a JSON array of URLs (file or env). */
const urlList: Parser<string[]> = (raw, source) => {
  let items: unknown = raw;
  if (typeof raw === 'string') {
    const text = raw.trim();
    items = text === '' ? [] : text.startsWith('[') ? JSON.parse(text) : text.split(/[\s,]+/).filter(Boolean);
  }
  if (!Array.isArray(items)) fail(source, 'expected a list of URLs');
  return items.map((url: unknown, i) => {
    if (typeof url !== 'string' || !/^https?:\/\/./.test(url)) fail(source, `URL ${i}: must be http(s)`);
    return url;
  });
};

/** Declarative table: the README's configuration table mirrors this list. */
const SETTINGS = {
  host: { env: 'FASTPULL_HOST', default: '0.0.0.0', parse: str },
  port: { env: 'FASTPULL_PORT', default: 8080, parse: int(0, 65535) },
  workers: { env: 'FASTPULL_WORKERS', default: 1, parse: workerCount },
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
  trustProxy: { env: 'FASTPULL_TRUST_PROXY', default: false as TrustProxy, parse: trustProxy },

  // Upstream fetching (fetch jobs and pull-through).
  upstreams: { env: 'FASTPULL_UPSTREAMS', default: [] as UpstreamMirror[], parse: upstreamList },
  pullThrough: { env: 'FASTPULL_PULL_THROUGH', default: false, parse: bool },
  fetchConcurrency: { env: 'FASTPULL_FETCH_CONCURRENCY', default: 8, parse: int(1, 1024) },
  fetchPerHostConcurrency: { env: 'FASTPULL_FETCH_PER_HOST', default: 2, parse: int(1, 1024) },
  fetchConnectTimeoutMs: { env: 'FASTPULL_FETCH_CONNECT_TIMEOUT_MS', default: 10_000, parse: int(1) },
  fetchIdleTimeoutMs: { env: 'FASTPULL_FETCH_IDLE_TIMEOUT_MS', default: 30_000, parse: int(1) },
  fetchMaxRedirects: { env: 'FASTPULL_FETCH_MAX_REDIRECTS', default: 5, parse: int(0, 50) },
  fetchRetries: { env: 'FASTPULL_FETCH_RETRIES', default: 3, parse: int(0, 100) },
  negativeCacheSeconds: { env: 'FASTPULL_NEGATIVE_CACHE_SECONDS', default: 60, parse: int(0) },
  upstreamFailureThreshold: { env: 'FASTPULL_UPSTREAM_FAILURE_THRESHOLD', default: 5, parse: int(1) },
  upstreamCooldownSeconds: { env: 'FASTPULL_UPSTREAM_COOLDOWN_SECONDS', default: 30, parse: int(0) },
  /** Non-public ranges outbound fetches may reach anyway (by default only public addresses are). */
  fetchAllowCidrs: { env: 'FASTPULL_FETCH_ALLOW_CIDRS', default: [] as string[], parse: cidrList },

  // Operations.
  metricsPort: { env: 'FASTPULL_METRICS_PORT', default: undefined as number | undefined, parse: optional(int(0, 65535)) },
  readOnly: { env: 'FASTPULL_READ_ONLY', default: false, parse: bool },
  // Unset: <dataDir>/drain. null (file only): no drain file at all; /readyz skips the check, `fastpull drain` refuses.
  drainFile: { env: 'FASTPULL_DRAIN_FILE', default: undefined as string | null | undefined, parse: pathOrOff },
  minFreeBytes: { env: 'FASTPULL_MIN_FREE_BYTES', default: 1024 ** 3, parse: int(0) },
  shutdownGraceMs: { env: 'FASTPULL_SHUTDOWN_GRACE_MS', default: 30_000, parse: int(0) },
  scrubBytesPerSecond: { env: 'FASTPULL_SCRUB_BYTES_PER_SECOND', default: 0, parse: int(0) },
  scrubPauseSeconds: { env: 'FASTPULL_SCRUB_PAUSE_SECONDS', default: 600, parse: int(0) },
  verifyOnServe: { env: 'FASTPULL_VERIFY_ON_SERVE', default: false, parse: bool },
  accelRedirect: { env: 'FASTPULL_ACCEL_REDIRECT', default: undefined as string | undefined, parse: optionalStr },
  gcGraceSeconds: { env: 'FASTPULL_GC_GRACE_SECONDS', default: 86_400, parse: int(0) },
  highWatermarkBytes: { env: 'FASTPULL_HIGH_WATERMARK_BYTES', default: undefined as number | undefined, parse: optional(int(1)) },
  reserveBytes: { env: 'FASTPULL_RESERVE_BYTES', default: 64 * 1024 ** 2, parse: int(0) },
  adminRateLimitPerMinute: { env: 'FASTPULL_ADMIN_RATE_LIMIT', default: 600, parse: int(0) },

  // Events: outbox delivery to webhooks and the CDN (purge, prefetch).
  webhooks: { env: 'FASTPULL_WEBHOOKS', default: [] as string[], parse: urlList },
  webhookSecret: { env: 'FASTPULL_WEBHOOK_SECRET', default: undefined as string | undefined, parse: optionalStr },
  cdn: { env: 'FASTPULL_CDN', default: 'none' as 'none' | 'cdn77' | 'generic', parse: oneOf('none', 'cdn77', 'generic') },
  cdn77ApiUrl: { env: 'FASTPULL_CDN77_API_URL', default: 'https://api.cdn77.com', parse: str },
  cdn77ResourceId: { env: 'FASTPULL_CDN77_RESOURCE_ID', default: undefined as string | undefined, parse: optionalStr },
  cdn77Token: { env: 'FASTPULL_CDN77_TOKEN', default: undefined as string | undefined, parse: optionalStr },
  cdnPurgeUrl: { env: 'FASTPULL_CDN_PURGE_URL', default: undefined as string | undefined, parse: optionalStr },
  cdnPrefetchUrl: { env: 'FASTPULL_CDN_PREFETCH_URL', default: undefined as string | undefined, parse: optionalStr },
  cdnBodyTemplate: { env: 'FASTPULL_CDN_BODY_TEMPLATE', default: '{"action":"{{action}}","paths":{{paths}}}', parse: str },
  cdnAuthorization: { env: 'FASTPULL_CDN_AUTHORIZATION', default: undefined as string | undefined, parse: optionalStr },
  cdnPrefetch: { env: 'FASTPULL_CDN_PREFETCH', default: false, parse: bool },
  cdnMaxPaths: { env: 'FASTPULL_CDN_MAX_PATHS', default: 2000, parse: int(1, 100_000) },
  cdnRequestsPerMinute: { env: 'FASTPULL_CDN_REQUESTS_PER_MINUTE', default: 4, parse: int(1, 60_000) },
  eventTimeoutMs: { env: 'FASTPULL_EVENT_TIMEOUT_MS', default: 15_000, parse: int(100) },
  eventRetryBaseMs: { env: 'FASTPULL_EVENT_RETRY_BASE_MS', default: 1000, parse: int(1) },
  eventRetryMaxMs: { env: 'FASTPULL_EVENT_RETRY_MAX_MS', default: 600_000, parse: int(1) },
  eventMaxAttempts: { env: 'FASTPULL_EVENT_MAX_ATTEMPTS', default: 0, parse: int(0) },
  eventPollMs: { env: 'FASTPULL_EVENT_POLL_MS', default: 1000, parse: int(10) },
  eventRetentionDays: { env: 'FASTPULL_EVENT_RETENTION_DAYS', default: 30, parse: int(0) },

  // Spider-side client (push, coverage): where to send files and with which upload token.
  pushOrigin: { env: 'FASTPULL_ORIGIN', default: undefined as string | undefined, parse: optionalStr },
  pushToken: { env: 'FASTPULL_TOKEN', default: undefined as string | undefined, parse: optionalStr },
  headersTimeoutMs: { env: 'FASTPULL_HEADERS_TIMEOUT_MS', default: 20_000, parse: int(1) },
  idleTimeoutMs: { env: 'FASTPULL_IDLE_TIMEOUT_MS', default: 60_000, parse: int(1) },
  keepAliveTimeoutMs: { env: 'FASTPULL_KEEP_ALIVE_TIMEOUT_MS', default: 72_000, parse: int(1) },
  maxHeaderBytes: { env: 'FASTPULL_MAX_HEADER_BYTES', default: 16 * 1024, parse: int(1024, 1024 * 1024) },

  // Blob storage (issue 9). Credentials come from the AWS SDK's own chain (AWS_ACCESS_KEY_ID, profiles…).
  storage: { env: 'FASTPULL_STORAGE', default: { kind: 'local' } as StorageLocation, parse: storageLocation },
  s3ForcePathStyle: { env: 'FASTPULL_S3_FORCE_PATH_STYLE', default: false, parse: bool },
  s3Endpoint: { env: 'AWS_ENDPOINT_URL_S3', default: undefined as string | undefined, parse: httpUrl },
  s3Region: { env: 'AWS_REGION', default: undefined as string | undefined, parse: optionalStr },
  // Multipart uploads with no new part for this long were left by a dead writer: any replica's sweep aborts them.
  s3AbandonedUploadSeconds: { env: 'FASTPULL_S3_ABANDONED_UPLOAD_SECONDS', default: 3600, parse: int(1) },
  // Local read cache in front of an S3 store: verified when filled, least recently used evicted first.
  cacheDir: { env: 'FASTPULL_CACHE_DIR', default: undefined as string | undefined, parse: optionalStr },
  cacheMaxBytes: { env: 'FASTPULL_CACHE_MAX_BYTES', default: 10 * 1024 ** 3, parse: int(0) },

  // The index (issue 9): PostgreSQL for several replicas; unset = SQLite in the data directory.
  databaseUrl: { env: 'FASTPULL_DATABASE_URL', default: undefined as string | undefined, parse: databaseUrl },
  databasePoolSize: { env: 'FASTPULL_DATABASE_POOL_SIZE', default: 10, parse: int(1, 1000) },
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
    const yaml = /\.ya?ml$/i.test(configFile);
    try {
      const text = readFileSync(configFile, 'utf8');
      // An empty YAML file (everything commented out) is an empty configuration.
      fileValues = ((yaml ? parseYaml(text) : JSON.parse(text)) ?? {}) as Record<string, unknown>;
    } catch (err) {
      throw new ConfigError(`cannot read config file ${configFile} (FASTPULL_CONFIG): ${(err as Error).message}`, { cause: err });
    }
    if (typeof fileValues !== 'object' || Array.isArray(fileValues)) {
      throw new ConfigError(`config file ${configFile} must hold ${yaml ? 'a YAML mapping' : 'a JSON object'} of settings`);
    }
    for (const key of Object.keys(fileValues)) {
      if (!(key in SETTINGS) && !key.startsWith('$')) throw new ConfigError(`config file ${configFile}: unknown setting "${key}"`);
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

/**
 * Set by the cluster primary on each serving process it forks (never by an operator): the one
 * `leader` runs the background work (fetch-job runner, scrub), `follower`s only serve.
 * Undefined in a single-process server, which does everything itself.
 */
export function clusterRole(env: NodeJS.ProcessEnv = process.env): 'leader' | 'follower' | undefined {
  const role = env.FASTPULL_CLUSTER_ROLE;
  return role === 'leader' || role === 'follower' ? role : undefined;
}
