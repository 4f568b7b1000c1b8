import { createHash, createHmac } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Dispatcher } from 'undici';
import type { Config } from '../config.js';
import { eventView, type ClaimedDelivery, type EventType } from '../db/events.js';
import { postJson, type PostResult } from './http.js';
import { cdnEventTypes, cdnWork, type CdnAction } from './paths.js';

/** `error` is short and public (status page, /readyz); `detail` (the answer's start) goes to the log only. */
export type SendResult = { ok: true } | { ok: false; error: string; detail?: string; retryAfterMs?: number };

export interface SendContext {
  signal: AbortSignal;
  /** Extends the lease on the deliveries being sent; called before every request after the first. */
  renew(): void;
}

/** Somewhere events are delivered to. One loop per target per process drives it. */
export interface DeliveryTarget {
  /** Stable name: the delivery rows' key and the metrics label. */
  readonly id: string;
  readonly types: readonly EventType[];
  /** Chooses, among due deliveries (oldest first, at most one per blob), what one request carries. */
  pick(candidates: ClaimedDelivery[]): ClaimedDelivery[];
  /**
   * Due deliveries a claim reads for `pick` (default 100). Finding due deliveries costs more the more it must
   * read through a backlog, so a target that sends one event a request asks for one.
   */
  readonly claimLimit?: number;
  /** Resolves when a request may be sent (rate limit, a Retry-After pause). */
  ready(signal: AbortSignal): Promise<void>;
  send(deliveries: ClaimedDelivery[], context: SendContext): Promise<SendResult>;
}

function outcome(result: PostResult, what: string): SendResult {
  if (result.status >= 200 && result.status < 300) return { ok: true };
  return {
    ok: false,
    error: `${what} answered ${result.status}`,
    detail: result.excerpt.replace(/\s+/g, ' ').trim().slice(0, 200),
    ...(result.retryAfterMs !== undefined ? { retryAfterMs: result.retryAfterMs } : {}),
  };
}

/** `sha256=<hex>`: HMAC-SHA256 of the exact body bytes with the shared secret. */
export function signBody(secret: string, body: string): string {
  return `sha256=${createHmac('sha256', secret).update(body, 'utf8').digest('hex')}`;
}

/** Each event as its own signed JSON POST; the event id rides in the body and a header for de-duplication. */
export class WebhookTarget implements DeliveryTarget {
  readonly id: string;
  readonly types: readonly EventType[] = ['blob.stored', 'blob.restored', 'blob.quarantined', 'blob.deleted', 'name.attached', 'name.repointed', 'name.detached'];

  constructor(
    private readonly url: string,
    private readonly secret: string | undefined,
    private readonly dispatcher: Dispatcher,
    private readonly timeoutMs: number,
  ) {
    // The host names the target readably; the hash keeps two hooks on one host apart. No path or
    // query: a webhook URL often carries its own secret.
    this.id = `webhook:${new URL(url).host}#${createHash('sha256').update(url).digest('hex').slice(0, 8)}`;
  }

  readonly claimLimit = 1;

  pick(candidates: ClaimedDelivery[]): ClaimedDelivery[] {
    return candidates.slice(0, 1);
  }

  async ready(): Promise<void> {}

  async send(deliveries: ClaimedDelivery[], { signal }: SendContext): Promise<SendResult> {
    const event = deliveries[0]!.event;
    const body = JSON.stringify(eventView(event));
    const headers: Record<string, string> = {
      'x-fastpull-event': event.type,
      'x-fastpull-event-id': String(event.id),
      'x-fastpull-delivery-attempt': String(deliveries[0]!.attempts),
    };
    if (this.secret !== undefined) headers['x-fastpull-signature'] = signBody(this.secret, body);
    return outcome(await postJson(this.dispatcher, this.url, body, headers, this.timeoutMs, signal), 'webhook');
  }
}

/** Requests per minute with a burst of as many; a 429's Retry-After pauses the target as a whole. */
class RateLimit {
  private tokens: number;
  private last = Date.now();
  private pausedUntil = 0;

  constructor(private readonly perMinute: number) {
    this.tokens = perMinute;
  }

  private refill(now: number): void {
    this.tokens = Math.min(this.perMinute, this.tokens + ((now - this.last) * this.perMinute) / 60_000);
    this.last = now;
  }

  async wait(signal: AbortSignal): Promise<void> {
    for (;;) {
      const now = Date.now();
      this.refill(now);
      const waitMs = Math.max(this.pausedUntil - now, this.tokens >= 1 ? 0 : ((1 - this.tokens) * 60_000) / this.perMinute);
      if (waitMs <= 0) return;
      await sleep(Math.ceil(waitMs), undefined, { signal });
    }
  }

  take(): void {
    this.refill(Date.now());
    this.tokens -= 1;
  }

  pause(ms: number): void {
    this.pausedUntil = Math.max(this.pausedUntil, Date.now() + ms);
  }
}

export interface CdnRequest {
  url: string;
  body: string;
  headers: Record<string, string>;
}

/**
 * Purge and prefetch jobs: paths of several events go out in one request up to the CDN's per-request
 * limit; an event with more paths than that is split over several requests (all must succeed).
 */
export class CdnTarget implements DeliveryTarget {
  readonly types: readonly EventType[];
  private readonly limit: RateLimit;

  constructor(
    readonly id: string,
    private readonly build: (action: CdnAction, paths: string[]) => CdnRequest,
    private readonly options: { prefetch: boolean; maxPaths: number; requestsPerMinute: number; timeoutMs: number; dispatcher: Dispatcher },
  ) {
    this.types = cdnEventTypes(options.prefetch);
    this.limit = new RateLimit(options.requestsPerMinute);
  }

