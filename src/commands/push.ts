import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import path from 'node:path';
import { Readable } from 'node:stream';
import { request } from 'undici';
import { loadConfig } from '../config.js';
import { hashFile, type Digests } from '../store/digests.js';
import { filenameProblem } from '../domain/names.js';
import { secondsOption, runCommand, UsageError } from './args.js';
import { ClientError, ORIGIN_OPTIONS, ORIGIN_USAGE, originHas, originSettings, withRetries, type RetryPolicy } from './origin-client.js';
import { formatBytes, Progress } from './progress.js';

const USAGE = `usage: fastpull push [--origin URL] [--token T] [--retries N] [--retry-delay-ms MS] [--progress-interval SECONDS] <files...>
  hashes each file, links it by name when the origin already has the bytes, uploads it otherwise;
  exit 1 if any file failed
${ORIGIN_USAGE}
  --token T             upload token (default FASTPULL_TOKEN; prefer the variable: argv is visible in ps)
  --progress-interval S seconds between progress lines when stderr is not a terminal (default 10)`;

type Outcome = 'uploaded' | 'linked' | 'present' | 'failed';

export async function pushCommand(args: string[]): Promise<number> {
  const spec = {
    name: 'push',
    usage: USAGE,
    options: { ...ORIGIN_OPTIONS, token: { type: 'string' }, 'progress-interval': { type: 'string' } },
    positionals: true,
  } as const;
  // The retry callback is made before the bar exists (it needs the file sizes), so it reaches it through here.
  const shown: { bar?: Progress } = {};
  let setup: { origin: string; policy: RetryPolicy; token: string; files: string[]; intervalMs: number } | undefined;
  const code = await runCommand(spec, args, async (values, files) => {
    if (files.length === 0) throw new UsageError('no files given');
    const config = loadConfig();
    const { origin, policy } = originSettings(values, config.pushOrigin, (what, attempt, reason) =>
      shown.bar?.log(`retry ${attempt}: ${what}: ${reason}`),
    );
    const token = values.token ?? config.pushToken;
    if (!token) throw new UsageError('no token (--token or FASTPULL_TOKEN)');
    const intervalMs = secondsOption(values['progress-interval'] ?? '10', 'progress-interval') * 1000;
    setup = { origin, policy, token, files, intervalMs };
    return 0;
  });
  if (!setup) return code;
  const { origin, policy, token, files } = setup;
  const auth = { authorization: `Bearer ${token}` };

  const sizes = await Promise.all(files.map((f) => stat(f).then((s) => (s.isFile() ? s.size : 0), () => 0)));
  const bar = new Progress({
    label: 'push',
    totalFiles: files.length,
    totalBytes: sizes.reduce((a, b) => a + b, 0),
    intervalMs: setup.intervalMs,
  });
  shown.bar = bar;
  const counts: Record<Outcome, number> = { uploaded: 0, linked: 0, present: 0, failed: 0 };
  const failures: string[] = [];

  for (const file of files) {
    const filename = path.basename(file);
    let sent = 0;
    let outcome: Outcome;
    try {
      const info = await stat(file);
      if (!info.isFile()) throw new ClientError(0, 'not a regular file');
      const problem = filenameProblem(filename);
      if (problem) throw new ClientError(0, problem);
      const digests = await hashFile(file);
      outcome = await pushOne(origin, auth, policy, file, filename, digests, (n) => {
        sent += n;
        bar.read(n);
      });
      bar.log(`${outcome} ${filename} (${formatBytes(digests.size)})`);
    } catch (err) {
      outcome = 'failed';
      const message = `${filename}: ${(err as Error).message}`;
      failures.push(message);
      bar.log(`failed ${message}`);
    }
    counts[outcome]++;
    // A retried upload re-sends bytes; the bar accounts for the file once.
    bar.fileDone(Math.max(0, (sizes[files.indexOf(file)] ?? 0) - sent));
  }
  bar.finish();

  const out = [
    `push summary (${origin}):`,
    `  uploaded:                      ${counts.uploaded}`,
    `  linked (origin had the bytes): ${counts.linked + counts.present}`,
    `  failed:                        ${counts.failed}`,
    ...failures.map((f) => `    ${f}`),
  ];
  console.log(out.join('\n'));
  return counts.failed > 0 ? 1 : 0;
}

async function pushOne(
  origin: string,
  auth: Record<string, string>,
  policy: RetryPolicy,
  file: string,
  filename: string,
  digests: Digests,
  onBytes: (n: number) => void,
): Promise<Outcome> {
  const has = await originHas(origin, digests.sha512, policy);
  if (has.present && has.size === digests.size) {
    try {
      await withRetries(`link ${filename}`, policy, () =>
        request(`${origin}/api/v1/links`, {
          method: 'POST',
          headers: { ...auth, 'content-type': 'application/json' },
          body: JSON.stringify({ filename, sha512: digests.sha512 }),
        }),
      );
      return 'linked';
    } catch (err) {
      // The HEAD may have been answered by a cache while the origin lost (or quarantined) the blob: upload it.
      if (!(err instanceof ClientError && err.status === 404)) throw err;
    }
  }

  const query = new URLSearchParams({ size: String(digests.size), sha512: digests.sha512, blake2b: digests.blake2b });
  const url = `${origin}/api/v1/distfiles/${encodeURIComponent(filename)}?${query}`;
  const answer = await withRetries(`upload ${filename}`, policy, () => {
    // Each attempt streams the file afresh; the origin re-verifies every byte against the declared digests,
    // so a file changed since it was hashed is refused (422) rather than stored under the wrong hash.
    const body = Readable.from(
      (async function* () {
        for await (const chunk of createReadStream(file, { highWaterMark: 1024 * 1024 })) {
          onBytes((chunk as Buffer).length);
          yield chunk as Buffer;
        }
      })(),
    );
    return request(url, {
      method: 'PUT',
      headers: { ...auth, 'content-type': 'application/octet-stream', 'content-length': String(digests.size) },
      body,
    });
  });
  return answer.status === 201 ? 'uploaded' : 'present';
}
