import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import path from 'node:path';
import { Readable } from 'node:stream';
import { request } from 'undici';
import { loadConfig } from '../config.js';
import { hashFile, type Digests } from '../store/digests.js';
import { filenameProblem } from '../domain/names.js';
import { ClientError, normalizeOrigin, originHas, parseOriginArgs, withRetries, type RetryPolicy } from './origin-client.js';
import { formatBytes, Progress } from './progress.js';

const USAGE = `usage: fastpull push [--origin URL] [--token T] [--retries N] [--retry-delay-ms MS] <files...>
  --origin defaults to FASTPULL_ORIGIN, --token to FASTPULL_TOKEN (prefer the variable: argv is visible in ps)`;

type Outcome = 'uploaded' | 'linked' | 'present' | 'failed';

export async function pushCommand(args: string[]): Promise<number> {
  if (args.includes('--help') || args.includes('-h')) {
    console.log(USAGE);
    return 0;
  }
  const parsed = parseOriginArgs(
    args,
    { token: { type: 'string' }, 'progress-interval': { type: 'string', default: '10' } },
    ['progress-interval'],
    'no files given',
  );
  if ('error' in parsed) {
    console.error(`fastpull push: ${parsed.error}\n${USAGE}`);
    return 2;
  }
  const { values, positionals: files } = parsed;
  const config = loadConfig();
  const originText = values.origin ?? config.pushOrigin;
  const token = values.token ?? config.pushToken;
  if (!originText || !token) {
    console.error(`fastpull push: ${!originText ? 'no origin (--origin or FASTPULL_ORIGIN)' : 'no token (--token or FASTPULL_TOKEN)'}\n${USAGE}`);
    return 2;
  }
  let origin: string;
  try {
    origin = normalizeOrigin(originText);
  } catch (err) {
    console.error(`fastpull push: ${(err as Error).message}`);
    return 2;
  }
  const auth = { authorization: `Bearer ${token}` };

  const sizes = await Promise.all(files.map((f) => stat(f).then((s) => (s.isFile() ? s.size : 0), () => 0)));
  const progress = new Progress({
    label: 'push',
    totalFiles: files.length,
    totalBytes: sizes.reduce((a, b) => a + b, 0),
    intervalMs: Number(values['progress-interval']) * 1000,
  });
  const policy: RetryPolicy = {
    retries: Number(values.retries),
    baseDelayMs: Number(values['retry-delay-ms']),
    onRetry: (what, attempt, reason) => progress.log(`retry ${attempt}: ${what}: ${reason}`),
  };
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
        progress.read(n);
      });
      progress.log(`${outcome} ${filename} (${formatBytes(digests.size)})`);
    } catch (err) {
      outcome = 'failed';
      const message = `${filename}: ${(err as Error).message}`;
      failures.push(message);
      progress.log(`failed ${message}`);
    }
    counts[outcome]++;
    // A retried upload re-sends bytes; the bar accounts for the file once.
    progress.fileDone(Math.max(0, (sizes[files.indexOf(file)] ?? 0) - sent));
  }
  progress.finish();

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
