/** One minute of completed responses. */
export interface TrafficMinute {
  /** Start of the minute, epoch ms. */
  at: number;
  requests: number;
  bytes: number;
  s2xx: number;
  s3xx: number;
  s4xx: number;
  s5xx: number;
}

const MINUTE_MS = 60_000;

/**
 * The last hour of traffic for the status page, in memory: a ring of 60 one-minute slots, each
 * reused when its minute comes round again. Recording is a few additions; nothing is allocated
 * per request, and nothing survives a restart (Prometheus keeps the long history).
 */
export class TrafficHistory {
  private readonly slots: TrafficMinute[];

  constructor(
    readonly minutes = 60,
    private readonly now: () => number = Date.now,
  ) {
    this.slots = Array.from({ length: minutes }, () => ({ at: -1, requests: 0, bytes: 0, s2xx: 0, s3xx: 0, s4xx: 0, s5xx: 0 }));
  }

  record(status: number, bytes: number): void {
    const minute = Math.floor(this.now() / MINUTE_MS);
    const slot = this.slots[minute % this.minutes]!;
    const at = minute * MINUTE_MS;
    if (slot.at !== at) {
      slot.at = at;
      slot.requests = slot.bytes = slot.s2xx = slot.s3xx = slot.s4xx = slot.s5xx = 0;
    }
    slot.requests++;
    slot.bytes += bytes;
    if (status >= 500) slot.s5xx++;
    else if (status >= 400) slot.s4xx++;
    else if (status >= 300) slot.s3xx++;
    else slot.s2xx++;
  }

  /** Every minute of the window, oldest first, the current (partial) minute last; quiet minutes are zeros. */
  lastHour(): TrafficMinute[] {
    const current = Math.floor(this.now() / MINUTE_MS);
    const out: TrafficMinute[] = [];
    for (let m = current - this.minutes + 1; m <= current; m++) {
      const slot = this.slots[m % this.minutes]!;
      const at = m * MINUTE_MS;
      out.push(slot.at === at ? { ...slot } : { at, requests: 0, bytes: 0, s2xx: 0, s3xx: 0, s4xx: 0, s5xx: 0 });
    }
    return out;
  }
}

/**
 * Several processes' last hours added up minute by minute (a cluster's workers each keep their
 * own ring): the newest `minutes` minutes any of them reported, oldest first.
 */
export function sumTraffic(lists: TrafficMinute[][], minutes = 60): TrafficMinute[] {
  const byMinute = new Map<number, TrafficMinute>();
  for (const list of lists) {
    for (const m of list) {
      const sum = byMinute.get(m.at);
      if (!sum) {
        byMinute.set(m.at, { ...m });
        continue;
      }
      sum.requests += m.requests;
      sum.bytes += m.bytes;
      sum.s2xx += m.s2xx;
      sum.s3xx += m.s3xx;
      sum.s4xx += m.s4xx;
      sum.s5xx += m.s5xx;
    }
  }
  return [...byMinute.values()].sort((a, b) => a.at - b.at).slice(-minutes);
}
