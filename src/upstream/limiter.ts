import { AppError } from '../errors.js';

type Release = () => void;

interface Waiter {
  host: string;
  grant: (release: Release) => void;
  fail: (err: unknown) => void;
}

/**
 * Counting semaphore with a global cap and a per-host cap. Waiters are served in arrival order,
 * except that a waiter whose host is saturated does not block waiters for other hosts.
 */
export class Limiter {
  private active = 0;
  private readonly perHost = new Map<string, number>();
  private readonly queue: Waiter[] = [];

  constructor(
    readonly globalLimit: number,
    readonly hostLimit: number,
  ) {}

  get inFlight(): number {
    return this.active;
  }

  acquire(host: string, signal?: AbortSignal): Promise<Release> {
    if (signal?.aborted) return Promise.reject(abortReason(signal));
    if (this.fits(host)) return Promise.resolve(this.take(host));
    return new Promise<Release>((resolve, reject) => {
      const waiter: Waiter = {
        host,
        grant: (release) => {
          signal?.removeEventListener('abort', onAbort);
          resolve(release);
        },
        fail: reject,
      };
      const onAbort = () => {
        const i = this.queue.indexOf(waiter);
        if (i !== -1) this.queue.splice(i, 1);
        reject(abortReason(signal!));
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      this.queue.push(waiter);
    });
  }

  private fits(host: string): boolean {
    return this.active < this.globalLimit && (this.perHost.get(host) ?? 0) < this.hostLimit;
  }

  private take(host: string): Release {
    this.active++;
    this.perHost.set(host, (this.perHost.get(host) ?? 0) + 1);
    let released = false;
    return () => {
      // Idempotent: stream teardown paths may call it more than once.
      if (released) return;
      released = true;
      this.active--;
      const n = (this.perHost.get(host) ?? 1) - 1;
      if (n === 0) this.perHost.delete(host);
      else this.perHost.set(host, n);
      this.drain();
    };
  }

  private drain(): void {
    for (let i = 0; i < this.queue.length && this.active < this.globalLimit; ) {
      const waiter = this.queue[i]!;
      if (this.fits(waiter.host)) {
        this.queue.splice(i, 1);
        waiter.grant(this.take(waiter.host));
      } else {
        i++;
      }
    }
  }
}

export function abortReason(signal: AbortSignal): unknown {
  return signal.reason ?? new AppError('UPSTREAM_FAILED', 'aborted');
}
