import { formatBytes } from './context.js';

/**
 * Progress on stderr: a redrawn bar on a terminal, a plain line every `intervalMs` otherwise
 * (cron mail and log files get a readable trail, not carriage returns).
 */
export class Progress {
  private done = 0;
  private doneBytes = 0;
  private readonly started = performance.now();
  private lastDraw = 0;
  private readonly tty: boolean;

  constructor(
    private readonly label: string,
    private readonly total: { items: number; bytes: number },
    private readonly stream: NodeJS.WriteStream = process.stderr,
    private readonly intervalMs = stream.isTTY ? 100 : 10_000,
  ) {
    this.tty = stream.isTTY === true;
    this.lastDraw = performance.now();
  }

  /** One item finished; `bytes` are those not already reported through bytes(). */
  tick(bytes: number): void {
    this.done++;
    this.bytes(bytes);
  }

  /** Bytes read so far within the current item, so one multi-GiB blob still moves the bar. */
  bytes(n: number): void {
    this.doneBytes += n;
    const now = performance.now();
    if (now - this.lastDraw >= this.intervalMs) {
      this.lastDraw = now;
      this.draw(false);
    }
  }

  /** Prints a message without garbling the bar. */
  note(message: string): void {
    if (this.tty) this.stream.write('\r\x1b[2K');
    this.stream.write(`${message}\n`);
    if (this.tty) this.draw(false);
  }

  finish(): void {
    if (this.tty) this.draw(true);
  }

  private draw(final: boolean): void {
    const { items, bytes } = this.total;
    const fraction = bytes > 0 ? Math.min(1, this.doneBytes / bytes) : items > 0 ? this.done / items : 1;
    const seconds = (performance.now() - this.started) / 1000;
    const rate = seconds > 0 ? this.doneBytes / seconds : 0;
    const eta = rate > 0 && bytes > this.doneBytes ? Math.round((bytes - this.doneBytes) / rate) : 0;
    const text =
      `${this.label} ${this.done}/${items} blobs, ${formatBytes(this.doneBytes)}/${formatBytes(bytes)} ` +
      `(${(fraction * 100).toFixed(1)}%), ${formatBytes(rate)}/s` +
      (final ? '' : `, ETA ${formatEta(eta)}`);
    if (this.tty) {
      const width = 30;
      const filled = Math.round(fraction * width);
      this.stream.write(`\r\x1b[2K[${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${text}${final ? '\n' : ''}`);
    } else {
      this.stream.write(`${text}\n`);
    }
  }
}

function formatEta(seconds: number): string {
  const h = Math.floor(seconds / 3600);
  const m = Math.floor((seconds % 3600) / 60);
  const s = seconds % 60;
  return h > 0 ? `${h}h${String(m).padStart(2, '0')}m` : m > 0 ? `${m}m${String(s).padStart(2, '0')}s` : `${s}s`;
}
