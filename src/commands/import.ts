import { stat } from 'node:fs/promises';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { loadConfig } from '../config.js';
import { DistfileIndex } from '../db/index.js';
import { databaseFile, openDatabase } from '../db/open.js';
import { Importer } from '../ingest/import.js';
import { readManifests, type ManifestSet } from '../ingest/manifest.js';
import { detectTreeKind, scanTree, TREE_KINDS, type TreeKind } from '../ingest/tree.js';
import { BlobStore } from '../store/blob-store.js';
import { formatBytes, Progress } from './progress.js';

const USAGE = `usage: fastpull import <dir> [--kind flat|glep75|blos] [--link] [--manifest FILE...] [--jobs N] [--rehash]
                       [--data-dir DIR] [--progress-interval SECONDS]
  exit 0: every file imported or already present; 1: something was corrupt or failed, or the run stopped
  early (disk space); 130: interrupted (re-run the same command to continue); 2: bad usage`;

/** Lists of problems can be long; the summary shows this many of each kind and counts the rest. */
const LIST_LIMIT = 20;

/** `--manifest A B C <dir>` reads naturally; parseArgs only knows repeated flags, so gather the run first. */
function splitManifestArgs(args: string[]): { rest: string[]; manifests: string[] } {
  const rest: string[] = [];
  const manifests: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const arg = args[i]!;
    if (arg === '--manifest') {
      const start = manifests.length;
      while (i + 1 < args.length && !args[i + 1]!.startsWith('-')) manifests.push(args[++i]!);
      if (manifests.length === start) throw new Error('--manifest needs at least one file');
    } else if (arg.startsWith('--manifest=')) manifests.push(arg.slice('--manifest='.length));
    else rest.push(arg);
  }
  return { rest, manifests };
}

