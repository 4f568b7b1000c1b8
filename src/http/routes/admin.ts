import type { FastifyInstance, FastifyRequest } from 'fastify';
import type { Authenticator } from '../../auth/tokens.js';
import type { Config } from '../../config.js';
import type { NameIndex, NameRow } from '../../db/index.js';
import { AppError } from '../../errors.js';
import { assertFilename, assertSha512, type Ingest } from '../../ingest/ingest.js';
import type { Digests, ExpectedDigests } from '../../store/digests.js';
import { isBlake2bHex, isSha256Hex, isSha512Hex } from '../../domain/hashes.js';
import type { UploadLease } from '../../maintenance/watermark.js';
import type { Awaitable } from '../../db/awaitable.js';
import { requireScope } from '../auth.js';
import { installAdminRateLimit } from '../rate-limit.js';
import { downloadPaths } from '../urls.js';
import { ADMIN_SCHEMAS } from './admin-schemas.js';

export interface AdminRouteDeps {
  config: Config;
  index: NameIndex;
  ingest: Ingest;
  auth: Authenticator;
  /** Holds each upload's size against the storage high watermark (507 when it does not fit). */
  storage?:
    | {
        assertAccepting(log?: FastifyRequest['log']): Awaitable<void>;
        admit(declared: number | undefined, log?: FastifyRequest['log']): Awaitable<UploadLease | undefined>;
      }
    | undefined;
}

const iso = (ms: number | null) => (ms === null ? null : new Date(ms).toISOString());

function nameView(row: NameRow) {
  return {
    filename: row.filename,
    sha512: row.sha512,
    firstAttachedAt: iso(row.first_attached_at),
    attachedAt: iso(row.attached_at),
    attachedBy: row.attached_by,
    detachedAt: iso(row.detached_at),
    detachedBy: row.detached_by,
  };
}

export function ingestView(digests: Digests, filename?: string) {
  return {
    ...(filename !== undefined ? { filename } : {}),
    size: digests.size,
    sha512: digests.sha512,
    blake2b: digests.blake2b,
    sha256: digests.sha256,
    urls: downloadPaths(digests.sha512, filename),
  };
}

const DECLARABLE_HASHES = { sha512: isSha512Hex, blake2b: isBlake2bHex, sha256: isSha256Hex } as const;
/** The upload routes' whole query vocabulary (strictQueryOnWrites refuses anything else). */
const UPLOAD_QUERY = { query: ['size', ...Object.keys(DECLARABLE_HASHES)] };

/** Reads `size`, `sha512`, `blake2b`, `sha256` from the query string, as written in a Manifest DIST line. */
function declaredDigests(query: Record<string, string | string[] | undefined>): ExpectedDigests {
  // strictQueryOnWrites has already refused unknown and repeated parameters, so each value is one string.
  const expected: ExpectedDigests = {};
  const size = query.size as string | undefined;
  if (size !== undefined) {
    if (!/^\d{1,16}$/.test(size)) throw new AppError('BAD_REQUEST', 'size must be a non-negative integer');
    expected.size = Number(size);
  }
  for (const [key, valid] of Object.entries(DECLARABLE_HASHES) as [keyof typeof DECLARABLE_HASHES, (v: string) => boolean][]) {
    const raw = query[key] as string | undefined;
    if (raw === undefined) continue;
    const value = raw.toLowerCase();
    if (!valid(value)) throw new AppError('BAD_HASH', `${key} must be ${key === 'sha256' ? 64 : 128} hex digits`);
    expected[key] = value;
  }
  return expected;
}

/** Refuses, before reading a byte, a body the Content-Length already shows to be too large or the wrong size. */
function precheckLength(request: FastifyRequest, maxBytes: number, expected: ExpectedDigests): void {
  const header = request.headers['content-length'];
  if (header === undefined) return;
  const length = Number(header);
  if (length > maxBytes) {
    throw new AppError('PAYLOAD_TOO_LARGE', `body exceeds the upload limit of ${maxBytes} bytes`, { limit: maxBytes });
  }
  if (expected.size !== undefined && length !== expected.size) {
    throw new AppError('DIGEST_MISMATCH', 'Content-Length differs from the declared size', {
      mismatches: [{ field: 'size', expected: expected.size, actual: length }],
    });
  }
}

