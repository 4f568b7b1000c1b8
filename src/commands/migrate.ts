import { loadConfig } from '../config.js';
import { migrate, schemaVersion } from '../db/migrate.js';
import { databaseFile, openDatabase } from '../db/open.js';
import { runCommand } from './args.js';

const USAGE = `usage: fastpull migrate [--data-dir DIR]
  applies pending migrations to <dataDir>/index.sqlite (creating it if needed) and prints the schema version`;

export async function migrateCommand(args: string[]): Promise<number> {
  const spec = { name: 'migrate', usage: USAGE, options: { 'data-dir': { type: 'string' } } } as const;
  return runCommand(spec, args, async (values) => {
    const config = loadConfig(values['data-dir'] !== undefined ? { dataDir: values['data-dir'] } : {});
    const db = openDatabase(databaseFile(config.dataDir), { migrate: false });
    try {
      const result = migrate(db);
      for (const name of result.applied) console.log(`applied ${name}`);
      console.log(`schema version ${schemaVersion(db)}`);
      return 0;
    } finally {
      db.close();
    }
  });
}
