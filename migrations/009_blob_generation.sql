-- What a hash may serve changes when its row is quarantined, released by a re-upload, or resized by a
-- repair; a server process that keeps bytes or an open descriptor of that blob must notice, even when
-- the change came from another process (verify, scrub, fsck, gc). Every such update bumps the row's
-- generation, and the download lookup returns it: a cached copy filled under an older generation (or
-- an older ingested_at, for a row gc deleted and an upload re-created) never matches again.
ALTER TABLE blobs ADD COLUMN generation INTEGER NOT NULL DEFAULT 0;

CREATE TRIGGER blobs_generation AFTER UPDATE OF quarantined_at, size, ingested_at ON blobs
BEGIN
  UPDATE blobs SET generation = OLD.generation + 1 WHERE sha512 = NEW.sha512;
END;
