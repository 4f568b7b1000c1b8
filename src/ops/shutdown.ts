import type { Server } from 'node:http';
import type { Socket } from 'node:net';
import type { FastifyInstance } from 'fastify';

const IDLE_SWEEP_MS = 100;

/** Node's private link from a socket to the response being written on it (null between responses). */
type HttpSocket = Socket & { _httpMessage?: unknown };

/**
 * Records open connections (one listener per connection, nothing per request) so shutdown can
 * tell a connection that is between requests from one still flushing a download.
 */
export function trackConnections(server: Server): Set<HttpSocket> {
  const sockets = new Set<HttpSocket>();
  server.on('connection', (socket: HttpSocket) => {
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
  });
  return sockets;
}

/**
 * Ends connections that carry no response and have nothing left to flush. `end()` (FIN after
 * the send buffer drains), not `destroy()`: a destroyed socket can lose bytes still queued.
 */
function endIdle(sockets: Set<HttpSocket>): void {
  for (const socket of sockets) {
    if (!socket._httpMessage && socket.writableLength === 0 && !socket.writableEnded) socket.end();
  }
}

/**
 * Stops accepting connections, lets responses in flight finish for up to `graceMs`, then
 * force-closes whatever is still open. Returns how many connections had to be forced.
 *
 * Node's own closeIdleConnections() (which server.close() calls) treats a response whose body
 * stream has ended as done, even while megabytes of it still sit in the socket buffers, and
 * destroys the socket: a truncated download. So it is replaced on this server by endIdle, which
 * also runs every 100 ms, because a download finishing after close() would otherwise leave its
 * keep-alive socket open until keepAliveTimeout. (Fastify answers requests begun while closing
 * with `Connection: close`.)
 */
export async function closeGracefully(
  app: FastifyInstance,
  sockets: Set<HttpSocket>,
  graceMs: number,
): Promise<{ forced: number }> {
  const server = app.server;
  server.closeIdleConnections = () => endIdle(sockets);
  let forced = 0;
  const sweep = setInterval(() => endIdle(sockets), IDLE_SWEEP_MS);
  let deadline: NodeJS.Timeout | undefined;
  const forceAfterGrace = new Promise<void>((resolve) => {
    deadline = setTimeout(() => {
      for (const socket of sockets) if (socket._httpMessage || socket.writableLength > 0) forced++;
      for (const socket of sockets) socket.destroy();
      resolve();
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
