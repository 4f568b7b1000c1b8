import { lookup as dnsLookup, type LookupAddress } from 'node:dns';
import { BlockList, isIP, type LookupFunction } from 'node:net';
import { buildConnector } from 'undici';
import { parseCidr } from '../config.js';

/**
 * Outbound requests (fetch jobs, pull-through, later webhooks) go wherever a client's URL or an
 * upstream's redirect points. Without a guard they reach the origin's own host and network: its
 * /metrics, a cloud metadata service at 169.254.169.254, an admin port on 127.0.0.1 — and the
 * fetched bytes are then published to everyone. So addresses that are not the public internet
 * are refused unless an operator lists them in FASTPULL_FETCH_ALLOW_CIDRS.
 *
 * The check runs on the address a socket is actually opened to: inside the connector, after DNS
 * (a hostname that resolves to 127.0.0.1 is caught, and no earlier lookup can be rebound) and on
 * every connection, so every redirect hop is checked too.
 */

/** Addresses that are not the public internet (RFC 6890 special-purpose blocks that could reach inside). */
const REFUSED_IPV4 = [
  ['0.0.0.0', 8], // "this network", incl. the unspecified address
  ['10.0.0.0', 8], // RFC 1918
  ['100.64.0.0', 10], // carrier-grade NAT (RFC 6598)
  ['127.0.0.0', 8], // loopback
  ['169.254.0.0', 16], // link-local, incl. cloud metadata services
  ['172.16.0.0', 12], // RFC 1918
  ['192.0.0.0', 24], // IETF protocol assignments
  ['192.168.0.0', 16], // RFC 1918
  ['198.18.0.0', 15], // benchmarking
  ['224.0.0.0', 4], // multicast
  ['240.0.0.0', 4], // reserved, incl. broadcast
] as const;

const REFUSED_IPV6 = [
  ['::', 128], // unspecified
  ['::1', 128], // loopback
  ['fc00::', 7], // unique local
  ['fe80::', 10], // link-local
  ['fec0::', 10], // site-local (deprecated, still routable inside some networks)
  ['ff00::', 8], // multicast
] as const;

export const ADDRESS_NOT_ALLOWED = 'EADDRNOTALLOWED';

/**
 * The one refusal. Its message is the same whatever lies behind the address (open port, closed
 * port, nothing at all): the refusal happens before any packet is sent, so a job's failure reason
 * cannot be used to scan the origin's network.
 */
export class AddressNotAllowedError extends Error {
  readonly code = ADDRESS_NOT_ALLOWED;
  constructor(host: string) {
    super(`address not allowed: ${host} is not a public address (see FASTPULL_FETCH_ALLOW_CIDRS)`);
    this.name = 'AddressNotAllowedError';
  }
}

/** Expands an IPv6 literal (with `::` and an optional dotted IPv4 tail) into eight 16-bit groups. */
function ipv6Groups(address: string): number[] {
  let text = address.toLowerCase();
  const percent = text.indexOf('%');
  if (percent !== -1) text = text.slice(0, percent);
  const dotted = /(\d+\.\d+\.\d+\.\d+)$/.exec(text);
  if (dotted) {
    const [a, b, c, d] = dotted[1]!.split('.').map(Number) as [number, number, number, number];
    text = `${text.slice(0, dotted.index)}${((a << 8) | b).toString(16)}:${((c << 8) | d).toString(16)}`;
  }
  const [head, tail] = text.split('::') as [string, string | undefined];
  const parse = (part: string | undefined) => (part ? part.split(':').map((g) => parseInt(g, 16)) : []);
  const left = parse(head);
  const right = parse(tail);
  const fill = tail === undefined ? [] : new Array<number>(8 - left.length - right.length).fill(0);
  return [...left, ...fill, ...right];
}

/**
 * The IPv4 address an IPv6 address stands for, where it embeds one that a packet would reach:
 * IPv4-mapped (::ffff:a.b.c.d), IPv4-compatible (::a.b.c.d), NAT64 (64:ff9b::/96) and 6to4 (2002::/16).
 */
