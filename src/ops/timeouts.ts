import type { Server } from 'node:http';
import type { Socket } from 'node:net';

const CUT_BY_IDLE_TIMEOUT = Symbol('fastpull.idleTimeout');

interface WatchedSocket extends Socket {
  [CUT_BY_IDLE_TIMEOUT]?: true;
  _handle?: { writeQueueSize?: number } | null;
}

/** How often timeouts are checked: a tenth of the limit, at least every second, at most every 100 ms. */
export function checkInterval(limitMs: number): number {
  return Math.min(1_000, Math.max(100, Math.floor(limitMs / 10)));
}

/** Whether the idle timeout, rather than the client, ended this connection. */
export function cutByIdleTimeout(socket: Socket | null | undefined): boolean {
  return (socket as WatchedSocket | null | undefined)?.[CUT_BY_IDLE_TIMEOUT] === true;
}

/**
 * Makes FASTPULL_IDLE_TIMEOUT_MS hold for a client that stops reading, and marks connections the
 * idle timeout ended so the request log and metrics can say so.
 *
 * Node's socket timeout covers a connection on which nothing is read (a stalled upload, an idle
 * client), but when a write is pending it skips its first expiry (net.Socket#_onTimeout treats a
 * changed write queue as activity), so a download to a client that stopped reading was dropped at
 * twice the configured time. A sweep drops any connection whose writes have not moved for the
 * configured time; the check interval keeps it within a second of the value.
 */
export function enforceIdleTimeout(server: Server, idleTimeoutMs: number): void {
  const writing = new Map<WatchedSocket, { progress: string; since: number }>();
  const sockets = new Set<WatchedSocket>();
  server.on('connection', (socket: WatchedSocket) => {
    sockets.add(socket);
    // Node's own handler (registered first) has already destroyed the socket; this only labels it.
    socket.on('timeout', () => (socket[CUT_BY_IDLE_TIMEOUT] = true));
    socket.once('close', () => {
      sockets.delete(socket);
      writing.delete(socket);
    });
  });

  const sweep = setInterval(() => {
    const now = Date.now();
    for (const socket of sockets) {
      const queued = socket._handle?.writeQueueSize ?? 0;
      if (socket.writableLength === 0 && queued === 0) {
        writing.delete(socket);
        continue;
      }
      // Any byte read, handed to the kernel or queued counts as movement.
      const progress = `${socket.bytesRead}:${socket.bytesWritten}:${socket.writableLength}:${queued}`;
      const seen = writing.get(socket);
      if (seen === undefined || seen.progress !== progress) {
        writing.set(socket, { progress, since: now });
      } else if (now - seen.since >= idleTimeoutMs) {
        writing.delete(socket);
        socket[CUT_BY_IDLE_TIMEOUT] = true;
        socket.destroy();
      }
    }
  }, checkInterval(idleTimeoutMs));
  sweep.unref();
  server.once('close', () => clearInterval(sweep));
}
