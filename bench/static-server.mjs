/**
 * The "stock @fastify/static" column: default options, no logger, over the same blob
 * directory (by hash) and the same directory of hard links (by name) that nginx serves.
 * Run by bench/run.ts as its own process, as plain JavaScript: no TypeScript loader in the way of a
 * stock server, and no event loop shared with anything else.
 */
import Fastify from 'fastify';
import fastifyStatic from '@fastify/static';

const { BENCH_PORT, BENCH_BLOBS, BENCH_NAMES } = process.env;
if (!BENCH_PORT || !BENCH_BLOBS || !BENCH_NAMES) throw new Error('BENCH_PORT, BENCH_BLOBS and BENCH_NAMES are required');

const app = Fastify();
await app.register(fastifyStatic, { root: BENCH_BLOBS, prefix: '/distfiles/' });
await app.register(fastifyStatic, { root: BENCH_NAMES, prefix: '/names/', decorateReply: false });
await app.listen({ host: '127.0.0.1', port: Number(BENCH_PORT) });
process.once('SIGTERM', () => void app.close().then(() => process.exit(0)));
