-- PostgreSQL twin of migrations/004_upload_holds.sql: bytes that uploads in flight hold against
-- FASTPULL_HIGH_WATERMARK_BYTES. Same columns so rows copy as they are; `migrate-index` copies none
-- (a hold belongs to a process of the machine that took it). Limitation with several replicas: a hold
-- is reclaimed when its pid no longer runs, and a pid only means something on the machine that wrote it;
-- the replica that wires this table must add which replica holds the row before trusting that rule.
CREATE TABLE upload_holds (
  id    text    NOT NULL PRIMARY KEY,
  pid   integer NOT NULL,
  bytes bigint  NOT NULL CHECK (bytes >= 0)
);
