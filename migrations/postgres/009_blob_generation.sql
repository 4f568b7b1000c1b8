-- PostgreSQL twin of migrations/009_blob_generation.sql: every update of quarantined_at, size or
-- ingested_at bumps the row's generation, so a per-process cache keyed by the row's version never
-- matches a changed row. A BEFORE trigger sets it on the row being written (no second UPDATE).
ALTER TABLE blobs ADD COLUMN generation integer NOT NULL DEFAULT 0;

CREATE FUNCTION blobs_generation() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  NEW.generation := OLD.generation + 1;
  RETURN NEW;
END
$$;

CREATE TRIGGER blobs_generation BEFORE UPDATE OF quarantined_at, size, ingested_at ON blobs
  FOR EACH ROW EXECUTE FUNCTION blobs_generation();

-- Replicas keep hash → blob metadata in memory; SQLite's processes notice a change by the version their
-- next lookup returns, but a replica that does not look up must be told. Every change to a blob row that
-- alters what it serves (and every removal) is announced on channel fastpull_blob with its sha512,
-- delivered at commit to every session that LISTENs, whichever process or replica made the change.
CREATE FUNCTION blobs_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('fastpull_blob', coalesce(NEW.sha512, OLD.sha512));
  RETURN NULL;
END
$$;

CREATE TRIGGER blobs_notify_change AFTER UPDATE OF quarantined_at, size, ingested_at ON blobs
  FOR EACH ROW EXECUTE FUNCTION blobs_notify();
CREATE TRIGGER blobs_notify_delete AFTER DELETE ON blobs
  FOR EACH ROW EXECUTE FUNCTION blobs_notify();