function embeddedIpv4(address: string): string | undefined {
  const g = ipv6Groups(address);
  if (g.length !== 8) return undefined;
  const v4 = (hi: number, lo: number) => `${hi >> 8}.${hi & 0xff}.${lo >> 8}.${lo & 0xff}`;
  const zeros = (from: number, to: number) => g.slice(from, to).every((x) => x === 0);
  if (zeros(0, 5) && g[5] === 0xffff) return v4(g[6]!, g[7]!);
  // ::a.b.c.d, but not :: and ::1, which are IPv6's own unspecified and loopback addresses.
  if (zeros(0, 6) && (g[6] !== 0 || g[7]! > 1)) return v4(g[6]!, g[7]!);
  if (g[0] === 0x64 && g[1] === 0xff9b && zeros(2, 6)) return v4(g[6]!, g[7]!);
  if (g[0] === 0x2002) return v4(g[1]!, g[2]!);
  return undefined;
}

function blockList(cidrs: readonly (readonly [string, number])[]): BlockList {
  const list = new BlockList();
  for (const [network, prefix] of cidrs) list.addSubnet(network, prefix, isIP(network) === 6 ? 'ipv6' : 'ipv4');
  return list;
}

const REFUSED = blockList([...REFUSED_IPV4, ...REFUSED_IPV6]);

/** Which peer addresses outbound connections may reach: everything public, plus the allow-list. */
export class AddressPolicy {
  private readonly allowed: BlockList;

  /** `allowCidrs`: FASTPULL_FETCH_ALLOW_CIDRS, e.g. `['127.0.0.0/8', '::1/128']`. */
  constructor(allowCidrs: readonly string[] = []) {
    this.allowed = blockList(allowCidrs.map(parseCidr));
  }

  allows(address: string): boolean {
    const family = isIP(address);
    if (family === 0) return false;
    const type = family === 4 ? 'ipv4' : 'ipv6';
    if (this.allowed.check(address, type)) return true;
    const inner = family === 6 ? embeddedIpv4(address) : undefined;
    if (inner !== undefined) return this.allowed.check(inner, 'ipv4') || !REFUSED.check(inner, 'ipv4');
    return !REFUSED.check(address, type);
  }

  /** A dns.lookup that hands net.connect only allowed addresses (all forms: `all`, single, any family). */
  readonly lookup: LookupFunction = (hostname, options, callback) => {
    dnsLookup(hostname, { ...options, all: true }, (err, addresses: LookupAddress[]) => {
      if (err) return callback(err, '', 0);
      const usable = addresses.filter((a) => this.allows(a.address));
      if (usable.length === 0) return callback(new AddressNotAllowedError(hostname), '', 0);
      if (options.all) return (callback as unknown as (e: null, a: LookupAddress[]) => void)(null, usable);
      return callback(null, usable[0]!.address, usable[0]!.family);
    });
  };
}

/**
 * An undici connector that opens sockets only to allowed addresses: literal IPs are checked
 * before connecting, hostnames through the guarded lookup, and the connected peer once more
 * (whatever resolved it, the address actually reached is what counts).
 */
export function guardedConnector(policy: AddressPolicy, options: buildConnector.BuildOptions = {}): buildConnector.connector {
  const connect = buildConnector({ ...options, lookup: policy.lookup } as buildConnector.BuildOptions);
  return (opts, callback) => {
    const host = opts.hostname.startsWith('[') ? opts.hostname.slice(1, -1) : opts.hostname;
    if (isIP(host) !== 0 && !policy.allows(host)) {
      callback(new AddressNotAllowedError(host), null);
      return;
    }
    connect(opts, (err, socket) => {
      if (err || !socket) return callback(err ?? new Error('no socket'), null);
      const peer = socket.remoteAddress;
      if (peer === undefined || !policy.allows(peer)) {
        socket.destroy();
        return callback(new AddressNotAllowedError(host), null);
      }
      return callback(null, socket);
    });
  };
}
