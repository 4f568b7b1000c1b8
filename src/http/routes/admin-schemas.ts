/**
 * Route schemas of the admin API, for the OpenAPI document.
 *
 * They describe rather than police: the handlers validate names, hashes and sizes themselves and answer with
 * specific codes (BAD_FILENAME, BAD_HASH), which a schema failure (BAD_REQUEST) would replace. Shared
 * shapes live in ../schemas.ts; errorResponses() lists, per status, the codes a route can answer with.
 */
import { AUTH_ERRORS, errorResponses, ref, SHARED_SCHEMAS } from '../schemas.js';

/** Shared with the public status/search API, which lists the same download paths. */
export const urls = ref('DownloadPaths');

const hex128 = { type: 'string', description: '128 lower-case hex digits' } as const;

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
    size: { type: 'integer', minimum: 0, maximum: Number.MAX_SAFE_INTEGER, description: 'expected size in bytes' },
    sha512: hex128,
    blake2b: hex128,
    sha256: { type: 'string', description: '64 lower-case hex digits' },
  },
} as const;

/** Not validated by fastify (the body is a stream); the OpenAPI transform turns it into a requestBody. */
const rawBody = {
  description: 'The file itself, streamed and never buffered; any Content-Type is accepted and ignored.',
} as const;

const rawBodyNote = '201 when the blob is new, 200 when it was already stored; the name is attached either way.';

const ingested = (description: string) => ({ ...ref('IngestResult'), description });

const UPLOAD_ERRORS = [
  'BAD_REQUEST',
  'BAD_HASH',
  ...AUTH_ERRORS,
  'PAYLOAD_TOO_LARGE',
  'DIGEST_MISMATCH',
  'RATE_LIMITED',
  'READ_ONLY',
  'INSUFFICIENT_STORAGE',
] as const;

export const ADMIN_SCHEMAS = {
  uploadByName: {
    operationId: 'uploadDistfile',
    summary: 'Upload a distfile under a name',
    description: rawBodyNote,
    tags: ['distfiles'],
    params: filenameParams,
    querystring: declaredDigests,
    rawBody,
    response: {
      200: ingested('already stored; the name now points at it'),
      201: ingested('stored'),
      ...errorResponses(...UPLOAD_ERRORS, 'BAD_FILENAME'),
    },
  },
  uploadByHash: {
    operationId: 'uploadBlob',
    summary: 'Upload a blob by its SHA512, with no name (pinned: kept by gc)',
    description: 'The body must hash to the SHA512 in the path. 201 when the blob is new, 200 when it was already stored.',
    tags: ['distfiles'],
    params: sha512Params,
    querystring: declaredDigests,
    rawBody,
    response: {
      200: ingested('already stored'),
      201: ingested('stored'),
      ...errorResponses(...UPLOAD_ERRORS),
    },
  },
  link: {
    operationId: 'linkName',
    summary: 'Point a name at an already stored blob',
    tags: ['distfiles'],
    response: {
      200: ingested('the name now points at the blob'),
      ...errorResponses('BAD_REQUEST', 'BAD_FILENAME', 'BAD_HASH', ...AUTH_ERRORS, 'BLOB_NOT_FOUND', 'PAYLOAD_TOO_LARGE', 'RATE_LIMITED', 'READ_ONLY'),
    },
  },
  getName: {
    operationId: 'getName',
    summary: 'A name: the hash it serves now and every hash it has had',
    tags: ['distfiles'],
    params: filenameParams,
    response: {
      200: {
        type: 'object',
        description: 'the name and its history',
        properties: {
          filename: { type: 'string' },
          current: {
            type: 'object',
            nullable: true,
            description: 'null when every hash has been detached',
            properties: {
              ...SHARED_SCHEMAS[2].properties,
              attachedAt: { type: 'string', format: 'date-time' },
              attachedBy: { type: 'string', nullable: true },
              quarantined: { type: 'boolean' },
            },
            additionalProperties: true,
          },
          history: { type: 'array', items: ref('NameEntry') },
        },
        required: ['filename', 'current', 'history'],
        additionalProperties: true,
      },
      ...errorResponses('BAD_FILENAME', ...AUTH_ERRORS, 'NAME_NOT_FOUND', 'RATE_LIMITED'),
    },
  },
  deleteName: {
    operationId: 'detachName',
    summary: 'Detach every hash from a name (the blobs stay; hash paths keep working)',
    tags: ['distfiles'],
    params: filenameParams,
    response: {
      200: {
        type: 'object',
        description: 'detached',
        properties: { filename: { type: 'string' }, detached: { type: 'integer', description: 'pairs detached' } },
        required: ['filename', 'detached'],
        additionalProperties: true,
      },
      ...errorResponses('BAD_FILENAME', ...AUTH_ERRORS, 'NAME_NOT_FOUND', 'RATE_LIMITED', 'READ_ONLY'),
    },
  },
  getBlob: {
    operationId: 'getBlob',
    summary: 'A stored blob: digests, state and every name it has had',
    tags: ['distfiles'],
    params: sha512Params,
    response: {
      200: {
        type: 'object',
        description: 'the blob',
        properties: {
          ...SHARED_SCHEMAS[2].properties,
          ingestedAt: { type: 'string', format: 'date-time' },
          verifiedAt: { type: 'string', format: 'date-time', nullable: true },
          quarantined: { type: 'boolean' },
          pinned: { type: 'boolean' },
          names: { type: 'array', items: ref('NameEntry') },
        },
        required: ['size', 'sha512', 'blake2b', 'sha256', 'urls', 'ingestedAt', 'quarantined', 'pinned', 'names'],
        additionalProperties: true,
      },
      ...errorResponses('BAD_HASH', ...AUTH_ERRORS, 'BLOB_NOT_FOUND', 'RATE_LIMITED'),
    },
  },
} as const;

