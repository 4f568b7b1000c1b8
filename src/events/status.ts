import type { CheckResult } from '../ops/readiness.js';
import type { EventsStatus } from './dispatcher.js';

const iso = (ms: number | null) => (ms === null ? null : new Date(ms).toISOString());

/** The status page's view: times as ISO strings. */
export function eventsStatusView(status: EventsStatus) {
  return {
    lastEventId: status.lastEventId,
    targets: status.targets.map((t) => ({
      target: t.target,
      pending: t.pending,
      failed: t.failed,
      oldestPendingAt: iso(t.oldestPendingAt),
      lastSuccessAt: iso(t.lastSuccessAt),
      lastFailureAt: iso(t.lastFailureAt),
      lastError: t.lastError,
    })),
  };
}

/** /readyz detail: ok while every target is keeping up (nothing pending that failed after its last success). */
export function eventsReadinessDetail(status: EventsStatus): CheckResult {
  if (status.targets.length === 0) return { ok: true, detail: 'no event targets configured' };
  const now = Date.now();
  const parts = status.targets.map((t) => {
    const age = t.oldestPendingAt === null ? '' : `, oldest ${Math.round((now - t.oldestPendingAt) / 1000)}s`;
    const failing = t.pending > 0 && t.lastFailureAt !== null && (t.lastSuccessAt === null || t.lastFailureAt > t.lastSuccessAt);
    return { failing, text: `${t.target}: ${t.pending} pending${age}${t.failed > 0 ? `, ${t.failed} given up` : ''}${failing ? `, failing (${t.lastError ?? 'error'})` : ''}` };
  });
  return { ok: !parts.some((p) => p.failing), detail: `informational, never fails readiness; ${parts.map((p) => p.text).join('; ')}` };
}
