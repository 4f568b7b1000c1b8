-- Blobs are keyed by SHA512 (lower-case hex). Times are unix epoch milliseconds.
CREATE TABLE blobs (
  sha512         TEXT    NOT NULL PRIMARY KEY CHECK (length(sha512) = 128),
  blake2b        TEXT    NOT NULL CHECK (length(blake2b) = 128),
  sha256         TEXT    NOT NULL CHECK (length(sha256) = 64),
  size           INTEGER NOT NULL CHECK (size >= 0),
  ingested_at    INTEGER NOT NULL,
  verified_at    INTEGER,
  -- Set when verification found the bytes damaged; such a blob is never served until re-uploaded.
  quarantined_at INTEGER,
  -- Uploaded by hash on purpose (Funtoo dynamic archives): kept even with no name attached.
  pinned         INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;

-- Every (filename, sha512) pair ever seen. A name resolves to its attached pair with the highest seq.
CREATE TABLE names (
  filename          TEXT    NOT NULL,
  sha512            TEXT    NOT NULL REFERENCES blobs (sha512) ON DELETE CASCADE,
  seq               INTEGER NOT NULL,
  first_attached_at INTEGER NOT NULL,
  attached_at       INTEGER NOT NULL,
  attached_by       TEXT,
  detached_at       INTEGER,
  detached_by       TEXT,
  PRIMARY KEY (filename, sha512)
) WITHOUT ROWID;

CREATE INDEX names_current ON names (filename, seq DESC) WHERE detached_at IS NULL;
CREATE INDEX names_by_blob ON names (sha512, seq DESC);
CREATE INDEX names_by_seq ON names (seq);
