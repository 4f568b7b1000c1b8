import { createServer, type IncomingHttpHeaders } from 'node:http';
import type { Socket } from 'node:net';

/** What the recorder answers: a status, a status with headers, or never (the connection hangs until closed). */
export type Answer = number | { status: number; headers?: Record<string, string> } | 'hang';

export interface Recorded {
  method: string;
  url: string;
  headers: IncomingHttpHeaders;
  body: string;
  /** What it was answered ('hang' for never). */
  answer: number | 'hang';
}

export interface Recorder {
  url: string;
  requests: Recorded[];
  /** Decides each answer; defaults to 200. Replace it at any time. */
  respond: (request: Omit<Recorded, 'answer'>) => Answer;
  /** Polls until `check` holds (bounded), returning whether it did. */
  waitFor(check: (requests: Recorded[]) => boolean, deadlineMs?: number): Promise<boolean>;
  close(): Promise<void>;
}

/**
 * A local stand-in for the outside internet's CDN API or webhook endpoint: records every request
 * (method, path, headers, body) and answers as told — 2xx, 500, 429 with Retry-After, or not at all.
 */
export async function startRecorder(): Promise<Recorder> {
  const sockets = new Set<Socket>();
  const recorder: Recorder = {
    url: '',
    requests: [],
    respond: () => 200,
    async waitFor(check, deadlineMs = 30_000) {
      const until = Date.now() + deadlineMs;
      while (!check(recorder.requests)) {
        if (Date.now() > until) return false;
        await new Promise((r) => setTimeout(r, 50));
      }
      return true;
    },
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const seen = { method: req.method ?? '', url: req.url ?? '', headers: req.headers, body: Buffer.concat(chunks).toString('utf8') };
      const answer = recorder.respond(seen);
      if (answer === 'hang') {
        recorder.requests.push({ ...seen, answer: 'hang' });
        return;
      }
      const { status, headers } = typeof answer === 'number' ? { status: answer, headers: {} } : answer;
      recorder.requests.push({ ...seen, answer: status });
      res.writeHead(status, { 'content-type': 'application/json', ...headers });
      res.end(JSON.stringify({ recorded: recorder.requests.length }));
    });
  });
  server.on('connection', (s: Socket) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  recorder.url = `http://127.0.0.1:${typeof address === 'object' && address ? address.port : 0}`;
  return recorder;
}
