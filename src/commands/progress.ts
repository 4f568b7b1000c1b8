/**
 * Progress for long CLI runs: a redrawn one-line bar on a terminal, plain periodic lines otherwise
 * (a log file or CI output must not fill with carriage returns).
 */
export interface ProgressOptions {
  label: string;
  totalFiles: number;
  totalBytes: number;
  stream?: NodeJS.WriteStream;
  /** Between plain lines when not on a terminal. */
  intervalMs?: number;
}

const UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];

export function formatBytes(n: number): string {
  let value = n;
  let unit = 0;
  while (value >= 1024 && unit < UNITS.length - 1) {
    value /= 1024;
    unit++;
  }
  return unit === 0 ? `${Math.round(value)} B` : `${value.toFixed(1)} ${UNITS[unit]}`;
}

function formatDuration(seconds: number): string {
  if (!Number.isFinite(seconds)) return '--:--';
  const s = Math.round(seconds);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const pad = (v: number) => String(v).padStart(2, '0');
  return h > 0 ? `${h}:${pad(m)}:${pad(s % 60)}` : `${m}:${pad(s % 60)}`;
}

export class Progress {
  private readonly stream: NodeJS.WriteStream;
  private readonly tty: boolean;
  private readonly started = Date.now();
  private files = 0;
  /** Bytes accounted for: read, or skipped without reading (a resumed run). */
  private bytes = 0;
  /** Bytes actually read; the rate and ETA use only these, or a resumed run would look impossibly fast. */
  private readBytes = 0;
  private timer: NodeJS.Timeout | undefined;
  private barShown = false;

  constructor(private readonly options: ProgressOptions) {
    this.stream = options.stream ?? process.stderr;
    this.tty = this.stream.isTTY === true;
    const interval = this.tty ? 200 : (options.intervalMs ?? 10_000);
    this.timer = setInterval(() => this.render(), interval);
    this.timer.unref();
  }

  /** Bytes read from a file still in progress. */
  read(n: number): void {
    this.bytes += n;
    this.readBytes += n;
  }

  /** A file is finished; `unreadBytes` are its bytes that were never read (skipped or failed early). */
  fileDone(unreadBytes = 0): void {
    this.files++;
    this.bytes += unreadBytes;
  }

  /** Prints a message without tearing the bar. */
  log(line: string): void {
    this.clearBar();
    this.stream.write(`${line}\n`);
  }

  finish(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    // The final state stays on screen: a bar at 100% on a terminal, one last line elsewhere.
    if (this.tty) this.render();
    else this.stream.write(`${this.line()}\n`);
    if (this.tty) this.stream.write('\n');
    this.barShown = false;
  }

  line(): string {
    const { totalFiles, totalBytes, label } = this.options;
    return `${label}: ${this.files}/${totalFiles} files, ${formatBytes(this.bytes)}/${formatBytes(totalBytes)}, ${this.rateAndEta()}`;
  }

  private rateAndEta(): string {
    const elapsed = (Date.now() - this.started) / 1000;
    const rate = elapsed > 0 ? this.readBytes / elapsed : 0;
    const remaining = Math.max(0, this.options.totalBytes - this.bytes);
    const eta = remaining === 0 ? 0 : rate > 0 ? remaining / rate : Infinity;
    return `${formatBytes(rate)}/s, ETA ${formatDuration(eta)}`;
  }

  private render(): void {
    if (!this.tty) {
      this.stream.write(`${this.line()}\n`);
      return;
    }
    const width = 16;
    const fraction = this.options.totalBytes > 0 ? Math.min(1, this.bytes / this.options.totalBytes) : 1;
    const filled = Math.round(fraction * width);
    const bar = `[${'#'.repeat(filled)}${'-'.repeat(width - filled)}] ${(fraction * 100).toFixed(0).padStart(3)}%`;
    const { totalFiles, totalBytes } = this.options;
    // Compact enough for an 80-column terminal; cut rather than wrap, since a wrapped line cannot be redrawn.
    const text = `${bar} ${this.files}/${totalFiles} files ${formatBytes(this.bytes)}/${formatBytes(totalBytes)} ${this.rateAndEta()}`;
    // A pty without a size (script, some CI runners) reports 0 columns.
    const columns = this.stream.columns > 20 ? this.stream.columns : 80;
    this.stream.write(`\r\x1b[K${text.slice(0, columns - 1)}`);
    this.barShown = true;
  }

  private clearBar(): void {
    if (this.barShown) this.stream.write('\r\x1b[K');
    this.barShown = false;
  }
}
