import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { Config } from '../../config.js';
import type { NameIndex } from '../../db/index.js';
import { AppError } from '../../errors.js';
import type { BlobSource } from '../../store/remote-reader.js';
import { HOT_LOOKUP, lookup, type BodyWatch, type HandedOver } from '../hot-path.js';
import { LAYOUT_CONF, parseReadPath, type BlobTarget } from '../read-path.js';
import { IMMUTABLE, sendBlob } from '../send.js';

/** Pull-through seam: given a local miss, may answer the request itself (returns true) or leave it to 404. */
export interface MissHandler {
  handle(target: BlobTarget, request: FastifyRequest, reply: FastifyReply): Promise<boolean>;
}

export interface ReadRouteDeps {
  config: Config;
  index: NameIndex;
  source: BlobSource;
  missHandler?: MissHandler | undefined;
  watch?: BodyWatch | undefined;
}

declare module 'fastify' {
  interface FastifyRequest {
    /** What the read path resolved to: 'hash' | 'name' | 'layout' | 'api' | 'other' (for metrics and logs). */
    routeKind?: string;
  }
}

export { lookup };

/** GET/HEAD for every path form Portage, Funtoo ebuilds and CDN pulls use. */
export async function readRoutes(app: FastifyInstance, deps: ReadRouteDeps): Promise<void> {
  const { config, index, source, missHandler, watch } = deps;
  const nameCacheControl = `public, max-age=${config.nameMaxAge}`;
  const layoutCacheControl = `public, max-age=${config.layoutMaxAge}`;

  async function handler(request: FastifyRequest, reply: FastifyReply) {
    // The lean path (hot-path.ts) may already have resolved this request before handing it over.
    const handed = (request.raw as HandedOver)[HOT_LOOKUP];
    const target = handed?.target ?? parseReadPath(request.url);
    switch (target.kind) {
      case 'layout':
        request.routeKind = 'layout';
        return reply
          .headers({ 'content-type': 'text/plain; charset=utf-8', 'cache-control': layoutCacheControl })
          .send(LAYOUT_CONF);
      case 'bad':
        request.routeKind = 'other';
        throw new AppError(target.code, target.message);
      case 'none':
        request.routeKind = 'other';
        throw new AppError('NOT_FOUND', 'no such distfile');
      default: {
        request.routeKind = target.kind;
        const blob = handed ? handed.blob : await lookup(index, target);
        if (!blob) {
          if (missHandler && (await missHandler.handle(target, request, reply))) return reply;
          throw new AppError('NOT_FOUND', 'no such distfile');
        }
        return sendBlob(request, reply, source, blob, { cacheControl: target.kind === 'hash' ? IMMUTABLE : nameCacheControl }, watch);
      }
    }
  }

  for (const url of ['/distfiles/*', '/:hash', '/:a/:b/:c/:hash']) {
    app.route({ method: ['GET', 'HEAD'], url, handler, schema: { hide: true } });
  }
}
