import { parseArgs, type ParseArgsConfig } from 'node:util';
import { ConfigError } from '../config.js';

/** Bad usage: the command prints `fastpull <command>: <message>` on stderr and exits 2. */
export class UsageError extends Error {}

type Options = NonNullable<ParseArgsConfig['options']>;

export interface CommandSpec<O extends Options> {
  /** As typed after `fastpull`: `gc`, `token create`. */
  name: string;
  /** The whole --help text; its first line starts `usage: fastpull <name>`. */
  usage: string;
  options: O;
  /** Whether words that are not options are allowed (the body checks how many). */
  positionals?: boolean;
}

export type Parsed<O extends Options> = ReturnType<typeof parseArgs<{ args: string[]; options: O; allowPositionals: true }>>;

/** Anything before a `--` that asks for help wins over every other word, valid or not (like git). */
function wantsHelp(args: string[]): boolean {
  for (const arg of args) {
    if (arg === '--') return false;
    if (arg === '-h' || arg === '--help') return true;
  }
  return false;
}

/** node:util's messages name internals and suggest `--`; say what was wrong in the command's terms. */
function describeParseError(err: NodeJS.ErrnoException): string {
  const option = /'(-[^' ]+)/.exec(err.message)?.[1];
  switch (err.code) {
    case 'ERR_PARSE_ARGS_UNKNOWN_OPTION':
      return `unknown option ${option ?? err.message}`;
    case 'ERR_PARSE_ARGS_UNEXPECTED_POSITIONAL':
      return `unexpected argument ${/'([^']*)'/.exec(err.message)?.[1] ?? ''}`.trimEnd();
    default:
      // ERR_PARSE_ARGS_INVALID_OPTION_VALUE: a value given to a flag, or none to an option that needs one.
      return option && /argument missing/.test(err.message)
        ? `${option.replace(/ .*/, '')} needs a value`
        : option && /does not take an argument/.test(err.message)
          ? `${option.replace(/=.*/, '')} takes no value`
          : err.message;
  }
}

/** The message to print for an error that means "bad usage", or undefined for any other error. */
export function usageMessage(err: unknown): string | undefined {
  if (err instanceof UsageError || err instanceof ConfigError) return err.message;
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  if (typeof code === 'string' && code.startsWith('ERR_PARSE_ARGS')) return describeParseError(err as NodeJS.ErrnoException);
  return undefined;
}

/**
 * The one way a command reads its arguments, so every command behaves alike: -h/--help prints the usage
 * on stdout and exits 0; an unknown option, a missing or malformed value, or a configuration error
 * prints `fastpull <command>: <what>` on stderr and exits 2. The body may throw UsageError for checks
 * of its own (ranges, combinations).
 */
export async function runCommand<O extends Options>(
  spec: CommandSpec<O>,
  args: string[],
  body: (values: Parsed<O>['values'], positionals: string[]) => Promise<number>,
): Promise<number> {
  if (wantsHelp(args)) {
    console.log(spec.usage);
    return 0;
  }
  try {
    const parsed = parseArgs({ args, options: spec.options, allowPositionals: spec.positionals ?? false, strict: true });
    return await body(parsed.values as Parsed<O>['values'], parsed.positionals);
  } catch (err) {
    const message = usageMessage(err);
    if (message === undefined) throw err;
    console.error(`fastpull ${spec.name}: ${message}\n(fastpull ${spec.name} --help shows the usage)`);
    return 2;
  }
}

/** An integer option: digits only (no 1e3, no 0x10, no blanks), within [min, max]. */
export function intOption(value: string, option: string, min = 0, max = Number.MAX_SAFE_INTEGER): number {
  const n = Number(value);
  if (!/^\d+$/.test(value) || !Number.isSafeInteger(n) || n < min || n > max) {
    const range = max === Number.MAX_SAFE_INTEGER ? `>= ${min}` : `from ${min} to ${max}`;
    throw new UsageError(`--${option}: expected an integer ${range}, got "${value}"`);
  }
  return n;
}

/** A number of seconds, fractions allowed. */
export function secondsOption(value: string, option: string): number {
  if (!/^\d+(\.\d+)?$/.test(value)) throw new UsageError(`--${option}: expected seconds (e.g. 10 or 0.5), got "${value}"`);
  return Number(value);
}
