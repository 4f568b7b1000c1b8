import { randomBytes } from 'node:crypto';
import { access, open, statfs, unlink } from 'node:fs/promises';
import path from 'node:path';
import type { Logger } from 'pino';
import type { Config } from '../config.js';
import { isPromise } from '../db/awaitable.js';
import type { StatusArea } from '../db/status-queries.js';

/**
 * Where the drain flag lives: FASTPULL_DRAIN_FILE, else `<dataDir>/drain`; undefined when the config file
 * turned it off (`drainFile: null`). Shared by readyz and `fastpull drain`.
 */
export function drainFilePath(config: Pick<Config, 'drainFile' | 'dataDir'>): string | undefined {
  if (config.drainFile === null) return undefined;
  return config.drainFile ? path.resolve(config.drainFile) : path.join(config.dataDir, 'drain');
}

export interface CheckResult {
  ok: boolean;
  detail?: string;
}

export interface ReadinessReport {
  ready: boolean;
  failing: string[];
  checks: Record<string, CheckResult>;
}

/**
 * Whether a load balancer should send this instance traffic. Each probe is cheap but real:
 * a query, a file created and removed where uploads land, a statfs, a stat of the drain file.
 */
export class Readiness {
  /** Set when shutdown begins, so readyz fails while in-flight downloads finish. */
  shuttingDown = false;
  private readonly drainFile: string | undefined;
  private readonly probeDir: string;
  private lastFailing = '';
  /** Reported with the checks but never failing readiness (e.g. event delivery: a CDN outage must not drain us). */
  private readonly details = new Map<string, () => CheckResult | Promise<CheckResult>>();

  constructor(
    private readonly config: Pick<Config, 'drainFile' | 'dataDir' | 'minFreeBytes' | 'readOnly' | 'storage'>,
    private readonly index: Pick<StatusArea, 'ping'>,
    private readonly log?: Logger,
  ) {
    this.drainFile = drainFilePath(config);
    // Where every upload is first written, so the directory that must take writes: the store's temp dir on local
    // disk, the spool an S3 upload is staged in otherwise.
    this.probeDir = path.join(config.dataDir, config.storage.kind === 'local' ? 'tmp' : 'spool');
  }

  inform(name: string, probe: () => CheckResult | Promise<CheckResult>): void {
    this.details.set(name, probe);
  }

  async check(): Promise<ReadinessReport> {
    const checks: Record<string, CheckResult> = {
      database: await this.database(),
      writable: this.config.readOnly ? { ok: true, detail: 'read-only mode: not probed' } : await this.writable(),
      disk: await this.disk(),
      drain: await this.drain(),
      shutdown: this.shuttingDown ? { ok: false, detail: 'shutting down' } : { ok: true },
    };
    const failing = Object.keys(checks).filter((k) => !checks[k]!.ok);
    // Probes arrive every few seconds: log changes of state, not every answer.
    const key = failing.join(',');
    if (key !== this.lastFailing) {
      if (failing.length > 0) this.log?.warn({ failing, checks }, 'not ready');
      else this.log?.info('ready again');
      this.lastFailing = key;
    }
    for (const [name, probe] of this.details) {
      try {
        checks[name] = await probe();
      } catch (err) {
        this.log?.warn({ err, check: name }, 'readiness detail failed');
        checks[name] = { ok: false, detail: 'could not be read' };
      }
    }
    return { ready: failing.length === 0, failing, checks };
  }

  private async database(): Promise<CheckResult> {
    try {
      const answered = this.index.ping();
      if (isPromise(answered)) await answered;
      return { ok: true };
    } catch (err) {
      // The answer is public: the driver's message goes to the log only.
      this.log?.warn({ err }, 'readiness: database query failed');
      return { ok: false, detail: 'the database did not answer a query' };
    }
  }

  private async writable(): Promise<CheckResult> {
    // Named like the store's temp files (pid prefix), so a crash between create and unlink is cleaned at startup.
    const probe = path.join(this.probeDir, `${process.pid}-readyz-${randomBytes(6).toString('hex')}.tmp`);
    try {
      const handle = await open(probe, 'wx');
      await handle.close();
      await unlink(probe);
      return { ok: true };
    } catch (err) {
      return { ok: false, detail: `cannot create a file in the data directory (${(err as NodeJS.ErrnoException).code ?? 'error'})` };
    }
  }

  private async disk(): Promise<CheckResult> {
    try {
      const s = await statfs(this.config.dataDir);
      const free = s.bavail * s.bsize;
      const ok = free >= this.config.minFreeBytes;
      return { ok, detail: `${free} bytes free, ${this.config.minFreeBytes} required` };
    } catch (err) {
      return { ok: false, detail: `statfs failed (${(err as NodeJS.ErrnoException).code ?? 'error'})` };
    }
  }

  private async drain(): Promise<CheckResult> {
    if (this.drainFile === undefined) return { ok: true, detail: 'no drain file (drainFile: null)' };
    try {
      await access(this.drainFile);
      return { ok: false, detail: 'drain file present (fastpull drain --off to undo)' };
    } catch {
      return { ok: true };
    }
  }
}
