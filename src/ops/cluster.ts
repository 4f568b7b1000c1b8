import cluster, { type Worker } from 'node:cluster';
import type { AddressInfo } from 'node:net';
import type { Logger } from 'pino';
import { AggregatorRegistry, type MetricObjectWithValues, type MetricValue } from 'prom-client';
import type { Config } from '../config.js';
import { databaseFile, openDatabase } from '../db/open.js';
import type { FlightGrant, FlightLock } from '../ingest/flight-lock.js';
import { sumTraffic, type TrafficMinute } from './traffic.js';

/**
 * FASTPULL_WORKERS=N: N serving processes share one port through node:cluster. The primary
 * serves nothing itself; it forks the workers, keeps them alive, and is the one place that holds
 * what must be single across them: the pull-through flight locks, the sum of their metrics, and
 * the word to the leader that fetch jobs are waiting. Exactly one worker is the `leader` and runs
 * the background work (fetch-job runner, scrub); the others are `follower`s and only serve.
 */

type Role = 'leader' | 'follower';

/** Every message of ours carries this tag: the IPC channel also carries node's own cluster messages. */
const TAG = 'fastpull';

type ToPrimary =
  | { tag: typeof TAG; t: 'flight-acquire'; id: number; key: string }
  | { tag: typeof TAG; t: 'flight-release'; key: string; stored: boolean }
  | { tag: typeof TAG; t: 'jobs-queued' }
  | { tag: typeof TAG; t: 'metrics-request'; id: number; want?: 'traffic' }
  | {
      tag: typeof TAG;
      t: 'metrics-collected';
      id: number;
      metrics: MetricObjectWithValues<MetricValue<string>>[];
      traffic?: TrafficMinute[] | undefined;
    };

type ToWorker =
  | { tag: typeof TAG; t: 'flight-grant'; id: number; owner: boolean }
  | { tag: typeof TAG; t: 'flight-done'; key: string; stored: boolean }
  | { tag: typeof TAG; t: 'jobs-queued' }
  | { tag: typeof TAG; t: 'metrics-collect'; id: number; want?: 'traffic' }
  | { tag: typeof TAG; t: 'metrics-text'; id: number; text: string; traffic?: TrafficMinute[] };

const isOurs = (m: unknown): m is { tag: typeof TAG; t: string } =>
  typeof m === 'object' && m !== null && (m as { tag?: unknown }).tag === TAG;

/** A worker that does not answer a metrics collection in time is left out of that scrape. */
const COLLECT_TIMEOUT_MS = 3_000;
/** Crash-loop protection: a worker that dies again soon after its restart waits longer. */
const RESPAWN_MIN_MS = 200;
const RESPAWN_MAX_MS = 30_000;

export interface ClusterLink {
  role: Role;
  flightLock: FlightLock;
  /** Tells the leader (through the primary) that a fetch job was queued here. */
  jobsQueued(): void;
  /** On the leader: called when another worker queued a fetch job. */
  onJobsQueued(handler: () => void): void;
  /** /metrics for the whole cluster: every worker's metrics, added up by the primary. */
  metricsText(): Promise<string>;
  /** How this worker answers the primary's collection rounds. */
  serveMetrics(collect: () => Promise<MetricObjectWithValues<MetricValue<string>>[]>): void;
  /** The status page's last hour for the whole cluster: every worker's minutes, added up by the primary. */
  trafficLastHour(): Promise<TrafficMinute[]>;
  /** How this worker reports its own last hour in those rounds. */
  serveTraffic(lastHour: () => TrafficMinute[]): void;
}

