import { parseArgs } from 'node:util';
import cluster from 'node:cluster';
import { clusterRole, loadConfig } from '../config.js';
import { createLogger } from '../logger.js';
import { joinCluster, runPrimary } from '../ops/cluster.js';
import { startServer } from '../server.js';

export async function serveCommand(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    options: {
      port: { type: 'string' },
      host: { type: 'string' },
      'data-dir': { type: 'string' },
      'read-only': { type: 'boolean' },
    },
  });
  const config = loadConfig({
    ...(values.port !== undefined ? { port: Number(values.port) } : {}),
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
}
