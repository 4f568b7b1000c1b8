import type { IncomingMessage } from 'node:http';
import proxyAddr from '@fastify/proxy-addr';
import type { TrustProxy } from '../config.js';

/**
 * Fastify 5 treats a numeric trustProxy as "trust nobody"; a hop count is given here as proxy-addr's
 * trust function (hop 0 is the connecting peer). It cannot check who that peer is, hence the README's
 * advice to prefer addresses.
 */
export function proxyTrust(trust: TrustProxy): boolean | string[] | ((address: string, hop: number) => boolean) {
  return typeof trust === 'number' ? (_address, hop) => hop < trust : trust;
}

/**
 * The client address exactly as fastify's request.ip derives it (same library, same trust rule),
 * for the lean download path, which answers without a fastify request.
 */
export function clientAddress(trust: TrustProxy): (req: IncomingMessage) => string | undefined {
  if (trust === false) return (req) => req.socket.remoteAddress;
  const trusted = typeof trust === 'number' ? (_address: string, hop: number) => hop < trust : proxyAddr.compile(trust);
  return (req) => proxyAddr(req, trusted);
}
