#!/usr/bin/env node
// Thin launcher so the package bin works from the compiled output (`npm ci` builds it via `prepare`).
import { main } from '../dist/cli.js';

main(process.argv.slice(2)).then(
  (code) => { process.exitCode = code; },
  (err) => { console.error(`fastpull: ${err instanceof Error ? err.message : err}`); process.exitCode = 1; },
);