const fetchItem = {
  type: 'object',
  properties: {
    url: { type: 'string', description: 'http(s) URL to download' },
    filename: { type: 'string', description: 'name to attach to the downloaded bytes' },
    size: { type: 'integer', minimum: 0 },
    sha512: hex128,
    blake2b: hex128,
    mirrors: { type: 'array', maxItems: 16, items: { type: 'string' }, description: 'further URLs of the same file, tried in order' },
  },
  required: ['url', 'filename'],
  additionalProperties: false,
} as const;

export const FETCH_SCHEMAS = {
  create: {
    operationId: 'createFetchJob',
    summary: 'Queue downloads by URL (the origin fetches, verifies and stores them)',
    description:
      'Declared digests are verified; without them the first good download is stored and its URL remembered. ' +
      'The body may also be a bare array of items, or one item. Answers at once with the queued job; ' +
      'poll the Location header for progress.',
    tags: ['fetches'],
    // Documentation only: the handler parses the body itself, so each problem gets its precise code.
    docBody: {
      oneOf: [
        { type: 'object', properties: { items: { type: 'array', minItems: 1, maxItems: 1000, items: fetchItem } }, required: ['items'] },
        { type: 'array', minItems: 1, maxItems: 1000, items: fetchItem },
        fetchItem,
      ],
    },
    response: {
      202: {
        ...ref('FetchJob'),
        description: 'queued',
        headers: { location: { type: 'string', description: 'where to poll the job: /api/v1/fetches/{id}' } },
      },
      ...errorResponses('BAD_REQUEST', 'BAD_URL', 'BAD_FILENAME', 'BAD_HASH', ...AUTH_ERRORS, 'PAYLOAD_TOO_LARGE', 'READ_ONLY', 'INSUFFICIENT_STORAGE'),
    },
  },
  get: {
    operationId: 'getFetchJob',
    summary: 'A fetch job: per item queued, downloading (bytes, total), done (digests, source) or failed (reason)',
    tags: ['fetches'],
    params: { type: 'object', properties: { id: { type: 'string' } }, required: ['id'] },
    response: {
      200: { ...ref('FetchJob'), description: 'the job' },
      ...errorResponses(...AUTH_ERRORS, 'JOB_NOT_FOUND'),
    },
  },
  upstreams: {
    operationId: 'listUpstreams',
    summary: 'Pull-through mirrors, their circuit-breaker state and the upstream counters',
    tags: ['fetches'],
    response: {
      200: { ...ref('Upstreams'), description: 'mirrors and counters' },
      ...errorResponses(...AUTH_ERRORS),
    },
  },
} as const;
