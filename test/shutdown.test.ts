import { createHash, randomBytes } from 'node:crypto';
import { rm, stat } from 'node:fs/promises';
import { connect, type Socket } from 'node:net';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { request } from 'undici';
import { afterEach, describe, expect, it } from 'vitest';
import { startServeProcess, type ServeProcess } from './helpers/serve-process.js';
import { ADMIN_TOKEN, makeDataDir } from './helpers/server.js';

const sha512 = (b: Buffer | string) => createHash('sha512').update(b).digest('hex');
// Larger than loopback socket buffers on both ends, so a client that stops reading keeps the response in flight.
const SIZE = 32 * 1024 * 1024;

/** A download over a raw socket whose reading the test controls. */
class SlowDownload {
  readonly socket: Socket;
  private readonly chunks: Buffer[] = [];
  received = 0;
  readonly closed: Promise<void>;
  private firstData!: Promise<void>;

  constructor(base: string, pathname: string) {
    const { hostname, port } = new URL(base);
    this.socket = connect(Number(port), hostname);
    this.firstData = new Promise((resolve) => this.socket.once('data', () => resolve()));
    this.socket.on('data', (d: Buffer) => {
      this.chunks.push(d);
      this.received += d.length;
    });
    this.socket.on('error', () => undefined);
    this.closed = new Promise((resolve) => this.socket.on('close', () => resolve()));
    this.socket.write(`GET ${pathname} HTTP/1.1\r\nHost: ${hostname}:${port}\r\nUser-Agent: slow-test\r\n\r\n`);
  }

  /** Reads the first bytes, then stops reading so the server blocks on a full socket. */
  async stall(): Promise<void> {
    await this.firstData;
    this.socket.pause();
  }

  /** Resumes, yielding between chunks like a slow link, until `bytes` body bytes arrived or the socket closed. */
  async readToEnd(): Promise<{ head: string; body: Buffer }> {
    this.socket.on('data', () => {
      this.socket.pause();
      setTimeout(() => this.socket.resume(), 1);
    });
    this.socket.resume();
    const done = new Promise<void>((resolve) => {
      let expected: number | undefined;
      const check = () => {
        if (expected === undefined) {
          const head = Buffer.concat(this.chunks);
          const end = head.indexOf('\r\n\r\n');
          const len = /content-length: (\d+)/i.exec(head.subarray(0, Math.max(end, 0)).toString());
          if (end === -1 || !len) return;
          expected = end + 4 + Number(len[1]);
        }
        if (this.received >= expected) resolve();
      };
      this.socket.on('data', check);
      check();
      void this.closed.then(() => resolve());
    });
    await done;
    const all = Buffer.concat(this.chunks);
    const end = all.indexOf('\r\n\r\n');
    return { head: all.subarray(0, end).toString(), body: all.subarray(end + 4) };
  }
}

function connectionRefused(base: string): Promise<boolean> {
  const { hostname, port } = new URL(base);
  return new Promise((resolve) => {
    const s = connect(Number(port), hostname);
    s.once('connect', () => {
      s.destroy();
      resolve(false);
    });
    s.once('error', (err: NodeJS.ErrnoException) => resolve(err.code === 'ECONNREFUSED'));
  });
}

async function serveWithBigFile(graceMs: number): Promise<{ proc: ServeProcess; dataDir: string; body: Buffer; url: string }> {
  const dataDir = await makeDataDir();
  const proc = await startServeProcess({
    FASTPULL_DATA_DIR: dataDir,
    FASTPULL_ADMIN_TOKEN: ADMIN_TOKEN,
    FASTPULL_SHUTDOWN_GRACE_MS: String(graceMs),
  });
  const body = randomBytes(SIZE);
  const up = await request(`${proc.baseUrl}/api/v1/distfiles/big-1.0.tar.xz`, {
    method: 'PUT',
    body,
    headers: { authorization: `Bearer ${ADMIN_TOKEN}` },
  });
  await up.body.dump();
  expect(up.statusCode).toBe(201);
  const h = sha512(body);
  return { proc, dataDir, body, url: `/${h.slice(0, 2)}/${h.slice(2, 4)}/${h.slice(4, 6)}/${h}` };
}

describe('graceful shutdown of fastpull serve', () => {
  let cleanup: (() => Promise<void>) | undefined;
  afterEach(async () => {
    await cleanup?.();
    cleanup = undefined;
  });

  it('on SIGTERM refuses new connections, finishes the download in flight, closes the database and exits 0', async () => {
    const { proc, dataDir, body, url } = await serveWithBigFile(30_000);
    cleanup = async () => {
      proc.child.kill('SIGKILL');
      await rm(dataDir, { recursive: true, force: true });
    };
    const download = new SlowDownload(proc.baseUrl, url);
    await download.stall();

    let exited = false;
    void proc.exited.then(() => (exited = true));
    proc.child.kill('SIGTERM');

    // The listener closes while the download is still pending.
    let refused = false;
    for (let i = 0; i < 100 && !refused; i++) {
      refused = await connectionRefused(proc.baseUrl);
      if (!refused) await sleep(50);
    }
    expect(refused).toBe(true);
    expect(exited).toBe(false);
    expect(download.received).toBeLessThan(SIZE);

    const { head, body: got } = await download.readToEnd();
    expect(head).toMatch(/^HTTP\/1\.1 200 OK/);
    expect(head).toMatch(new RegExp(`content-length: ${SIZE}`, 'i'));
    expect(got.length).toBe(SIZE);
    expect(sha512(got)).toBe(sha512(body));

    expect(await proc.exited).toBe(0);
    const out = proc.output();
    expect(out).toMatch(/"signal":"SIGTERM"[^\n]*"msg":"shutting down"/);
    expect(out).toMatch(/"msg":"fastpull origin stopped"/);
    // The download ended on its own: nothing had to be forced.
    expect(out).not.toMatch(/still busy after the grace period/);
    // A clean close checkpoints the WAL into the database and removes it.
    await expect(stat(path.join(dataDir, 'index.sqlite-wal'))).rejects.toMatchObject({ code: 'ENOENT' });
  });

  it('force-closes a download still stalled when the grace period ends, and still exits 0', async () => {
    const { proc, dataDir, url } = await serveWithBigFile(300);
    cleanup = async () => {
      proc.child.kill('SIGKILL');
      await rm(dataDir, { recursive: true, force: true });
    };
    const download = new SlowDownload(proc.baseUrl, url);
    await download.stall();
    proc.child.kill('SIGTERM');

    expect(await proc.exited).toBe(0);
    // Reading on drains what the kernel had buffered, then meets the end of a cut-off connection.
    download.socket.resume();
    await download.closed;
    // The client never read on, so it cannot have the whole file: the server cut it off.
    expect(download.received).toBeLessThan(SIZE);
    expect(proc.output()).toMatch(/"forced":1[^\n]*still busy after the grace period/);
    await expect(stat(path.join(dataDir, 'index.sqlite-wal'))).rejects.toMatchObject({ code: 'ENOENT' });
  });
});
