import type { Readable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Logger } from 'pino';
import type { AuditEntry } from '../db/audit.js';
import { localLocks, type ClusterLocks } from '../db/locks.js';
import type { MaintenanceIndex, ScrubCursor } from '../db/maintenance.js';
import type { Awaitable } from '../db/awaitable.js';
import type { BlobStorage } from '../store/storage.js';
import { TokenBucket, throttled } from './throttle.js';
import { verifyBlob } from './verify.js';

/** Plain counters for the metrics module to read; they only ever grow (except `running`). */
export const scrubCounters = {
  running: false,
  passesCompleted: 0,
  blobsVerified: 0,
  bytesVerified: 0,
  corruptFound: 0,
  missingFound: 0,
  errors: 0,
  /** Epoch ms of the last sign of life: a chunk read, a blob done, a pass ended (for the "scrub stalled" alert). */
  lastProgressAt: 0,
  /** True while resting between passes by design: no progress is expected then. */
  resting: false,
};

export interface ScrubOptions {
  storage: BlobStorage;
  /** Changes are announced as `scrub`. */
  maintenance: MaintenanceIndex;
  audit: { record(entry: AuditEntry): Awaitable<void> };
  /** One scrub pass at a time across replicas sharing the index (default: no lock, one process). */
  locks?: ClusterLocks | undefined;
  bytesPerSecond: number;
  /** Rest between full passes; a pass over a small store would otherwise re-hash it at once. */
  pauseMs: number;
  log?: Logger | undefined;
}

const PAGE = 100;

/**
 * Background re-verification: walks blobs oldest-verified first, reading through a token bucket
 * so the scrub never takes more disk bandwidth than configured, quarantining what no longer matches.
 */
export class Scrubber {
  private readonly abort = new AbortController();
  private loop: Promise<void> | undefined;
  private readonly queries: MaintenanceIndex;
  private readonly bucket: TokenBucket;

  constructor(private readonly options: ScrubOptions) {
    this.queries = options.maintenance.as('scrub');
    // One second of burst: short bursts are harmless, long ones are what starve downloads.
    this.bucket = new TokenBucket(options.bytesPerSecond);
  }

  start(): void {
    this.loop ??= this.run().catch((err: unknown) => {
      if (!this.abort.signal.aborted) this.options.log?.error({ err }, 'scrub stopped after an error');
    });
  }

  /** Stops at the next chunk boundary or sleep; resolves once no scrub read or write is in progress. */
  async stop(): Promise<void> {
    this.abort.abort();
    await this.loop;
  }

  private async run(): Promise<void> {
    const locks = this.options.locks ?? localLocks;
    const signal = this.abort.signal;
    const throttle = throttled(this.bucket, signal);
    // A single large blob at a low rate takes a long time: every chunk counts as progress.
    const wrap = (stream: Readable) =>
      (async function* () {
        for await (const chunk of throttle(stream)) {
          scrubCounters.lastProgressAt = Date.now();
          yield chunk;
        }
      })();
    scrubCounters.running = true;
    scrubCounters.lastProgressAt = Date.now();
    try {
      while (!signal.aborted) {
        const passStart = Date.now();
        // Another replica scrubbing the same store already covers it: this one rests and asks again later.
        const held = await locks.run('scrub', () => this.pass(passStart, wrap, signal));
        if (held.ran && held.value === 'stopped') return;
        scrubCounters.resting = true;
        await sleep(Math.max(100, this.options.pauseMs), undefined, { signal });
        scrubCounters.resting = false;
        scrubCounters.lastProgressAt = Date.now();
      }
    } catch (err) {
      if (!signal.aborted) throw err;
    } finally {
      scrubCounters.running = false;
      scrubCounters.resting = false;
    }
  }

  /** One pass over every blob not verified since it began; 'stopped' when aborted midway. */
  private async pass(passStart: number, wrap: (stream: Readable) => AsyncIterable<Buffer>, signal: AbortSignal): Promise<'done' | 'stopped'> {
    const { storage, log } = this.options;
    let cursor: ScrubCursor = { verified: -1, sha512: '' };
    const pass = { blobs: 0, bytes: 0, corrupt: 0, missing: 0 };
    for (;;) {
      const page = await this.queries.scrubPage(cursor, passStart, PAGE);
      if (page.length === 0) break;
      for (const ref of page) {
        if (signal.aborted) return 'stopped';
        cursor = { verified: ref.v, sha512: ref.sha512 };
        let outcome;
        try {
          outcome = await verifyBlob(storage, this.queries, ref, { wrap });
        } catch (err) {
          if (signal.aborted) return 'stopped';
          scrubCounters.errors++;
          log?.warn({ err, sha512: ref.sha512 }, 'scrub could not verify a blob');
          continue;
        }
        if (outcome.status === 'skipped') continue;
        pass.blobs++;
        pass.bytes += ref.size;
        scrubCounters.blobsVerified++;
        scrubCounters.bytesVerified += ref.size;
        if (outcome.status === 'corrupt') {
          pass.corrupt++;
          scrubCounters.corruptFound++;
          log?.error(
            { sha512: ref.sha512, names: outcome.names, quarantinedTo: outcome.quarantinedTo, actualSha512: outcome.actualSha512 },
            'scrub found a corrupt blob: quarantined, it will 404 until re-uploaded',
          );
          try {
            await this.options.audit.record({ actor: 'scrub', action: 'scrub.quarantine', sha512: ref.sha512, detail: `now hashes to ${outcome.actualSha512}` });
          } catch (err) {
            log?.error({ err, sha512: ref.sha512 }, 'could not write the audit record');
          }
        } else if (outcome.status === 'missing') {
          pass.missing++;
          scrubCounters.missingFound++;
          log?.error({ sha512: ref.sha512, names: outcome.names }, 'scrub found a blob row whose file is missing (run fastpull fsck)');
        }
      }
    }
    scrubCounters.passesCompleted++;
    if (pass.blobs > 0) log?.info({ ...pass, ms: Date.now() - passStart }, 'scrub pass complete');
    return 'done';
  }
}