  private work(d: ClaimedDelivery) {
    return cdnWork(eventView(d.event), this.options.prefetch);
  }

  pick(candidates: ClaimedDelivery[]): ClaimedDelivery[] {
    const first = candidates[0]!;
    const firstWork = this.work(first);
    if (!firstWork) return [first];
    const chosen = [first];
    const paths = new Set(firstWork.paths);
    for (const c of candidates.slice(1)) {
      const w = this.work(c);
      if (!w || w.action !== firstWork.action) continue;
      const added = w.paths.filter((p) => !paths.has(p));
      if (paths.size + added.length > this.options.maxPaths) continue;
      added.forEach((p) => paths.add(p));
      chosen.push(c);
    }
    return chosen;
  }

  ready(signal: AbortSignal): Promise<void> {
    return this.limit.wait(signal);
  }

  async send(deliveries: ClaimedDelivery[], context: SendContext): Promise<SendResult> {
    const works = deliveries.map((d) => this.work(d)).filter((w) => w !== undefined);
    if (works.length === 0) return { ok: true };
    const action = works[0]!.action;
    const paths = [...new Set(works.flatMap((w) => w.paths))];
    return this.sendPaths(action, paths, context);
  }

  /** Sends paths in as many requests as the per-request limit needs (also `fastpull purge`). */
  async sendPaths(action: CdnAction, paths: string[], context: SendContext): Promise<SendResult> {
    for (let i = 0; i < paths.length; i += this.options.maxPaths) {
      if (i > 0) {
        await this.limit.wait(context.signal);
        context.renew();
      }
      const req = this.build(action, paths.slice(i, i + this.options.maxPaths));
      this.limit.take();
      const result = outcome(
        await postJson(this.options.dispatcher, req.url, req.body, req.headers, this.options.timeoutMs, context.signal),
        `CDN ${action}`,
      );
      if (!result.ok) {
        if (result.retryAfterMs !== undefined) this.limit.pause(result.retryAfterMs);
        return result;
      }
    }
    return { ok: true };
  }
}

/** CDN77 API v3: POST {api}/v3/cdn/{resource}/job/{purge|prefetch} with {"paths": [...]} and a bearer token. */
export function cdn77Request(apiUrl: string, resourceId: string, token: string) {
  const base = apiUrl.replace(/\/+$/, '');
  return (action: CdnAction, paths: string[]): CdnRequest => ({
    url: `${base}/v3/cdn/${encodeURIComponent(resourceId)}/job/${action}`,
    body: JSON.stringify({ paths }),
    headers: { authorization: `Bearer ${token}` },
  });
}

/** Any purge-capable cache: the body template gets {{paths}} (a JSON array) and {{action}}. */
export function genericRequest(purgeUrl: string, prefetchUrl: string | undefined, template: string, authorization: string | undefined) {
  const render = (action: CdnAction, paths: string[]) =>
    template.replaceAll('{{paths}}', JSON.stringify(paths)).replaceAll('{{action}}', action);
  try {
    JSON.parse(render('purge', ['/distfiles/x']));
  } catch {
    throw new Error('invalid configuration FASTPULL_CDN_BODY_TEMPLATE: not JSON once {{paths}} and {{action}} are filled in');
  }
  return (action: CdnAction, paths: string[]): CdnRequest => ({
    url: action === 'prefetch' ? (prefetchUrl ?? purgeUrl) : purgeUrl,
    body: render(action, paths),
    headers: authorization !== undefined ? { authorization } : {},
  });
}

type TargetConfig = Pick<
  Config,
  | 'webhooks'
  | 'webhookSecret'
  | 'cdn'
  | 'cdn77ApiUrl'
  | 'cdn77ResourceId'
  | 'cdn77Token'
  | 'cdnPurgeUrl'
  | 'cdnPrefetchUrl'
  | 'cdnBodyTemplate'
  | 'cdnAuthorization'
  | 'cdnPrefetch'
  | 'cdnMaxPaths'
  | 'cdnRequestsPerMinute'
  | 'eventTimeoutMs'
>;

/** The CDN target the configuration describes, if any. Throws on an incomplete CDN configuration. */
export function buildCdnTarget(config: TargetConfig, dispatcher: Dispatcher): CdnTarget | undefined {
  const options = {
    prefetch: config.cdnPrefetch,
    maxPaths: config.cdnMaxPaths,
    requestsPerMinute: config.cdnRequestsPerMinute,
    timeoutMs: config.eventTimeoutMs,
    dispatcher,
  };
  if (config.cdn === 'cdn77') {
    if (!config.cdn77ResourceId || !config.cdn77Token) {
      throw new Error('invalid configuration: FASTPULL_CDN=cdn77 needs FASTPULL_CDN77_RESOURCE_ID and FASTPULL_CDN77_TOKEN');
    }
    return new CdnTarget('cdn:cdn77', cdn77Request(config.cdn77ApiUrl, config.cdn77ResourceId, config.cdn77Token), options);
  }
  if (config.cdn === 'generic') {
    if (!config.cdnPurgeUrl) throw new Error('invalid configuration: FASTPULL_CDN=generic needs FASTPULL_CDN_PURGE_URL');
    return new CdnTarget(
      'cdn:generic',
      genericRequest(config.cdnPurgeUrl, config.cdnPrefetchUrl, config.cdnBodyTemplate, config.cdnAuthorization),
      options,
    );
  }
  return undefined;
}

export function buildTargets(config: TargetConfig, dispatcher: Dispatcher): DeliveryTarget[] {
  const cdn = buildCdnTarget(config, dispatcher);
  return [
    ...(cdn ? [cdn] : []),
    ...config.webhooks.map((url) => new WebhookTarget(url, config.webhookSecret, dispatcher, config.eventTimeoutMs)),
  ];
}
