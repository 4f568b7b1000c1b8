-- PostgreSQL twin of migrations/001_initial.sql: same tables, columns and meanings, so `migrate-index`
-- can copy rows as they are. Blobs are keyed by SHA512 (lower-case hex). Times are unix epoch milliseconds.
CREATE TABLE blobs (
  sha512         text     NOT NULL PRIMARY KEY CHECK (length(sha512) = 128),
  blake2b        text     NOT NULL CHECK (length(blake2b) = 128),
  sha256         text     NOT NULL CHECK (length(sha256) = 64),
  size           bigint   NOT NULL CHECK (size >= 0),
  ingested_at    bigint   NOT NULL,
  verified_at    bigint,
  -- Set when verification found the bytes damaged; such a blob is never served until re-uploaded.
  quarantined_at bigint,
  -- Uploaded by hash on purpose (Funtoo dynamic archives): kept even with no name attached. 0 or 1, as in SQLite.
  pinned         smallint NOT NULL DEFAULT 0 CHECK (pinned IN (0, 1))
);

-- Every (filename, sha512) pair ever seen. A name resolves to its attached pair with the highest seq.
-- SQLite takes max(seq) + 1 under its single writer; several replicas writing at once take a sequence.
CREATE SEQUENCE names_seq AS bigint;

CREATE TABLE names (
  filename          text   NOT NULL,
  sha512            text   NOT NULL REFERENCES blobs (sha512) ON DELETE CASCADE,
  seq               bigint NOT NULL,
  first_attached_at bigint NOT NULL,
  attached_at       bigint NOT NULL,
  attached_by       text,
  detached_at       bigint,
  detached_by       text,
  PRIMARY KEY (filename, sha512)
);

CREATE INDEX names_current ON names (filename, seq DESC) WHERE detached_at IS NULL;
CREATE INDEX names_by_blob ON names (sha512, seq DESC);
CREATE INDEX names_by_seq ON names (seq);