export async function adminRoutes(app: FastifyInstance, deps: AdminRouteDeps): Promise<void> {
  const { config, index, ingest, auth, storage } = deps;
  const canRead = requireScope(auth, 'read-api');
  const canUpload = requireScope(auth, 'upload');
  const canAdmin = requireScope(auth, 'admin');
  /** Holds the declared size (?size=, else Content-Length) before a byte is read; an undeclared body is held as it arrives. */
  const admit = (request: FastifyRequest, expected: ExpectedDigests): Awaitable<UploadLease | undefined> => {
    const header = request.headers['content-length'];
    const length = header !== undefined && /^\d+$/.test(header) ? Number(header) : undefined;
    return storage?.admit(expected.size ?? length, request.log);
  };

  app.addHook('onRequest', async (request) => {
    request.routeKind = 'api';
  });
  await installAdminRateLimit(app, config);

  // Upload routes stream the raw body: no parser may buffer it, whatever Content-Type the client sends.
  await app.register(async (uploads) => {
    uploads.removeAllContentTypeParsers();
    uploads.addContentTypeParser('*', (_request, payload, done) => done(null, payload));

    uploads.put<{ Params: { filename: string }; Querystring: Record<string, string | string[] | undefined> }>(
      '/distfiles/:filename',
      { onRequest: canUpload, schema: ADMIN_SCHEMAS.uploadByName, config: UPLOAD_QUERY },
      async (request, reply) => {
        const { filename } = request.params;
        assertFilename(filename);
        const expected = declaredDigests(request.query);
        const lease = await admit(request, expected);
        try {
          precheckLength(request, config.maxUploadBytes, expected);
          const result = await ingest.ingest(request.raw, {
            filename,
            expected,
            maxBytes: config.maxUploadBytes,
            by: request.principal?.name ?? null,
            ...(lease ? { lease } : {}),
          });
          return await reply.code(result.created ? 201 : 200).send(ingestView(result.digests, filename));
        } finally {
          lease?.release();
        }
      },
    );

    uploads.put<{ Params: { sha512: string }; Querystring: Record<string, string | string[] | undefined> }>(
      '/blobs/:sha512',
      { onRequest: canUpload, schema: ADMIN_SCHEMAS.uploadByHash, config: UPLOAD_QUERY },
      async (request, reply) => {
        const sha512 = request.params.sha512;
        assertSha512(sha512);
        const expected = { ...declaredDigests(request.query), sha512 };
        const lease = await admit(request, expected);
        try {
          precheckLength(request, config.maxUploadBytes, expected);
          const result = await ingest.ingest(request.raw, {
            expected,
            maxBytes: config.maxUploadBytes,
            by: request.principal?.name ?? null,
            pinned: true,
            ...(lease ? { lease } : {}),
          });
          return await reply.code(result.created ? 201 : 200).send(ingestView(result.digests));
        } finally {
          lease?.release();
        }
      },
    );
  });

  app.post<{ Body: { filename: string; sha512: string } }>(
    '/links',
    {
      onRequest: canUpload,
      schema: {
        ...ADMIN_SCHEMAS.link,
        body: {
          type: 'object',
          required: ['filename', 'sha512'],
          additionalProperties: false,
          properties: { filename: { type: 'string' }, sha512: { type: 'string' } },
        },
      },
    },
    async (request, reply) => {
      const { filename, sha512 } = request.body;
      const digests = await ingest.link(filename, sha512, request.principal?.name ?? null);
      return reply.code(200).send(ingestView(digests, filename));
    },
  );

  app.get<{ Params: { filename: string } }>('/distfiles/:filename', { onRequest: canRead, schema: ADMIN_SCHEMAS.getName }, async (request) => {
    const { filename } = request.params;
    assertFilename(filename);
    const history = await index.history(filename);
    if (history.length === 0) throw new AppError('NAME_NOT_FOUND', 'that name has never been seen', { filename });
    const current = history.find((row) => row.detached_at === null);
    const blob = current ? await index.blob(current.sha512) : undefined;
    return {
      filename,
      current: blob
        ? {
            ...ingestView(blob, filename),
            attachedAt: iso(current!.attached_at),
            attachedBy: current!.attached_by,
            quarantined: blob.quarantined_at !== null,
          }
        : null,
      history: history.map(nameView),
    };
  });

  app.delete<{ Params: { filename: string } }>('/distfiles/:filename', { onRequest: canAdmin, schema: ADMIN_SCHEMAS.deleteName }, async (request) => {
    const { filename } = request.params;
    const detached = await ingest.detach(filename, request.principal?.name ?? null);
    return { filename, detached };
  });

  app.get<{ Params: { sha512: string } }>('/blobs/:sha512', { onRequest: canRead, schema: ADMIN_SCHEMAS.getBlob }, async (request) => {
    const { sha512 } = request.params;
    assertSha512(sha512);
    const blob = await index.blob(sha512);
    if (!blob) throw new AppError('BLOB_NOT_FOUND', 'no stored blob has that sha512', { sha512 });
    const names = await index.namesOfBlob(sha512);
    return {
      ...ingestView(blob),
      ingestedAt: iso(blob.ingested_at),
      verifiedAt: iso(blob.verified_at),
      quarantined: blob.quarantined_at !== null,
      pinned: blob.pinned === 1,
      names: names.map(nameView),
    };
  });
}
