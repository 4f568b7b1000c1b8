import { CreateBucketCommand, S3Client } from '@aws-sdk/client-s3';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { request } from 'undici';
import { freePort, missingBinaries, portOpen, run, Service, waitFor } from './services.js';

/**
 * OpenStack Swift "all in one" with its S3 API (s3api), started in a temp dir on free loopback ports:
 * account, container, object and proxy servers (one process each, workers = 0) plus memcached.
 * A real object store with real SigV4 checking, not a mock (see shared/scale-out.md).
 */
export interface Swift {
  /** S3 endpoint (path-style addressing only). */
  endpoint: string;
  region: string;
  credentials: { accessKeyId: string; secretAccessKey: string };
  /** A client configured for this Swift; the caller's to use, closed by stop(). */
  client: S3Client;
  /** Creates a fresh bucket and returns its name. */
  createBucket(prefix?: string): Promise<string>;
  stop(): Promise<void>;
}

const BINARIES = ['swift-ring-builder', 'swift-account-server', 'swift-container-server', 'swift-object-server', 'swift-proxy-server', 'memcached'];

/** Why Swift cannot start here, or undefined. */
export function swiftMissing(): string | undefined {
  return missingBinaries(BINARIES, 'swift swift-proxy swift-object swift-account swift-container memcached');
}

const ACCESS_KEY = 'test:tester';
const SECRET_KEY = 'testing';
const REGION = 'us-east-1';

export async function startSwift(): Promise<Swift> {
  const dir = await mkdtemp(path.join(tmpdir(), 'fp-swift-'));
  const services: Service[] = [];
  const stopAll = async () => {
    for (const s of services.reverse()) await s.stop();
    await rm(dir, { recursive: true, force: true });
  };
  try {
    const devices = path.join(dir, 'devices');
    await mkdir(path.join(devices, 'd1'), { recursive: true });
    const ports = { account: await freePort(), container: await freePort(), object: await freePort(), proxy: await freePort(), memcached: await freePort() };

    await writeFile(
      path.join(dir, 'swift.conf'),
      '[swift-hash]\nswift_hash_path_suffix = fastpull-test\nswift_hash_path_prefix = fastpull-test\n\n[storage-policy:0]\nname = Policy-0\ndefault = yes\n',
    );
    // Running as root: the servers would drop to the `swift` user, which cannot write our temp dir.
    const common = (port: number) =>
      `[DEFAULT]\nbind_ip = 127.0.0.1\nbind_port = ${port}\nworkers = 0\nswift_dir = ${dir}\ndevices = ${devices}\nmount_check = false\nuser = root\nlog_level = WARNING\n`;
    // One ring per server kind, one replica on one device; the three are independent, so built side by side.
    await Promise.all(
      (['account', 'container', 'object'] as const).map(async (kind) => {
        await writeFile(
          path.join(dir, `${kind}-server.conf`),
          `${common(ports[kind])}\n[pipeline:main]\npipeline = ${kind}-server\n\n[app:${kind}-server]\nuse = egg:swift#${kind}\n`,
        );
        const builder = path.join(dir, `${kind}.builder`);
        await run('swift-ring-builder', [builder, 'create', '10', '1', '1']);
        await run('swift-ring-builder', [builder, 'add', `r1z1-127.0.0.1:${ports[kind]}/d1`, '100']);
        await run('swift-ring-builder', [builder, 'rebalance']);
      }),
    );
    const filters = {
      catch_errors: 'catch_errors',
      gatekeeper: 'gatekeeper',
      healthcheck: 'healthcheck',
      'proxy-logging': 'proxy_logging',
      cache: `memcache\nmemcache_servers = 127.0.0.1:${ports.memcached}`,
      listing_formats: 'listing_formats',
      bulk: 'bulk',
      tempurl: 'tempurl',
      s3api: `s3api\nlocation = ${REGION}`,
      tempauth: `tempauth\nuser_test_tester = ${SECRET_KEY} .admin`,
      copy: 'copy',
      slo: 'slo',
      dlo: 'dlo',
    };
    await writeFile(
      path.join(dir, 'proxy-server.conf'),
      [
        common(ports.proxy),
        '[pipeline:main]',
        'pipeline = catch_errors gatekeeper healthcheck proxy-logging cache listing_formats bulk tempurl s3api tempauth copy slo dlo proxy-logging proxy-server',
        '',
        '[app:proxy-server]',
        'use = egg:swift#proxy',
        'account_autocreate = true',
        '',
        ...Object.entries(filters).map(([name, spec]) => `[filter:${name}]\nuse = egg:swift#${spec}\n`),
      ].join('\n'),
    );

    services.push(new Service('memcached', 'memcached', ['-u', 'root', '-l', '127.0.0.1', '-p', String(ports.memcached), '-U', '0', '-m', '16'], path.join(dir, 'memcached.log')));
    for (const kind of ['account', 'container', 'object', 'proxy'] as const) {
      services.push(new Service(kind, `swift-${kind}-server`, [path.join(dir, `${kind}-server.conf`), '-v'], path.join(dir, `${kind}.log`)));
    }
    for (const [name, port] of Object.entries(ports)) {
      const service = services.find((s) => s.name === name);
      await waitFor(`swift ${name} on :${port}`, async () => {
        if (service?.exited) throw new Error(`${name} exited early (${JSON.stringify(service.exited)}), see ${service.logFile}`);
        return portOpen(port);
      });
    }
    const endpoint = `http://127.0.0.1:${ports.proxy}`;
    await waitFor('swift proxy /healthcheck', async () => (await request(`${endpoint}/healthcheck`).then((r) => r.body.dump().then(() => r.statusCode))) === 200);

    const credentials = { accessKeyId: ACCESS_KEY, secretAccessKey: SECRET_KEY };
    const client = new S3Client({ endpoint, region: REGION, credentials, forcePathStyle: true });
    let buckets = 0;
    return {
      endpoint,
      region: REGION,
      credentials,
      client,
      async createBucket(prefix = 'fastpull') {
        const bucket = `${prefix}-${process.pid}-${++buckets}`;
        await client.send(new CreateBucketCommand({ Bucket: bucket }));
        return bucket;
      },
      async stop() {
        client.destroy();
        await stopAll();
      },
    };
  } catch (err) {
    await stopAll();
    throw err;
  }
}
