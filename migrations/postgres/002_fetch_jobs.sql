-- PostgreSQL twin of migrations/002_fetch_jobs.sql. Times are unix epoch milliseconds.
CREATE TABLE fetch_jobs (
  id         text   NOT NULL PRIMARY KEY,
  created_at bigint NOT NULL,
  created_by text
);

CREATE TABLE fetch_items (
  job_id           text    NOT NULL REFERENCES fetch_jobs (id) ON DELETE CASCADE,
  idx              integer NOT NULL,
  url              text    NOT NULL,
  -- JSON array of alternative URLs, tried in order after url (text, as in SQLite, so rows copy verbatim).
  mirrors          text    NOT NULL DEFAULT '[]',
  filename         text    NOT NULL,
  expected_size    bigint,
  expected_sha512  text,
  expected_blake2b text,
  state            text    NOT NULL CHECK (state IN ('queued', 'downloading', 'done', 'failed')),
  attempts         integer NOT NULL DEFAULT 0,
  sha512           text,
  blake2b          text,
  sha256           text,
  size             bigint,
  source           text,
  reason           text,
  queued_at        bigint  NOT NULL,
  started_at       bigint,
  finished_at      bigint,
  PRIMARY KEY (job_id, idx)
);

-- Replicas claim queued items with FOR UPDATE SKIP LOCKED in this order.
CREATE INDEX fetch_items_queued ON fetch_items (queued_at, job_id, idx) WHERE state = 'queued';

-- URL → content seen there (trust on first use). No foreign key to blobs: gc may remove the blob.
CREATE TABLE fetched_urls (
  url        text   NOT NULL PRIMARY KEY,
  sha512     text   NOT NULL CHECK (length(sha512) = 128),
  fetched_at bigint NOT NULL
);
