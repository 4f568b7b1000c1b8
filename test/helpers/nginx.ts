import { spawn, spawnSync } from 'node:child_process';
import { chmod, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { request } from 'undici';
import { haveTool } from './tools.js';

export const NGINX = '/usr/sbin/nginx';
/** Outside CI a missing nginx skips (saying why); under CI=true it fails (tools.ts). */
export const nginxMissing = !haveTool(NGINX, 'nginx');

export async function freePort(): Promise<number> {
  const probe = createServer();
  await new Promise<void>((resolve) => probe.listen(0, '127.0.0.1', resolve));
  const { port } = probe.address() as { port: number };
  await new Promise((resolve) => probe.close(resolve));
  return port;
}

export interface RunningNginx {
  url: string;
  stop(): Promise<void>;
}

export interface TemplateOptions {
  /**
   * A master and one worker, as the nginx image runs (the worker drops root privileges, so the temp dir is
   * made world-readable), instead of one process that reads a test's data directory as the test does.
   */
  worker?: boolean;
}

/**
 * Debian's nginx running one of the shipped http{}-level templates, ${NAME}s replaced as the nginx image's
 * envsubst step would (only names that are given; nginx's own $variables untouched), everything it writes
 * under a temp dir, which `vars` receives for paths of its own (e.g. a cache).
 */
export async function startTemplate(
  template: URL,
  vars: (port: number, dir: string) => Record<string, string>,
  options: TemplateOptions = {},
): Promise<RunningNginx> {
  const dir = await mkdtemp(path.join(tmpdir(), 'fastpull-nginx-'));
  if (options.worker) await chmod(dir, 0o755);
  const port = await freePort();
  const values = vars(port, dir);
  const rendered = (await readFile(template, 'utf8')).replace(/\$\{(\w+)\}/g, (whole, name: string) => values[name] ?? whole);
  if (/\$\{/.test(rendered)) throw new Error('template variables left unreplaced');
  await writeFile(path.join(dir, 'site.conf'), rendered);
  await mkdir(path.join(dir, 'temp'));
  const temp = (name: string) => path.join(dir, 'temp', name);
  await writeFile(
    path.join(dir, 'nginx.conf'),
    `${options.worker ? 'worker_processes 1;' : 'master_process off;'}
pid ${path.join(dir, 'nginx.pid')};
error_log ${path.join(dir, 'error.log')} warn;
events { worker_connections 256; }
http {
  access_log off;
  client_body_temp_path ${temp('client_body')};
  proxy_temp_path ${temp('proxy')};
  fastcgi_temp_path ${temp('fastcgi')};
  uwsgi_temp_path ${temp('uwsgi')};
  scgi_temp_path ${temp('scgi')};
  include ${path.join(dir, 'site.conf')};
}
`,
  );
  const args = ['-p', dir, '-e', path.join(dir, 'error.log'), '-c', path.join(dir, 'nginx.conf')];
  const check = spawnSync(NGINX, [...args, '-t'], { encoding: 'utf8' });
  if (check.status !== 0) throw new Error(`nginx -t rejected ${template.pathname}:\n${check.stderr}`);
  const child = spawn(NGINX, [...args, '-g', 'daemon off;'], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const url = `http://127.0.0.1:${port}`;
  for (let attempt = 0; ; attempt++) {
    if (child.exitCode !== null) throw new Error(`nginx exited (${child.exitCode}): ${stderr}`);
    try {
      await (await request(`${url}/distfiles/layout.conf`)).body.dump();
      break;
    } catch (err) {
      if (attempt > 100) throw err;
      await sleep(100);
    }
  }
  return {
    url,
    async stop() {
      if (child.exitCode === null) {
        child.kill('SIGTERM');
        await exited;
      }
      await rm(dir, { recursive: true, force: true });
    },
  };
}
