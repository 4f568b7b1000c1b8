-- The PostgreSQL twin of migrations/009_blob_generation.sql: a blob row's generation moves whenever what
-- its hash may serve changes (quarantined, released, resized, re-ingested), from whichever process, so
-- a server's cached bytes or descriptor keyed by ServableBlob.version never outlive the change.
ALTER TABLE blobs ADD COLUMN generation bigint NOT NULL DEFAULT 0;

CREATE FUNCTION blobs_bump_generation() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.quarantined_at IS DISTINCT FROM OLD.quarantined_at OR NEW.size <> OLD.size OR NEW.ingested_at <> OLD.ingested_at THEN
    NEW.generation := OLD.generation + 1;
  END IF;
  RETURN NEW;
END
$$;

CREATE TRIGGER blobs_generation BEFORE UPDATE ON blobs FOR EACH ROW EXECUTE FUNCTION blobs_bump_generation();
