import { describe, expect, it } from 'vitest';
import { sumTraffic, TrafficHistory } from '../src/ops/traffic.js';

describe('the last hour of traffic (ring buffer)', () => {
  const T0 = Date.parse('2026-11-30T12:00:00Z');

  it('counts requests, bytes and status classes per minute, oldest first, quiet minutes as zeros', () => {
    let now = T0 + 5_000;
    const h = new TrafficHistory(60, () => now);
    h.record(200, 100);
    h.record(206, 50);
    h.record(304, 10);
    h.record(404, 20);
    now += 2 * 60_000;
    h.record(503, 30);
    const minutes = h.lastHour();
    expect(minutes).toHaveLength(60);
    expect(minutes[59]).toEqual({ at: T0 + 120_000, requests: 1, bytes: 30, s2xx: 0, s3xx: 0, s4xx: 0, s5xx: 1 });
    expect(minutes[58]).toEqual({ at: T0 + 60_000, requests: 0, bytes: 0, s2xx: 0, s3xx: 0, s4xx: 0, s5xx: 0 });
    expect(minutes[57]).toEqual({ at: T0, requests: 4, bytes: 180, s2xx: 2, s3xx: 1, s4xx: 1, s5xx: 0 });
    expect(minutes[0]!.at).toBe(T0 + 120_000 - 59 * 60_000);
  });

  it('forgets a minute once it is an hour old, reusing its slot', () => {
    let now = T0;
    const h = new TrafficHistory(60, () => now);
    h.record(200, 1000);
    now += 60 * 60_000;
    h.record(500, 1);
    const minutes = h.lastHour();
    expect(minutes.reduce((n, m) => n + m.requests, 0)).toBe(1);
    expect(minutes.reduce((n, m) => n + m.bytes, 0)).toBe(1);
    expect(minutes[59]).toMatchObject({ at: T0 + 3_600_000, s5xx: 1 });
    // Read after a long silence: nothing from an hour ago leaks back in.
    now += 3 * 60 * 60_000;
    expect(h.lastHour().every((m) => m.requests === 0)).toBe(true);
  });
});

describe('the last hours of several processes, added up', () => {
  it('sums minute by minute and keeps the newest hour', () => {
    const T0 = Date.parse('2026-11-30T12:00:00Z');
    const minute = (i: number, requests: number) => ({ at: T0 + i * 60_000, requests, bytes: requests * 10, s2xx: requests, s3xx: 0, s4xx: 0, s5xx: 0 });
    // One process a minute ahead of the other (a collection straddling a minute boundary).
    const a = Array.from({ length: 60 }, (_, i) => minute(i, 1));
    const b = Array.from({ length: 60 }, (_, i) => minute(i + 1, 2));
    const sum = sumTraffic([a, b]);
    expect(sum).toHaveLength(60);
    expect(sum[0]).toEqual(minute(1, 3));
    expect(sum[58]).toEqual(minute(59, 3));
    expect(sum[59]).toEqual(minute(60, 2));
    expect(sumTraffic([])).toEqual([]);
  });
});
