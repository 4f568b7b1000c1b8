/**
 * The "bare node:http" column: Node's own ceiling for this job. No framework, no index, no logging;
 * each file is opened once and its descriptor kept, small files are read whole into one buffer, large
 * ones streamed from the open descriptor with 1 MiB reads. fastpull cannot beat this; it shows how
 * much of the gap to nginx is Node itself (no sendfile for HTTP) and how much is ours.
 * Plain JavaScript run by bench/run.ts as its own process.
 */
import { createReadStream, read } from 'node:fs';
import { open } from 'node:fs/promises';
import http from 'node:http';
import path from 'node:path';

const { BENCH_PORT, BENCH_BLOBS, BENCH_NAMES } = process.env;
if (!BENCH_PORT || !BENCH_BLOBS || !BENCH_NAMES) throw new Error('BENCH_PORT, BENCH_BLOBS and BENCH_NAMES are required');

/** url → { fd, size } once opened (the files never change during a run). */
const files = new Map();

async function fileFor(url) {
  let f = files.get(url);
  if (f) return f;
  const file = url.startsWith('/distfiles/') ? path.join(BENCH_BLOBS, url.slice(11)) : path.join(BENCH_NAMES, decodeURIComponent(url.slice(7)));
  const handle = await open(file, 'r');
  f = { fd: handle.fd, size: (await handle.stat()).size, handle };
  files.set(url, f);
  return f;
}

const server = http.createServer((req, res) => {
  fileFor(req.url).then(
    ({ fd, size }) => {
      res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': size });
      if (size <= 64 * 1024) {
        const buf = Buffer.allocUnsafe(size);
        read(fd, buf, 0, size, 0, () => res.end(buf));
        return;
      }
      createReadStream('', { fd, start: 0, end: size - 1, autoClose: false, highWaterMark: 1024 * 1024 }).pipe(res);
    },
    () => {
      res.writeHead(404).end();
    },
  );
});
server.listen(Number(BENCH_PORT), '127.0.0.1', 4096);
process.once('SIGTERM', () => process.exit(0));
