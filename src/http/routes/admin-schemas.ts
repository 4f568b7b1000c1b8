/**
 * Route schemas of the admin API, for the OpenAPI document.
 *
 * They describe rather than police: the handlers validate names, hashes and sizes themselves and answer with
 * specific codes (BAD_FILENAME, BAD_HASH), which a schema failure (BAD_REQUEST) would replace. Response
 * objects keep additionalProperties: true because fast-json-stringify drops any property a schema does not
 * list, and a field added to a handler must not silently vanish from the wire.
 */

export const errorSchema = {
  type: 'object',
  description: 'Every error: a stable code from src/errors.ts and a human message; some codes add details.',
  properties: { error: { type: 'string' }, message: { type: 'string' } },
  required: ['error', 'message'],
  additionalProperties: true,
} as const;

const errors = { '4xx': errorSchema, '5xx': errorSchema } as const;

const hex128 = { type: 'string', description: '128 lower-case hex digits' } as const;
const time = { type: 'string', format: 'date-time' } as const;
const nullableTime = { type: 'string', format: 'date-time', nullable: true } as const;
const nullableString = { type: 'string', nullable: true } as const;

/** Shared with the public status/search API, which lists the same download paths. */
export const urls = {
  type: 'object',
  description: 'Download paths relative to the origin, one per layout form (name forms only when a name is given).',
  properties: {
    contentHash: { type: 'string' },
    direct: { type: 'string' },
    hash: { type: 'string' },
    filenameHash: { type: 'string' },
    flat: { type: 'string' },
  },
  required: ['contentHash', 'direct', 'hash'],
  additionalProperties: { type: 'string' },
} as const;

const ingestProperties = {
  filename: { type: 'string' },
  size: { type: 'integer' },
  sha512: hex128,
  blake2b: hex128,
  sha256: { type: 'string', description: '64 lower-case hex digits' },
  urls,
} as const;

const ingestResult = {
  type: 'object',
  properties: ingestProperties,
  required: ['size', 'sha512', 'blake2b', 'sha256', 'urls'],
  additionalProperties: true,
} as const;

const nameEntry = {
  type: 'object',
  properties: {
    filename: { type: 'string' },
    sha512: hex128,
    firstAttachedAt: time,
    attachedAt: time,
    attachedBy: nullableString,
    detachedAt: nullableTime,
    detachedBy: nullableString,
  },
  required: ['filename', 'sha512', 'attachedAt'],
  additionalProperties: true,
} as const;

const filenameParams = {
  type: 'object',
  properties: { filename: { type: 'string', description: 'the distfile name, percent-encoded in the path' } },
  required: ['filename'],
} as const;

const sha512Params = {
  type: 'object',
  properties: { sha512: hex128 },
  required: ['sha512'],
} as const;

const declaredDigests = {
  type: 'object',
  description: 'Optional digests as in a Manifest DIST line; the upload is refused (422) unless the bytes match.',
  properties: {
    size: { type: 'string', description: 'expected size in bytes' },
    sha512: hex128,
    blake2b: hex128,
    sha256: { type: 'string', description: '64 lower-case hex digits' },
  },
} as const;

const rawBodyNote =
  'The request body is the raw file (any Content-Type, streamed, never buffered). ' +
  '201 when the blob is new, 200 when it was already stored.';

export const ADMIN_SCHEMAS = {
  uploadByName: {
    summary: 'Upload a distfile under a name',
    description: rawBodyNote,
    tags: ['distfiles'],
    params: filenameParams,
    querystring: declaredDigests,
    response: { 200: ingestResult, 201: ingestResult, ...errors },
  },
  uploadByHash: {
    summary: 'Upload a blob by its SHA512, with no name (pinned: kept by gc)',
    description: rawBodyNote,
    tags: ['distfiles'],
    params: sha512Params,
    querystring: declaredDigests,
    response: { 200: ingestResult, 201: ingestResult, ...errors },
  },
  link: {
    summary: 'Point a name at an already stored blob',
    tags: ['distfiles'],
    response: { 200: ingestResult, ...errors },
  },
  getName: {
    summary: 'A name: the hash it serves now and every hash it has had',
    tags: ['distfiles'],
    params: filenameParams,
    response: {
      200: {
        type: 'object',
        properties: {
          filename: { type: 'string' },
          current: {
            type: 'object',
            nullable: true,
            description: 'null when every hash has been detached',
            properties: { ...ingestProperties, attachedAt: time, attachedBy: nullableString, quarantined: { type: 'boolean' } },
            additionalProperties: true,
          },
          history: { type: 'array', items: nameEntry },
        },
        required: ['filename', 'current', 'history'],
        additionalProperties: true,
      },
      ...errors,
    },
  },
  deleteName: {
    summary: 'Detach every hash from a name (the blobs stay; hash paths keep working)',
    tags: ['distfiles'],
    params: filenameParams,
    response: {
      200: {
        type: 'object',
        properties: { filename: { type: 'string' }, detached: { type: 'integer', description: 'pairs detached' } },
        required: ['filename', 'detached'],
        additionalProperties: true,
      },
      ...errors,
    },
  },
  getBlob: {
    summary: 'A stored blob: digests, state and every name it has had',
    tags: ['distfiles'],
    params: sha512Params,
    response: {
      200: {
        type: 'object',
        properties: {
          ...ingestProperties,
          ingestedAt: time,
          verifiedAt: nullableTime,
          quarantined: { type: 'boolean' },
          pinned: { type: 'boolean' },
          names: { type: 'array', items: nameEntry },
        },
        required: ['size', 'sha512', 'blake2b', 'sha256', 'urls', 'ingestedAt', 'quarantined', 'pinned', 'names'],
        additionalProperties: true,
      },
      ...errors,
    },
  },
} as const;
