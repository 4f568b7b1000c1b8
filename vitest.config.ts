import { defineConfig } from 'vitest/config';
import { BACKEND_SUITE } from './test/backends.js';

// FASTPULL_TEST_BACKEND=s3+postgres runs the download/upload/conformance/CLI files on Swift + PostgreSQL
// (test/helpers/backend-setup.ts starts one of each for the run); unset or `local` is the default suite.
const backend = process.env.FASTPULL_TEST_BACKEND ?? 'local';

export default defineConfig({
  test: {
    include: backend === 'local' || backend === '' ? ['test/**/*.test.ts'] : BACKEND_SUITE.map((name) => `test/${name}.test.ts`),
    globalSetup: ['test/helpers/backend-setup.ts'],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    // Tests start real servers and child processes; two cores, so keep parallelism modest.
    maxWorkers: 2,
  },
});
