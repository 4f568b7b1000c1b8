-- Outbox: every change that matters outside (CDN purges, webhooks, pollers) is written here in the
-- same transaction as the change itself, so a crash can neither lose an announcement nor invent one.
-- AUTOINCREMENT: ids are never reused, even after old events are pruned, so `after=ID` polling is safe.
CREATE TABLE events (
  id              INTEGER PRIMARY KEY AUTOINCREMENT,
  at              INTEGER NOT NULL,
  type            TEXT    NOT NULL,
  sha512          TEXT    NOT NULL CHECK (length(sha512) = 128),
  size            INTEGER,
  -- JSON array of file names involved (for a quarantine: every name attached to the blob at the time).
  names           TEXT    NOT NULL DEFAULT '[]',
  -- The hash a re-pointed name served before.
  previous_sha512 TEXT,
  actor           TEXT
);

CREATE INDEX events_by_time ON events (at);

-- One row per delivery target (CDN, each webhook URL): how far its deliveries have been created.
-- A target first seen starts at the newest event: history is not replayed to a new webhook.
CREATE TABLE event_targets (
  target          TEXT    NOT NULL PRIMARY KEY,
  through_id      INTEGER NOT NULL,
  last_success_at INTEGER,
  last_failure_at INTEGER,
  last_error      TEXT
) WITHOUT ROWID;

-- Delivery state per (target, event). Claimed with a lease in a write transaction (like fetch items), so
-- with several processes on one database each delivery is attempted by one of them at a time.
CREATE TABLE event_deliveries (
  target      TEXT    NOT NULL,
  event_id    INTEGER NOT NULL REFERENCES events (id) ON DELETE CASCADE,
  -- Copied from the event: deliveries of one blob go out in event order.
  sha512      TEXT    NOT NULL,
  state       TEXT    NOT NULL CHECK (state IN ('pending', 'delivered', 'failed')),
  attempts    INTEGER NOT NULL DEFAULT 0,
  next_at     INTEGER NOT NULL,
  lease_until INTEGER,
  lease_owner TEXT,
  last_error  TEXT,
  done_at     INTEGER,
  PRIMARY KEY (target, event_id)
) WITHOUT ROWID;

CREATE INDEX event_deliveries_pending ON event_deliveries (target, event_id) WHERE state = 'pending';
CREATE INDEX event_deliveries_pending_blob ON event_deliveries (target, sha512, event_id) WHERE state = 'pending';
