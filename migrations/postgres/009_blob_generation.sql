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
