-- Work in flight that several replicas share through PostgreSQL must outlive nobody: a fetch item a
-- replica is downloading, an upload hold, a pull-through download. Each is owned by one replica and
-- carries an expiry its owner renews while the work runs, so the survivors can take back what a dead
-- replica left (a pid cannot say that across machines). SQLite keeps its single-machine rules (items
-- re-queued at start, holds reclaimed by pid liveness): the columns and the table exist here only so
-- both schemas keep the same shape (`migrate-index` and the twin test rely on it).
ALTER TABLE fetch_items ADD COLUMN claimed_by TEXT;
ALTER TABLE fetch_items ADD COLUMN lease_until INTEGER;

ALTER TABLE upload_holds ADD COLUMN owner TEXT;
ALTER TABLE upload_holds ADD COLUMN expires_at INTEGER;

-- Pull-through single flight across replicas: one row per key being downloaded, owned by one replica.
CREATE TABLE pull_flights (
  key        TEXT    NOT NULL PRIMARY KEY,
  owner      TEXT    NOT NULL,
  expires_at INTEGER NOT NULL
) WITHOUT ROWID;