/** The worker side: call once, in a process the primary forked. */
export function joinCluster(role: Role): ClusterLink {
  const send = (message: ToPrimary) => process.send?.(message);
  let nextId = 1;
  const grants = new Map<number, (owner: boolean) => void>();
  const outcomes = new Map<string, (stored: boolean) => void>();
  const texts = new Map<number, (answer: { text: string; traffic?: TrafficMinute[] | undefined }) => void>();
  let jobsHandler: (() => void) | undefined;
  let collect: (() => Promise<MetricObjectWithValues<MetricValue<string>>[]>) | undefined;
  let traffic: (() => TrafficMinute[]) | undefined;

  process.on('message', (message: unknown) => {
    if (!isOurs(message)) return;
    const m = message as ToWorker;
    switch (m.t) {
      case 'flight-grant':
        grants.get(m.id)?.(m.owner);
        grants.delete(m.id);
        break;
      case 'flight-done':
        outcomes.get(m.key)?.(m.stored);
        outcomes.delete(m.key);
        break;
      case 'jobs-queued':
        jobsHandler?.();
        break;
      case 'metrics-collect':
        if (m.want === 'traffic') {
          send({ tag: TAG, t: 'metrics-collected', id: m.id, metrics: [], traffic: traffic?.() ?? [] });
          break;
        }
        void (collect?.() ?? Promise.resolve([])).then(
          (metrics) => send({ tag: TAG, t: 'metrics-collected', id: m.id, metrics }),
          () => send({ tag: TAG, t: 'metrics-collected', id: m.id, metrics: [] }),
        );
        break;
      case 'metrics-text':
        texts.get(m.id)?.(m);
        texts.delete(m.id);
        break;
    }
  });

  const flightLock: FlightLock = {
    acquire(key) {
      const id = nextId++;
      return new Promise<FlightGrant>((resolve) => {
        grants.set(id, (owner) => {
          if (owner) {
            resolve({ owner: true, release: (stored) => send({ tag: TAG, t: 'flight-release', key, stored }) });
          } else {
            // One waiter per key per process: PullThrough joins local requests to this one flight.
            resolve({ owner: false, outcome: new Promise<boolean>((done) => outcomes.set(key, done)) });
          }
        });
        send({ tag: TAG, t: 'flight-acquire', id, key });
      });
    },
  };

  return {
    role,
    flightLock,
    jobsQueued: () => send({ tag: TAG, t: 'jobs-queued' }),
    onJobsQueued: (handler) => void (jobsHandler = handler),
    metricsText() {
      const id = nextId++;
      return new Promise<string>((resolve) => {
        texts.set(id, (answer) => resolve(answer.text));
        send({ tag: TAG, t: 'metrics-request', id });
      });
    },
    serveMetrics: (fn) => void (collect = fn),
    trafficLastHour() {
      const id = nextId++;
      return new Promise<TrafficMinute[]>((resolve) => {
        texts.set(id, (answer) => resolve(answer.traffic ?? []));
        send({ tag: TAG, t: 'metrics-request', id, want: 'traffic' });
      });
    },
    serveTraffic: (fn) => void (traffic = fn),
  };
}

