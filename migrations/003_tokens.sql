-- Scoped API tokens. Only the SHA-256 of a secret is stored; the secret is shown once, at creation.
-- Names stay unique after revocation so the audit trail (and names.attached_by) never becomes ambiguous.
CREATE TABLE tokens (
  name          TEXT    NOT NULL PRIMARY KEY,
  secret_sha256 BLOB    NOT NULL UNIQUE CHECK (length(secret_sha256) = 32),
  -- Space-separated subset of: read-api upload admin.
  scopes        TEXT    NOT NULL,
  created_at    INTEGER NOT NULL,
  revoked_at    INTEGER,
  -- Updated at most once a minute per token, so authentication is not a write per request.
  last_used_at  INTEGER
);

-- Who changed what through the admin API (and the token CLI). names.attached_by is overwritten
-- when a name is re-attached and uploads by hash carry no name, so this is the lasting record.
CREATE TABLE audit_log (
  id        INTEGER PRIMARY KEY,
  at        INTEGER NOT NULL,
  actor     TEXT    NOT NULL,
  action    TEXT    NOT NULL,
  status    INTEGER,
  filename  TEXT,
  sha512    TEXT,
  detail    TEXT
);

CREATE INDEX audit_log_by_actor ON audit_log (actor, at);
