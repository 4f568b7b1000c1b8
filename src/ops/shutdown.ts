import type { FastifyInstance } from 'fastify';

const IDLE_SWEEP_MS = 100;

/**
 * Stops accepting connections, lets requests in flight finish for up to `graceMs`, then
 * force-closes whatever is still open. Returns how many connections had to be forced.
 *
 * Node's server.close() closes idle keep-alive sockets only once, when called; a socket whose
 * download finishes afterwards would sit idle until keepAliveTimeout and hold shutdown up.
 * So idle sockets are swept until the server has closed. (Fastify marks responses begun
 * while closing with `Connection: close`, so new requests on old sockets end theirs too.)
 */
export async function closeGracefully(app: FastifyInstance, graceMs: number): Promise<{ forced: number }> {
  const server = app.server;
  let forced = 0;
  const sweep = setInterval(() => server.closeIdleConnections(), IDLE_SWEEP_MS);
  let deadline: NodeJS.Timeout | undefined;
  const forceAfterGrace = new Promise<void>((resolve) => {
    deadline = setTimeout(() => {
      server.getConnections((_err, count) => {
        forced = count;
        server.closeAllConnections();
        resolve();
      });
    }, graceMs);
  });
  try {
    const closed = app.close();
    await Promise.race([closed, forceAfterGrace]);
    await closed;
  } finally {
    clearInterval(sweep);
    clearTimeout(deadline);
  }
  return { forced };
}