export async function importCommand(args: string[]): Promise<number> {
  if (args.includes('--help') || args.includes('-h')) {
    console.log(USAGE);
    return 0;
  }
  let dir: string;
  let values: Record<string, string | boolean | undefined>;
  let manifestFiles: string[];
  try {
    const split = splitManifestArgs(args);
    manifestFiles = split.manifests;
    const parsed = parseArgs({
      args: split.rest,
      allowPositionals: true,
      options: {
        kind: { type: 'string' },
        link: { type: 'boolean', default: false },
        jobs: { type: 'string', default: '2' },
        rehash: { type: 'boolean', default: false },
        'data-dir': { type: 'string' },
        'progress-interval': { type: 'string', default: '10' },
      },
    });
    values = parsed.values;
    const positionals = [...parsed.positionals];
    // `import --manifest A B <dir>`: the run after --manifest swallowed the tree; it is the last word.
    if (positionals.length === 0 && manifestFiles.length > 1) positionals.push(manifestFiles.pop()!);
    if (positionals.length !== 1) throw new Error(positionals.length === 0 ? 'missing <dir>' : 'expected exactly one <dir>');
    dir = positionals[0]!;
    if (values.kind !== undefined && !TREE_KINDS.includes(values.kind as TreeKind)) {
      throw new Error(`--kind must be one of ${TREE_KINDS.join(', ')}`);
    }
    if (!/^[1-9]\d*$/.test(String(values.jobs))) throw new Error('--jobs must be a positive integer');
    if (!/^\d+(\.\d+)?$/.test(String(values['progress-interval']))) throw new Error('--progress-interval must be seconds');
  } catch (err) {
    console.error(`fastpull import: ${(err as Error).message}\n${USAGE}`);
    return 2;
  }

  const root = path.resolve(dir);
  if (!(await stat(root).catch(() => undefined))?.isDirectory()) {
    console.error(`fastpull import: ${root} is not a directory`);
    return 2;
  }
  let manifests: ManifestSet | undefined;
  if (manifestFiles.length > 0) {
    try {
      manifests = await readManifests(manifestFiles);
    } catch (err) {
      console.error(`fastpull import: cannot read Manifest: ${(err as Error).message}`);
      return 2;
    }
    for (const warning of manifests.warnings) console.error(`manifest: ${warning}`);
  }

  const config = loadConfig(values['data-dir'] !== undefined ? { dataDir: String(values['data-dir']) } : {});
  const store = new BlobStore(config.dataDir, { reserveBytes: config.reserveBytes });
  // Also clears temp files an interrupted import left behind; a running server's own temps survive (its pid lives).
  await store.init();
  const db = openDatabase(databaseFile(config.dataDir));
  try {
    const kind = (values.kind as TreeKind | undefined) ?? (await detectTreeKind(root));
    const scan = await scanTree(root, kind);
    const totalBytes = scan.candidates.reduce((sum, c) => sum + c.size, 0);
    console.error(
      `importing ${root} as ${kind}${scan.layouts.length ? ` (layouts: ${scan.layouts.join(', ')})` : ''}: ` +
        `${scan.candidates.length} files, ${formatBytes(totalBytes)} into ${config.dataDir}${values.link ? ' (hard links)' : ''}`,
    );
    const progress = new Progress({
      label: 'import',
      totalFiles: scan.candidates.length,
      totalBytes,
      intervalMs: Number(values['progress-interval']) * 1000,
    });
    // layout.conf problems change what gets imported, so they are shown up front, not only counted.
    for (const note of scan.notes) {
      if (note.kind !== 'ignored' || note.rel === 'layout.conf') progress.log(`${note.kind}: ${note.rel}: ${note.reason}`);
    }

    const importer = new Importer(store, new DistfileIndex(db));
    // First Ctrl-C: finish the files in progress and print the summary (a re-run continues from there).
    // Second: quit at once; the temp files left behind are removed by the next run or server start.
    const interrupt = new AbortController();
    const onSignal = (signal: NodeJS.Signals) => {
      if (interrupt.signal.aborted) process.exit(130);
      interrupt.abort();
      progress.log(`${signal}: finishing the files in progress; send it again to stop at once`);
    };
    process.on('SIGINT', onSignal);
    process.on('SIGTERM', onSignal);
    let summary;
    try {
      summary = await importer.run(scan, {
        signal: interrupt.signal,
        minFreeBytes: config.minFreeBytes,
        link: Boolean(values.link),
        jobs: Number(values.jobs),
        rehash: Boolean(values.rehash),
        ...(manifests ? { manifests } : {}),
        onBytes: (n) => progress.read(n),
        onFile: (candidate, outcome, reason, bytesRead) => {
          progress.fileDone(candidate.size - bytesRead);
          if (outcome === 'corrupt' || outcome === 'failed') progress.log(`${outcome}: ${candidate.rel}: ${reason}`);
        },
      });
    } finally {
      process.off('SIGINT', onSignal);
      process.off('SIGTERM', onSignal);
      progress.finish();
    }

    const byKind = (k: string) => summary.problems.filter((p) => p.kind === k);
    const corrupt = byKind('corrupt');
    const failed = byKind('failed');
    const ignored = byKind('ignored');
    const out: string[] = [
      `import summary for ${root} (${kind}):`,
      `  files:            ${summary.files} (${formatBytes(summary.bytes)})`,
      `  imported:         ${summary.imported}${values.link ? ` (${summary.linked} hard-linked)` : ''}`,
      `  already present:  ${summary.present}`,
    ];
    if (manifests) {
      out.push(`  names attached from Manifests: ${summary.namesAttached}`);
      out.push(`  Manifest entries neither in the tree nor stored: ${summary.manifestMissing.length}`);
      for (const e of summary.manifestMissing.slice(0, LIST_LIMIT)) out.push(`    ${e.filename} (${e.source})`);
      if (summary.manifestMissing.length > LIST_LIMIT) out.push(`    … and ${summary.manifestMissing.length - LIST_LIMIT} more`);
    }
    out.push(`  skipped:          ${corrupt.length + failed.length + ignored.length}`);
    for (const [label, list, limit] of [
      ['corrupt', corrupt, Infinity],
      ['failed', failed, Infinity],
      ['ignored', ignored, LIST_LIMIT],
    ] as const) {
      if (list.length === 0) continue;
      out.push(`    ${label}: ${list.length}`);
      for (const p of list.slice(0, limit)) out.push(`      ${p.rel}: ${p.reason}`);
      if (list.length > limit) out.push(`      … and ${list.length - limit} more`);
    }
    if (summary.stopped !== undefined) {
      out.push(`  STOPPED before the end (${summary.stopped}); re-run the same command to continue`);
      out.push(`  not processed:    ${summary.files - summary.processed}`);
    }
    console.log(out.join('\n'));
    if (summary.stopped === 'interrupted') return 130;
    return corrupt.length + failed.length > 0 || summary.stopped !== undefined ? 1 : 0;
  } finally {
    db.close();
  }
}
