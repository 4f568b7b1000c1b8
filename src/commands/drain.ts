import { mkdir, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { loadConfig } from '../config.js';
import { drainFilePath } from '../ops/readiness.js';
import { runCommand, UsageError } from './args.js';

const USAGE = `usage: fastpull drain [--off] [--data-dir DIR]
  creates the drain file (FASTPULL_DRAIN_FILE, default <dataDir>/drain) so /readyz answers 503 and a load
  balancer stops sending new traffic; downloads keep being served. --off removes it.`;

/**
 * `fastpull drain` makes /readyz fail (so a load balancer stops sending new traffic) while the
 * server keeps answering everything it is sent; `--off` undoes it. Works on a running server
 * because readyz looks for the file on every probe.
 */
export async function drainCommand(args: string[]): Promise<number> {
  const spec = { name: 'drain', usage: USAGE, options: { off: { type: 'boolean' }, 'data-dir': { type: 'string' } } } as const;
  return runCommand(spec, args, async (values) => {
    const config = loadConfig(values['data-dir'] !== undefined ? { dataDir: path.resolve(values['data-dir']) } : {});
    const file = drainFilePath(config);
    if (file === undefined) {
      throw new UsageError(`draining by file is off (drainFile: null in ${config.configFile ?? 'the config file'}); set a path to use it`);
    }
    if (values.off) {
      await rm(file, { force: true });
      console.log(`drain off: removed ${file}; /readyz reports ready again when its other checks pass`);
      return 0;
    }
    await mkdir(path.dirname(file), { recursive: true });
    await writeFile(file, `drained at ${new Date().toISOString()} by pid ${process.pid}\n`);
    console.log(`drain on: created ${file}; /readyz now answers 503 while downloads keep working`);
    return 0;
  });
}
