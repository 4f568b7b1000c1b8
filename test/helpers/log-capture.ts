import { Writable } from 'node:stream';
import { pino, type Logger } from 'pino';

/** A real pino logger whose JSON lines are kept, parsed, for a test to look at. */
export function captureLogs(level = 'info'): { logger: Logger; lines: any[]; waitFor(match: (line: any) => boolean): Promise<any> } {
  const lines: any[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, done) {
      for (const line of chunk.toString('utf8').split('\n')) if (line !== '') lines.push(JSON.parse(line));
      done();
    },
  });
  return {
    logger: pino({ level }, sink),
    lines,
    async waitFor(match) {
      for (let i = 0; i < 100; i++) {
        const found = lines.find(match);
        if (found) return found;
        await new Promise((r) => setTimeout(r, 50));
      }
      throw new Error('no such log line');
    },
  };
}
