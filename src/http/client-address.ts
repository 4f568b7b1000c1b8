import type { IncomingMessage } from 'node:http';
import { BlockList, isIP } from 'node:net';
import { parseCidr, type TrustProxy } from '../config.js';

/** proxy-addr's trust function: may `address`, `hop` steps from this server (0 = the socket's peer), set X-Forwarded-For? */
export type TrustFunction = (address: string, hop: number) => boolean;

const unmapped = (address: string) => (address.startsWith('::ffff:') && isIP(address.slice(7)) === 4 ? address.slice(7) : address);

/**
 * FASTPULL_TRUST_PROXY as one function for fastify (request.ip) and the download hot path, so both
 * name the same client. Fastify 5 reads a bare number as "trust nobody"; here a hop count trusts that
 * many hops, whoever they are (hence the README's advice to list addresses instead).
 */
export function trustFunction(trust: TrustProxy): TrustFunction {
  if (trust === false) return () => false;
  if (typeof trust === 'number') return (_address, hop) => hop < trust;
  const list = new BlockList();
  for (const cidr of trust) {
    const [network, prefix] = parseCidr(cidr);
    list.addSubnet(network, prefix, isIP(network) === 6 ? 'ipv6' : 'ipv4');
  }
  return (address) => {
    const plain = unmapped(address);
    const family = isIP(plain);
    return family !== 0 && list.check(plain, family === 6 ? 'ipv6' : 'ipv4');
  };
}

/**
 * proxy-addr's rule: walk from the socket's peer back through X-Forwarded-For (right to left) while
 * each hop is trusted; the first untrusted one is the client (all trusted: the left-most).
 */
export function clientAddress(req: IncomingMessage, trust: TrustFunction): string | undefined {
  const peer = req.socket.remoteAddress;
  if (peer === undefined || !trust(peer, 0)) return peer;
  const header = req.headers['x-forwarded-for'];
  if (typeof header !== 'string' || header === '') return peer;
  const hops = header.split(',');
  let address = peer;
  for (let i = hops.length - 1, hop = 1; i >= 0; i--, hop++) {
    address = hops[i]!.trim();
    if (!trust(address, hop)) break;
  }
  return address;
}
