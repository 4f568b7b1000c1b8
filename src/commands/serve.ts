import cluster from 'node:cluster';
import { clusterRole, loadConfig } from '../config.js';
import { createLogger } from '../logger.js';
import { joinCluster, runPrimary } from '../ops/cluster.js';
import { startServer } from '../server.js';
import { intOption, runCommand } from './args.js';

const USAGE = `usage: fastpull serve [--port N] [--host H] [--data-dir D] [--read-only]
  runs the origin; flags win over FASTPULL_* variables, which win over the config file (FASTPULL_CONFIG)
  --port N       listen port, 0 for any free one (FASTPULL_PORT, default 8080)
  --host H       listen address (FASTPULL_HOST, default 0.0.0.0: every interface)
  --data-dir D   blobs, temp files, quarantine and index.sqlite (FASTPULL_DATA_DIR, default ./data)
  --read-only    refuse every write; downloads continue (FASTPULL_READ_ONLY)
  SIGTERM or SIGINT: stop accepting, let transfers finish (FASTPULL_SHUTDOWN_GRACE_MS), exit 0`;

export async function serveCommand(args: string[]): Promise<number> {
  const spec = {
    name: 'serve',
    usage: USAGE,
    options: { port: { type: 'string' }, host: { type: 'string' }, 'data-dir': { type: 'string' }, 'read-only': { type: 'boolean' } },
  } as const;
  return runCommand(spec, args, async (values) => {
    const config = loadConfig({
      ...(values.port !== undefined ? { port: intOption(values.port, 'port', 0, 65535) } : {}),
      ...(values.host !== undefined ? { host: values.host } : {}),
      ...(values['data-dir'] !== undefined ? { dataDir: values['data-dir'] } : {}),
      ...(values['read-only'] ? { readOnly: true } : {}),
    });
    const role = clusterRole();
    if (config.workers > 1 && cluster.isPrimary && role === undefined) return runPrimary(config, createLogger(config.logLevel));
    const server = await startServer(config, role ? { cluster: joinCluster(role) } : {});
    // First SIGTERM/SIGINT: stop accepting, let downloads finish (up to shutdownGraceMs), close the
    // database, exit 0. The handlers are `once`, so a second signal kills the process at once.
    return new Promise<number>((resolve) => {
      const stop = (signal: string) => {
        server.logger.info({ signal, graceMs: config.shutdownGraceMs }, 'shutting down');
        server.close().then(
          () => {
            // The IPC channel to the primary would keep this process alive after everything closed.
            cluster.worker?.disconnect();
            resolve(0);
          },
          (err: unknown) => {
            server.logger.error({ err }, 'error while shutting down');
            resolve(1);
          },
        );
      };
      process.once('SIGTERM', () => stop('SIGTERM'));
      process.once('SIGINT', () => stop('SIGINT'));
    });
  });
}
