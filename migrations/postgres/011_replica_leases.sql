-- PostgreSQL twin of migrations/011_replica_leases.sql: leases on work in flight, so a replica that dies
-- mid-download or mid-upload leaves nothing the survivors cannot take back.
--
-- A fetch item being downloaded names its replica and a lease its runner renews; an item whose lease ran
-- out (its replica died or lost the database) goes back to the queue, while one a live replica is
-- downloading is left alone. Upload holds likewise: an owner and an expiry renewed while the upload
-- runs (the pid column stays for SQLite's rule and means nothing here).
ALTER TABLE fetch_items ADD COLUMN claimed_by text;
ALTER TABLE fetch_items ADD COLUMN lease_until bigint;

ALTER TABLE upload_holds ADD COLUMN owner text;
ALTER TABLE upload_holds ADD COLUMN expires_at bigint;

-- Pull-through single flight across replicas: a row per key being downloaded, owned by one replica and
-- renewed while it downloads. A row rather than an advisory lock: a session lock would pin one pooled
-- connection per download (minutes for a large file), and a miss storm over many files would drain the pool.
CREATE TABLE pull_flights (
  key        text   NOT NULL PRIMARY KEY,
  owner      text   NOT NULL,
  expires_at bigint NOT NULL
);

-- Expired leases are looked for by every replica's runner now and then.
CREATE INDEX fetch_items_leases ON fetch_items (lease_until) WHERE state = 'downloading';
