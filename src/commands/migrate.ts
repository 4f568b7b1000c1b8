import { parseArgs } from 'node:util';
import { loadConfig } from '../config.js';
import { migrate, schemaVersion } from '../db/migrate.js';
import { databaseFile, openDatabase } from '../db/open.js';

export async function migrateCommand(args: string[]): Promise<number> {
  const { values } = parseArgs({ args, options: { 'data-dir': { type: 'string' } } });
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
}
