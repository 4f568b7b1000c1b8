import { stat } from 'node:fs/promises';
import path from 'node:path';
import { loadConfig } from '../config.js';
import { openOriginIndex } from '../db/origin-index.js';
import { Importer, storageImportTarget } from '../ingest/import.js';
import { readManifests, type ManifestSet } from '../ingest/manifest.js';
import { detectTreeKind, scanTree, TREE_KINDS, type TreeKind } from '../ingest/tree.js';
import { LocalBlobStorage } from '../store/local-storage.js';
import { openStorage } from '../store/open-storage.js';
import { intOption, runCommand, secondsOption, UsageError } from './args.js';
import { cliActor } from './context.js';
import { formatBytes, Progress } from './progress.js';

const USAGE = `usage: fastpull import <dir> [--kind flat|glep75|blos] [--link] [--manifest FILE...] [--jobs N] [--rehash]
                       [--data-dir DIR] [--progress-interval SECONDS]
  every file is re-hashed; one that contradicts its claimed hash is reported and skipped. Names are
  attached by cli:<user>, and the run is recorded in the audit log.
  Blobs go where FASTPULL_STORAGE says (local disk, or s3://BUCKET/PREFIX: copied, never linked), names
  into the index FASTPULL_DATABASE_URL names (SQLite by default).
  --kind K                 flat (a DISTDIR), glep75 (a mirror, every layout in its layout.conf) or blos
                           (Funtoo's store); detected when left out
  --link                   hard-link verified files into the store instead of copying (the source must
                           then never be modified in place)
  --manifest FILE...       attach names from Manifest DIST lines, checking size and digests
  --jobs N                 files hashed at once (default 2)
  --rehash                 re-check files already indexed (a re-run otherwise skips them)
  --progress-interval S    seconds between progress lines when stderr is not a terminal (default 10)
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
      if (manifests.length === start) throw new UsageError('--manifest needs at least one file');
    } else if (arg.startsWith('--manifest=')) manifests.push(arg.slice('--manifest='.length));
    else rest.push(arg);
  }
  return { rest, manifests };
}

export async function importCommand(args: string[]): Promise<number> {
  const spec = {
    name: 'import',
    usage: USAGE,
    options: {
      kind: { type: 'string' },
      link: { type: 'boolean' },
      jobs: { type: 'string' },
      rehash: { type: 'boolean' },
      'data-dir': { type: 'string' },
      'progress-interval': { type: 'string' },
    },
    positionals: true,
  } as const;
  let parsed: { dir: string; manifestFiles: string[]; values: Record<string, string | boolean | undefined>; jobs: number; intervalMs: number } | undefined;
  // parseArgs knows only repeated flags, so a `--manifest A B` run is taken out first; its error (if any)
  // is reported like any other, and help still wins.
  let split: { rest: string[]; manifests: string[] } = { rest: args, manifests: [] };
  let splitError: unknown;
  try {
    split = splitManifestArgs(args);
  } catch (err) {
    splitError = err;
    split = { rest: args.filter((a) => a === '-h' || a === '--help'), manifests: [] };
  }
  const code = await runCommand(spec, split.rest, async (values, words) => {
    if (splitError) throw splitError;
    const manifestFiles = split.manifests;
    const positionals = [...words];
    // `import --manifest A B <dir>`: the run after --manifest swallowed the tree; it is the last word.
    if (positionals.length === 0 && manifestFiles.length > 1) positionals.push(manifestFiles.pop()!);
    if (positionals.length !== 1) throw new UsageError(positionals.length === 0 ? 'missing <dir>' : 'expected exactly one <dir>');
    if (values.kind !== undefined && !TREE_KINDS.includes(values.kind as TreeKind)) {
      throw new UsageError(`--kind must be one of ${TREE_KINDS.join(', ')}`);
    }
    const jobs = intOption(values.jobs ?? '2', 'jobs', 1, 256);
    const intervalMs = secondsOption(values['progress-interval'] ?? '10', 'progress-interval') * 1000;
    parsed = { dir: positionals[0]!, manifestFiles, values, jobs, intervalMs };
    return 0;
  });
  if (!parsed) return code;
  const { dir, manifestFiles, values } = parsed;

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
  if (config.storage.kind === 's3' && values.link) {
    console.error('fastpull import: --link needs the local store; objects in a bucket are always copies (leave out --link)');
    return 2;
  }
  const storage = openStorage(config, { reserveBytes: config.reserveBytes });
  // Also clears temp files an interrupted import left behind; a running server's own temps survive (its pid lives).
  await storage.init();
  // On local disk the store itself imports: it can hard-link (--link) and checks free space.
  const target = storage instanceof LocalBlobStorage ? storage.store : storageImportTarget(storage);
  const originIndex = await openOriginIndex(config);
  try {
    const kind = (values.kind as TreeKind | undefined) ?? (await detectTreeKind(root));
    const scan = await scanTree(root, kind);
    const totalBytes = scan.candidates.reduce((sum, c) => sum + c.size, 0);
    console.error(
      `importing ${root} as ${kind}${scan.layouts.length ? ` (layouts: ${scan.layouts.join(', ')})` : ''}: ` +
        `${scan.candidates.length} files, ${formatBytes(totalBytes)} into ${storage instanceof LocalBlobStorage ? config.dataDir : storage.location}${values.link ? ' (hard links)' : ''}`,
    );
    const progress = new Progress({
      label: 'import',
      totalFiles: scan.candidates.length,
      totalBytes,
      intervalMs: parsed.intervalMs,
    });
    // layout.conf problems change what gets imported, so they are shown up front, not only counted.
    for (const note of scan.notes) {
      if (note.kind !== 'ignored' || note.rel === 'layout.conf') progress.log(`${note.kind}: ${note.rel}: ${note.reason}`);
    }

    const importer = new Importer(target, originIndex.names);
    const actor = cliActor();
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
        jobs: parsed.jobs,
        by: actor,
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
    await originIndex.audit.record({
      actor,
      action: 'import',
      detail:
        `${root} (${kind}${values.link ? ', hard links' : ''}): ${summary.imported} imported, ${summary.present} already present, ` +
        `${corrupt.length} corrupt, ${failed.length} failed${manifests ? `, ${summary.namesAttached} names from Manifests` : ''}` +
        (summary.stopped !== undefined ? `; stopped (${summary.stopped})` : ''),
    });
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
    await originIndex.close();
  }
}
