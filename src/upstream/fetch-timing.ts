import { UpstreamError, type Fetcher } from './fetcher.js';
import type { UpstreamStats } from './stats.js';

/**
 * Reports how long each upstream download took, from the first request (redirects and retries
 * included) to the end of its body, through stats.fetched(seconds, result). The body is consumed
 * elsewhere (ingest), so the clock stops when the body stream closes: 'complete' when it was read
 * to the end, 'incomplete' when it was abandoned; a failure before any body is its failure kind.
 */
export function timeFetches(fetcher: Fetcher, stats: UpstreamStats): Fetcher {
  const open = fetcher.open.bind(fetcher);
  fetcher.open = async (url, options) => {
    const started = performance.now();
    const seconds = () => (performance.now() - started) / 1000;
    try {
      const res = await open(url, options);
      res.body.once('close', () => stats.fetched(seconds(), res.body.readableEnded ? 'complete' : 'incomplete'));
      return res;
    } catch (err) {
      stats.fetched(seconds(), err instanceof UpstreamError ? err.failure : 'error');
      throw err;
    }
  };
  return fetcher;
}
