import http from 'node:http';
import type { AddressInfo } from 'node:net';

export interface SeenRequest {
  method: string;
  path: string;
  status: number;
}

export interface RecordingProxy {
  url: string;
  /** Every request that passed through, in order, with the status it got. */
  seen: SeenRequest[];
  /** The next `count` requests with this method answer `status` instead of reaching the origin. */
  failNext(method: string, count: number, status: number): void;
  close(): Promise<void>;
}

/**
 * A real HTTP reverse proxy on 127.0.0.1 in front of an origin: lets a test see, from the outside,
 * exactly which requests a client made, and inject 5xx answers to exercise its retries.
 */
export async function startRecordingProxy(target: string): Promise<RecordingProxy> {
  const upstream = new URL(target);
  const seen: SeenRequest[] = [];
  const failures: { method: string; count: number; status: number }[] = [];

  const server = http.createServer((req, res) => {
    const entry: SeenRequest = { method: req.method ?? '', path: req.url ?? '', status: 0 };
    seen.push(entry);
    const failure = failures.find((f) => f.method === req.method && f.count > 0);
    if (failure) {
      failure.count--;
      entry.status = failure.status;
      // Read the body first so the client sees an answer, not a reset, as a real overloaded origin would send.
      req.resume();
      req.on('end', () => {
        res.writeHead(failure.status, { 'content-type': 'application/json', connection: 'close' });
        res.end(JSON.stringify({ error: 'INTERNAL', message: 'injected failure' }));
      });
      return;
    }
    const forward = http.request(
      {
        host: upstream.hostname,
        port: upstream.port,
        method: req.method,
        path: req.url,
        headers: { ...req.headers, host: upstream.host },
      },
      (answer) => {
        entry.status = answer.statusCode ?? 0;
        res.writeHead(answer.statusCode ?? 502, answer.headers);
        answer.pipe(res);
      },
    );
    forward.on('error', () => res.destroy());
    req.pipe(forward);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    seen,
    failNext(method, count, status) {
      failures.push({ method, count, status });
    },
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
