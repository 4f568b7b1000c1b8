import { parseArgs } from 'node:util';
import { loadConfig } from '../config.js';
import { startServer } from '../server.js';

export async function serveCommand(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    options: { port: { type: 'string' }, host: { type: 'string' }, 'data-dir': { type: 'string' } },
  });
  const config = loadConfig({
    ...(values.port !== undefined ? { port: Number(values.port) } : {}),
    ...(values.host !== undefined ? { host: values.host } : {}),
    ...(values['data-dir'] !== undefined ? { dataDir: values['data-dir'] } : {}),
  });
  const server = await startServer(config);
  await new Promise<void>((resolve) => {
    const stop = (signal: string) => {
      server.logger.info({ signal }, 'shutting down');
      server.close().then(resolve, (err: unknown) => {
        server.logger.error({ err }, 'error while shutting down');
        resolve();
      });
    };
    process.once('SIGTERM', () => stop('SIGTERM'));
    process.once('SIGINT', () => stop('SIGINT'));
  });
  return 0;
}
