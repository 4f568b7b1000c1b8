import type { TestProject } from 'vitest/node';
import { startServices, TEST_BACKEND } from './backend.js';
import { postgresMissing } from './postgres.js';
import { swiftMissing } from './swift.js';

/**
 * vitest globalSetup: for FASTPULL_TEST_BACKEND=s3+postgres, ONE Swift and ONE PostgreSQL for the whole run,
 * their coordinates provided to every test file (test/helpers/backend.ts gives each server its own share).
 * A local run starts nothing.
 */
export default async function setup(project: TestProject): Promise<(() => Promise<void>) | undefined> {
  project.provide('backendServices', null);
  if (TEST_BACKEND === 'local') return undefined;
  // The run asked for these engines by name: missing packages fail it, in CI or not.
  const missing = swiftMissing() ?? postgresMissing();
  if (missing) throw new Error(`FASTPULL_TEST_BACKEND=${TEST_BACKEND}: ${missing}`);
  const started = await startServices();
  project.provide('backendServices', started.services);
  // The SDK in test workers and in-process servers finds the credentials where it always looks.
  process.env.AWS_ACCESS_KEY_ID = started.services.s3.accessKeyId;
  process.env.AWS_SECRET_ACCESS_KEY = started.services.s3.secretAccessKey;
  return () => started.stop();
}
