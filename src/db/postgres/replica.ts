import { randomBytes } from 'node:crypto';
import { hostname } from 'node:os';

/**
 * Names this process among the replicas sharing one database, for the rows it owns (claimed fetch items,
 * upload holds, pull-through flights). Host and pid help an operator reading the rows; the random part
 * keeps a restarted process (same pid, pid 1 in a container) from mistaking its predecessor's rows for its own.
 */
export function replicaId(): string {
  return `${hostname()}:${process.pid}:${randomBytes(4).toString('hex')}`;
}

/** How often a replica renews what it owns: four chances per lease, so one slow round never lets it lapse. */
export function renewalPeriod(leaseMs: number): number {
  return Math.max(1, Math.floor(leaseMs / 4));
}
