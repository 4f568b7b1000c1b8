import type { ErrorCode } from '../errors.js';
import { STATUS_BY_CODE } from './errors.js';

/**
 * Shared JSON schemas of the API, registered once (app.addSchema) and referenced as `{ $ref: 'Name#' }`
 * by the routes; the OpenAPI document lists them under components.schemas. They describe rather than
 * police: objects keep additionalProperties: true because fast-json-stringify drops any property a
 * schema does not list, and a field added to a handler must not silently vanish from the wire.
 */

const hex128 = { type: 'string', pattern: '^[0-9a-f]{128}$', description: '128 lower-case hex digits' } as const;
const hex64 = { type: 'string', pattern: '^[0-9a-f]{64}$', description: '64 lower-case hex digits' } as const;
const time = { type: 'string', format: 'date-time' } as const;
const nullableTime = { type: 'string', format: 'date-time', nullable: true } as const;
const nullableString = { type: 'string', nullable: true } as const;

export const SHARED_SCHEMAS = [
  {
    $id: 'Error',
    type: 'object',
    description: 'Every error: a stable code from src/errors.ts and a human message; some codes add details.',
    properties: { error: { type: 'string', description: 'the code, e.g. BAD_HASH' }, message: { type: 'string' } },
    required: ['error', 'message'],
    additionalProperties: true,
  },
  {
    $id: 'DownloadPaths',
    type: 'object',
    description: 'Download paths relative to the origin, one per layout form (name forms only when a name is given).',
    properties: {
      contentHash: { type: 'string', description: '/distfiles/ab/cd/ef/<sha512> (GLEP 75 content-hash SHA512 8:8:8)' },
      direct: { type: 'string', description: '/ab/cd/ef/<sha512> (Funtoo SRC_URI)' },
      hash: { type: 'string', description: '/distfiles/<sha512>' },
      filenameHash: { type: 'string', description: '/distfiles/<BLAKE2B of the name, 2 hex>/<name>' },
      flat: { type: 'string', description: '/distfiles/<name>' },
    },
    required: ['contentHash', 'direct', 'hash'],
    additionalProperties: { type: 'string' },
  },
  {
    $id: 'IngestResult',
    type: 'object',
    description: 'What was stored (or was already stored) and where to download it.',
    properties: {
      filename: { type: 'string' },
      size: { type: 'integer', minimum: 0 },
      sha512: hex128,
      blake2b: hex128,
      sha256: hex64,
      urls: { $ref: 'DownloadPaths#' },
    },
    required: ['size', 'sha512', 'blake2b', 'sha256', 'urls'],
    additionalProperties: true,
  },
  {
    $id: 'NameEntry',
    type: 'object',
    description: 'One (name, hash) pair as the index keeps it; detachedAt is null while attached.',
    properties: {
      filename: { type: 'string' },
      sha512: hex128,
      firstAttachedAt: time,
      attachedAt: time,
      attachedBy: { ...nullableString, description: 'token name or cli:<user>' },
      detachedAt: nullableTime,
      detachedBy: nullableString,
    },
    required: ['filename', 'sha512', 'attachedAt'],
    additionalProperties: true,
  },
  {
    $id: 'FetchJob',
    type: 'object',
    description: 'A fetch job and each of its items.',
    properties: {
      id: { type: 'string' },
      state: { type: 'string', enum: ['queued', 'running', 'done', 'partial', 'failed'] },
      createdAt: time,
      createdBy: nullableString,
      counts: {
        type: 'object',
        properties: {
          total: { type: 'integer' },
          queued: { type: 'integer' },
          downloading: { type: 'integer' },
          done: { type: 'integer' },
          failed: { type: 'integer' },
        },
        required: ['total', 'queued', 'downloading', 'done', 'failed'],
        additionalProperties: true,
      },
      items: {
        type: 'array',
        items: {
          type: 'object',
          properties: {
            index: { type: 'integer' },
            url: { type: 'string' },
            mirrors: { type: 'array', items: { type: 'string' } },
            filename: nullableString,
            state: { type: 'string', enum: ['queued', 'downloading', 'done', 'failed'] },
            declared: {
              type: 'object',
              description: 'what the job declared (size, sha512, blake2b)',
              properties: { size: { type: 'integer' }, sha512: hex128, blake2b: hex128 },
              additionalProperties: true,
            },
            bytes: { type: 'integer', description: 'downloading: bytes so far' },
            total: { type: 'integer', nullable: true, description: 'downloading: expected bytes, when known' },
            size: { type: 'integer', description: 'done' },
            sha512: { ...hex128, description: 'done' },
            blake2b: { ...hex128, description: 'done' },
            sha256: { ...hex64, description: 'done' },
            source: { type: 'string', description: 'done: the URL the bytes came from' },
            reason: { type: 'string', description: 'failed: what went wrong with each URL tried' },
            attempts: { type: 'integer' },
          },
          required: ['index', 'url', 'state'],
          additionalProperties: true,
        },
      },
    },
    required: ['id', 'state', 'createdAt', 'counts', 'items'],
    additionalProperties: true,
  },
  {
    $id: 'Upstreams',
    type: 'object',
    description: 'Pull-through mirrors with their circuit-breaker state, and the upstream counters.',
    properties: {
      pullThrough: { type: 'boolean', description: 'whether local misses are fetched from the mirrors' },
      mirrors: {
        type: 'array',
        items: {
          type: 'object',
          properties: {
            kind: { type: 'string', enum: ['gentoo', 'fastpull', 'flat'] },
            url: { type: 'string' },
            open: { type: 'boolean', description: 'breaker open: the mirror is skipped until its cooldown passes' },
            failures: { type: 'integer', description: 'consecutive failures' },
          },
          required: ['kind', 'url', 'open', 'failures'],
          additionalProperties: true,
        },
      },
      counters: { type: 'object', additionalProperties: { type: 'integer' }, description: 'upstream bytes, requests, retries, pull-through hits and misses, …' },
    },
    required: ['pullThrough', 'mirrors', 'counters'],
    additionalProperties: true,
  },
] as const;

export const ref = (id: (typeof SHARED_SCHEMAS)[number]['$id']) => ({ $ref: `${id}#` }) as const;

/** Errors every token-protected route can answer (requireScope). */
export const AUTH_ERRORS = ['UNAUTHORIZED', 'FORBIDDEN'] as const satisfies readonly ErrorCode[];

/**
 * The error responses of a route, one per status, each naming the codes that lead to it, plus `default`
 * for what no client can provoke on purpose (500 INTERNAL). Built from the one code → status table, so
 * the document and the server cannot disagree about which status a code is.
 */
export function errorResponses(...codes: ErrorCode[]): Record<string, { description: string; $ref: string }> {
  const byStatus = new Map<number, ErrorCode[]>();
  for (const code of new Set(codes)) {
    const status = STATUS_BY_CODE[code];
    byStatus.set(status, [...(byStatus.get(status) ?? []), code]);
  }
  const out: Record<string, { description: string; $ref: string }> = {};
  for (const [status, list] of [...byStatus].sort((a, b) => a[0] - b[0])) {
    out[String(status)] = { description: `error ${list.join(', ')}`, $ref: 'Error#' };
  }
  out.default = { description: 'unexpected failure (500 INTERNAL); no internals are included', $ref: 'Error#' };
  return out;
}
