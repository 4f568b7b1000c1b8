import { mkdir, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { loadConfig } from '../config.js';
import { drainFilePath } from '../ops/readiness.js';

/**
 * `fastpull drain` makes /readyz fail (so a load balancer stops sending new traffic) while the
 * server keeps answering everything it is sent; `--off` undoes it. Works on a running server
 * because readyz looks for the file on every probe.
 */
export async function drainCommand(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    options: { off: { type: 'boolean', default: false }, 'data-dir': { type: 'string' } },
  });
  const config = loadConfig(values['data-dir'] !== undefined ? { dataDir: path.resolve(values['data-dir']) } : {});
  const file = drainFilePath(config);
  if (values.off) {
    await rm(file, { force: true });
    console.log(`drain off: removed ${file}; /readyz reports ready again when its other checks pass`);
    return 0;
  }
  await mkdir(path.dirname(file), { recursive: true });
  await writeFile(file, `drained at ${new Date().toISOString()} by pid ${process.pid}\n`);
  console.log(`drain on: created ${file}; /readyz now answers 503 while downloads keep working`);
  return 0;
}
