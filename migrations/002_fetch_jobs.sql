-- Fetch jobs: the origin downloading distfiles itself. Times are unix epoch milliseconds.
CREATE TABLE fetch_jobs (
  id         TEXT    NOT NULL PRIMARY KEY,
  created_at INTEGER NOT NULL,
  created_by TEXT
) WITHOUT ROWID;

CREATE TABLE fetch_items (
  job_id           TEXT    NOT NULL REFERENCES fetch_jobs (id) ON DELETE CASCADE,
  idx              INTEGER NOT NULL,
  url              TEXT    NOT NULL,
  -- JSON array of alternative URLs, tried in order after url.
  mirrors          TEXT    NOT NULL DEFAULT '[]',
  filename         TEXT    NOT NULL,
  expected_size    INTEGER,
  expected_sha512  TEXT,
  expected_blake2b TEXT,
  state            TEXT    NOT NULL CHECK (state IN ('queued', 'downloading', 'done', 'failed')),
  attempts         INTEGER NOT NULL DEFAULT 0,
  -- Filled when done: what was stored, and where it came from ('store' when no download was needed).
  sha512           TEXT,
  blake2b          TEXT,
  sha256           TEXT,
  size             INTEGER,
  source           TEXT,
  reason           TEXT,
  queued_at        INTEGER NOT NULL,
  started_at       INTEGER,
  finished_at      INTEGER,
  PRIMARY KEY (job_id, idx)
) WITHOUT ROWID;

CREATE INDEX fetch_items_queued ON fetch_items (queued_at, job_id, idx) WHERE state = 'queued';

-- URL → content seen there (trust on first use), so a later fetch of the URL needs no download.
-- No foreign key to blobs: a blob may be removed by GC; readers check the store before trusting a row.
CREATE TABLE fetched_urls (
  url        TEXT    NOT NULL PRIMARY KEY,
  sha512     TEXT    NOT NULL CHECK (length(sha512) = 128),
  fetched_at INTEGER NOT NULL
) WITHOUT ROWID;
