import { Counter, Gauge, type Registry } from 'prom-client';
import type { DeliveryResult, EventDispatcher, EventTargetStatus } from './dispatcher.js';

/**
 * Outbox metrics on the app's registry. Counters are this process's; the gauges come from the
 * database, so every replica reports the same depth and last success.
 */
export function meterEvents(registry: Registry, events: EventDispatcher): (target: string, result: DeliveryResult, n: number) => void {
  const deliveries = new Counter({
    name: 'fastpull_event_deliveries_total',
    help: 'Event deliveries by target (cdn:…, webhook:…) and result (success, failure: retried later, gave_up)',
    labelNames: ['target', 'result'] as const,
    registers: [registry],
  });
  for (const t of events.targets) for (const result of ['success', 'failure'] as const) deliveries.labels(t.id, result);
  const perTarget = (name: string, help: string, value: (s: EventTargetStatus) => number | null) =>
    new Gauge({
      name,
      help,
      labelNames: ['target'] as const,
      registers: [registry],
      async collect() {
        const { targets } = await events.status();
        this.reset();
        for (const s of targets) {
          const v = value(s);
          if (v !== null) this.labels(s.target).set(v);
        }
      },
    });
  perTarget('fastpull_outbox_pending_events', 'Events not yet delivered to the target (retrying ones included)', (s) => s.pending);
  perTarget('fastpull_outbox_failed_events', 'Events the target was given up on (FASTPULL_EVENT_MAX_ATTEMPTS)', (s) => s.failed);
  perTarget('fastpull_outbox_oldest_pending_age_seconds', 'Age of the oldest event not yet delivered to the target (0 when none)', (s) =>
    s.oldestPendingAt === null ? 0 : Math.max(0, (Date.now() - s.oldestPendingAt) / 1000),
  );
  perTarget('fastpull_event_last_success_timestamp_seconds', 'When a delivery to the target last succeeded (unix seconds)', (s) =>
    s.lastSuccessAt === null ? null : s.lastSuccessAt / 1000,
  );
  new Gauge({
    name: 'fastpull_events_last_id',
    help: 'Id of the newest event in the outbox',
    registers: [registry],
    async collect() {
      this.set((await events.status()).lastEventId);
    },
  });
  return (target, result, n) => deliveries.labels(target, result).inc(n);
}
