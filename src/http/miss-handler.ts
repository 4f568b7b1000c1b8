import type { FastifyReply, FastifyRequest } from 'fastify';
import type { Config } from '../config.js';
import type { NameIndex } from '../db/index.js';
import { AppError } from '../errors.js';
import type { Flight, PullFlight, PullThrough } from '../ingest/pull-through.js';
import type { BlobSource } from '../store/remote-reader.js';
import { sendError } from './errors.js';
import type { BlobTarget } from '../domain/target.js';
import { lookup, type MissHandler } from './routes/read.js';
import { contentDisposition, IMMUTABLE, sendBlob } from './send.js';

/** A request that cannot stream along waits this long for the pull to be committed. */
export const WAITER_MAX_WAIT_MS = 20_000;

/**
 * Answers local misses from upstream mirrors.
 *
 * A plain GET that arrives before the first upstream byte streams along with the download
 * (status and headers as soon as the upstream answered). Everything else — HEAD, Range and
 * conditional requests, and requests arriving once bytes flow — waits for the commit (bounded)
 * and is then served from the store with the normal read path, so ranges and validators are exact.
 */
export function createMissHandler(pull: PullThrough, deps: { config: Config; index: NameIndex; source: BlobSource }): MissHandler {
  const nameCacheControl = `public, max-age=${deps.config.nameMaxAge}`;

  async function streamAlong(flight: PullFlight, stream: NonNullable<ReturnType<Flight['subscribe']>>, target: BlobTarget, reply: FastifyReply) {
    const head = await flight.head;
    if (!head) {
      stream.destroy();
      return false;
    }
    reply.headers({
      'content-type': 'application/octet-stream',
      'cache-control': target.kind === 'hash' ? IMMUTABLE : nameCacheControl,
      'x-content-type-options': 'nosniff',
      'x-fastpull-pull': 'stream',
    });
    if (head.size !== undefined) reply.header('content-length', head.size);
    // A failed pull must cut the connection even when no byte has been written yet: otherwise the
    // framework would turn the stream error into a 500, which is the wrong answer for a bad upstream.
    stream.once('error', () => reply.raw.destroy());
    if (target.kind === 'hash') reply.header('etag', `"${target.sha512}"`);
    else reply.header('content-disposition', contentDisposition(target.filename));
    reply.send(stream);
    return true;
  }

  return {
    async handle(target: BlobTarget, request: FastifyRequest, reply: FastifyReply): Promise<boolean> {
      const pending = pull.flight(target);
      if (!pending) return false;
      const flight = await pending;
      const h = request.headers;
      const plain =
        request.method === 'GET' && h.range === undefined && h['if-none-match'] === undefined && h['if-modified-since'] === undefined;
      const stream = plain ? flight.subscribe() : undefined;
      if (stream) return streamAlong(flight, stream, target, reply);

      let timer: NodeJS.Timeout | undefined;
      const timedOut = new Promise<'timeout'>((resolve) => (timer = setTimeout(resolve, WAITER_MAX_WAIT_MS, 'timeout')));
      const outcome = await Promise.race([flight.result, timedOut]).finally(() => clearTimeout(timer));
      if (outcome === 'timeout') {
        // Still downloading: a 404 the CDN must not cache, so the next request finds the committed file.
        sendError(request, reply, new AppError('NOT_FOUND', 'the distfile is being fetched from upstream; retry shortly'));
        return true;
      }
      const blob = outcome ? await lookup(deps.index, target) : undefined;
      if (!blob) return false;
      await sendBlob(request, reply, deps.source, blob, { cacheControl: target.kind === 'hash' ? IMMUTABLE : nameCacheControl });
      return true;
    },
  };
}