/** The primary: forks config.workers serving processes and coordinates them until SIGTERM/SIGINT. */
export async function runPrimary(config: Config, logger: Logger): Promise<number> {
  // Migrate once here, so the workers do not all race to it at start.
  openDatabase(databaseFile(config.dataDir)).close();

  const roles = new Map<number, Role>();
  const locks = new Map<string, { holder: number; waiters: Set<number> }>();
  const collections = new Map<
    number,
    {
      requester: Worker;
      requestId: number;
      want: 'traffic' | undefined;
      pending: Set<number>;
      results: MetricObjectWithValues<MetricValue<string>>[][];
      traffic: TrafficMinute[][];
    }
  >();
  let nextCollection = 1;
  let stopping = false;
  let restarts = 0;

  const sendTo = (worker: Worker | undefined, message: ToWorker) => {
    if (worker?.isConnected()) worker.send(message);
  };
  const workerById = (id: number) => cluster.workers?.[id];
  const liveWorkers = () => Object.values(cluster.workers ?? {}).filter((w): w is Worker => w !== undefined && w.isConnected());

  const fork = (role: Role) => {
    const worker = cluster.fork({ FASTPULL_CLUSTER_ROLE: role });
    roles.set(worker.id, role);
    worker.on('message', (message: unknown) => {
      if (isOurs(message)) onMessage(worker, message as ToPrimary);
    });
    return worker;
  };

  const releaseLock = (key: string, stored: boolean) => {
    const lock = locks.get(key);
    if (!lock) return;
    locks.delete(key);
    for (const id of lock.waiters) sendTo(workerById(id), { tag: TAG, t: 'flight-done', key, stored });
  };

  /** Adds up what the workers sent and answers the worker whose /metrics asked, under its own id. */
  const finishCollection = (id: number) => {
    const c = collections.get(id);
    if (!c) return;
    collections.delete(id);
    if (c.want === 'traffic') {
      sendTo(c.requester, { tag: TAG, t: 'metrics-text', id: c.requestId, text: '', traffic: sumTraffic(c.traffic) });
      return;
    }
    void (async () => {
      let text = '';
      try {
        text = await AggregatorRegistry.aggregate(c.results).metrics();
      } catch (err) {
        logger.error({ err }, "could not add up the workers' metrics");
      }
      sendTo(c.requester, { tag: TAG, t: 'metrics-text', id: c.requestId, text });
    })();
  };

  function onMessage(worker: Worker, m: ToPrimary): void {
    switch (m.t) {
      case 'flight-acquire': {
        const lock = locks.get(m.key);
        if (lock && lock.holder !== worker.id) lock.waiters.add(worker.id);
        else locks.set(m.key, { holder: worker.id, waiters: new Set() });
        sendTo(worker, { tag: TAG, t: 'flight-grant', id: m.id, owner: !lock || lock.holder === worker.id });
        break;
      }
      case 'flight-release':
        if (locks.get(m.key)?.holder === worker.id) releaseLock(m.key, m.stored);
        break;
      case 'jobs-queued':
        for (const w of liveWorkers()) if (roles.get(w.id) === 'leader') sendTo(w, { tag: TAG, t: 'jobs-queued' });
        break;
      case 'metrics-request': {
        const id = nextCollection++;
        const members = liveWorkers();
        collections.set(id, {
          requester: worker,
          requestId: m.id,
          want: m.want,
          pending: new Set(members.map((w) => w.id)),
          results: [],
          traffic: [],
        });
        setTimeout(() => finishCollection(id), COLLECT_TIMEOUT_MS).unref();
        for (const w of members) sendTo(w, { tag: TAG, t: 'metrics-collect', id, ...(m.want ? { want: m.want } : {}) });
        break;
      }
      case 'metrics-collected': {
        const c = collections.get(m.id);
        if (!c) break;
        c.results.push(m.metrics);
        if (m.traffic) c.traffic.push(m.traffic);
        c.pending.delete(worker.id);
        if (c.pending.size === 0) finishCollection(m.id);
        break;
      }
    }
  }

  return new Promise<number>((resolve) => {
    let announced = false;
    const listening = new Set<number>();
    cluster.on('listening', (worker, address: AddressInfo | { address: string; port: number }) => {
      // The first listen of a worker is its main port (a metrics port, when set, comes second).
      if (listening.has(worker.id)) return;
      listening.add(worker.id);
      if (!announced && listening.size >= config.workers) {
        announced = true;
        const host = address.address.includes(':') ? `[${address.address}]` : address.address;
        logger.info(
          { address: `http://${host}:${address.port}`, workers: config.workers, dataDir: config.dataDir, configFile: config.configFile },
          'fastpull origin listening',
        );
      }
    });

    cluster.on('exit', (worker, code, signal) => {
      const role = roles.get(worker.id) ?? 'follower';
      roles.delete(worker.id);
      listening.delete(worker.id);
      // A worker that died holding a flight frees it: its waiters answer from the store or 404.
      for (const [key, lock] of locks) {
        if (lock.holder === worker.id) releaseLock(key, false);
        else lock.waiters.delete(worker.id);
      }
      for (const [id, c] of collections) {
        c.pending.delete(worker.id);
        if (c.pending.size === 0) finishCollection(id);
      }
      if (stopping) {
        if (Object.keys(cluster.workers ?? {}).length === 0) {
          logger.info('fastpull origin stopped');
          resolve(0);
        }
        return;
      }
      const delay = Math.min(RESPAWN_MAX_MS, RESPAWN_MIN_MS * 2 ** Math.min(restarts++, 10));
      logger.error({ pid: worker.process.pid, code, signal, role, restartInMs: delay }, 'serving process died; starting another');
      setTimeout(() => {
        if (!stopping) fork(role);
      }, delay).unref();
    });

    const stop = (signal: NodeJS.Signals) => {
      if (stopping) return;
      stopping = true;
      logger.info({ signal, workers: liveWorkers().length, graceMs: config.shutdownGraceMs }, 'shutting down');
      const workers = Object.values(cluster.workers ?? {}).filter((w): w is Worker => w !== undefined);
      if (workers.length === 0) resolve(0);
      for (const w of workers) w.process.kill('SIGTERM');
      // Each worker has its own grace period; one that outlives it by far is killed.
      setTimeout(() => {
        for (const w of Object.values(cluster.workers ?? {})) w?.process.kill('SIGKILL');
      }, config.shutdownGraceMs + 10_000).unref();
    };
    process.once('SIGTERM', () => stop('SIGTERM'));
    process.once('SIGINT', () => stop('SIGINT'));

    fork('leader');
    for (let i = 1; i < config.workers; i++) fork('follower');
  });
}
