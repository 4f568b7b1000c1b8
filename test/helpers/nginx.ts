import { spawn, spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { request } from 'undici';

export const NGINX = '/usr/sbin/nginx';
/** Outside CI a missing nginx skips (saying why); under CI=true it must fail. */
export const nginxMissing = !existsSync(NGINX) && process.env.CI !== 'true';
if (!existsSync(NGINX)) process.stderr.write(`${NGINX} not found: nginx tests ${process.env.CI === 'true' ? 'fail' : 'skip'}\n`);

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

/**
 * Debian's nginx running one of the shipped http{}-level templates, ${NAME}s replaced as envsubst would
 * (nginx's own $variables untouched), everything it writes under a temp dir. One process, no privilege
 * drop, so it reads a test's data directory as the test does.
 */
export async function startTemplate(template: URL, vars: (port: number) => Record<string, string>): Promise<RunningNginx> {
  const dir = await mkdtemp(path.join(tmpdir(), 'fastpull-nginx-'));
  const port = await freePort();
  const rendered = (await readFile(template, 'utf8')).replace(/\$\{(\w+)\}/g, (whole, name: string) => vars(port)[name] ?? whole);
  if (/\$\{/.test(rendered)) throw new Error('template variables left unreplaced');
  await writeFile(path.join(dir, 'site.conf'), rendered);
  await mkdir(path.join(dir, 'temp'));
  const temp = (name: string) => path.join(dir, 'temp', name);
  await writeFile(
    path.join(dir, 'nginx.conf'),
    `master_process off;
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
