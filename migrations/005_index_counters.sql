-- Totals that grow with the index, kept current by triggers so /metrics, /api/v1/status and the
-- storage watermark read one row instead of scanning a million. Triggers rather than application
-- code: a CLI (import, gc, verify, fsck, reindex) in another process changes the index too, and
-- its writes must move the same numbers.
CREATE TABLE index_counters (
  id                INTEGER NOT NULL PRIMARY KEY CHECK (id = 1),
  blobs             INTEGER NOT NULL,
  -- Sum of blob sizes, quarantined ones included.
  blob_bytes        INTEGER NOT NULL,
  quarantined_blobs INTEGER NOT NULL,
  quarantined_bytes INTEGER NOT NULL,
  pinned_blobs      INTEGER NOT NULL,
  -- Distinct file names with at least one attached hash (what name paths can serve).
  attached_names    INTEGER NOT NULL,
  -- Attached (name, hash) pairs.
  attached_pairs    INTEGER NOT NULL,
  -- Σ size × (attached pairs − 1) over blobs with at least one attached pair: what dedup saves.
  dedup_saved_bytes INTEGER NOT NULL,
  -- Cumulative, never decreasing: verifications that found the bytes intact (verified_at set) by the
  -- scrubber, fastpull verify, fsck or reindex, whichever process ran them.
  verified_blobs    INTEGER NOT NULL,
  verified_bytes    INTEGER NOT NULL,
  -- Cumulative: times a blob went into quarantine.
  quarantines       INTEGER NOT NULL
);

-- The one full scan, at migration time.
INSERT INTO index_counters
SELECT 1,
  (SELECT count(*) FROM blobs),
  (SELECT coalesce(sum(size), 0) FROM blobs),
  (SELECT count(*) FROM blobs WHERE quarantined_at IS NOT NULL),
  (SELECT coalesce(sum(size), 0) FROM blobs WHERE quarantined_at IS NOT NULL),
  (SELECT count(*) FROM blobs WHERE pinned != 0),
  (SELECT count(DISTINCT filename) FROM names WHERE detached_at IS NULL),
  (SELECT count(*) FROM names WHERE detached_at IS NULL),
  (SELECT coalesce(sum(b.size * (r.n - 1)), 0) FROM blobs b
     JOIN (SELECT sha512, count(*) AS n FROM names WHERE detached_at IS NULL GROUP BY sha512) r ON r.sha512 = b.sha512),
  (SELECT count(*) FROM blobs WHERE verified_at IS NOT NULL),
  (SELECT coalesce(sum(size), 0) FROM blobs WHERE verified_at IS NOT NULL),
  (SELECT count(*) FROM blobs WHERE quarantined_at IS NOT NULL);

CREATE TRIGGER index_counters_blob_insert AFTER INSERT ON blobs BEGIN
  UPDATE index_counters SET
    blobs = blobs + 1,
    blob_bytes = blob_bytes + NEW.size,
    quarantined_blobs = quarantined_blobs + (NEW.quarantined_at IS NOT NULL),
    quarantined_bytes = quarantined_bytes + iif(NEW.quarantined_at IS NOT NULL, NEW.size, 0),
    pinned_blobs = pinned_blobs + (NEW.pinned != 0),
    verified_blobs = verified_blobs + (NEW.verified_at IS NOT NULL),
    verified_bytes = verified_bytes + iif(NEW.verified_at IS NOT NULL, NEW.size, 0),
    quarantines = quarantines + (NEW.quarantined_at IS NOT NULL)
  WHERE id = 1;
END;

-- Names go first, while the blob (and so its size) still exists: their triggers then settle the
-- name and dedup counts, and the foreign key's cascade finds nothing left to do.
CREATE TRIGGER index_counters_blob_delete_names BEFORE DELETE ON blobs BEGIN
  DELETE FROM names WHERE sha512 = OLD.sha512;
END;

CREATE TRIGGER index_counters_blob_delete AFTER DELETE ON blobs BEGIN
  UPDATE index_counters SET
    blobs = blobs - 1,
    blob_bytes = blob_bytes - OLD.size,
    quarantined_blobs = quarantined_blobs - (OLD.quarantined_at IS NOT NULL),
    quarantined_bytes = quarantined_bytes - iif(OLD.quarantined_at IS NOT NULL, OLD.size, 0),
    pinned_blobs = pinned_blobs - (OLD.pinned != 0)
  WHERE id = 1;
END;

-- Every ingest clears quarantine (usually a no-op): only real changes touch the counters row.
CREATE TRIGGER index_counters_blob_update AFTER UPDATE OF size, quarantined_at, pinned, verified_at ON blobs
WHEN OLD.size != NEW.size
  OR (OLD.quarantined_at IS NULL) != (NEW.quarantined_at IS NULL)
  OR (OLD.pinned != 0) != (NEW.pinned != 0)
  OR (NEW.verified_at IS NOT NULL AND NEW.verified_at IS NOT OLD.verified_at)
BEGIN
  UPDATE index_counters SET
    blob_bytes = blob_bytes + NEW.size - OLD.size,
    quarantined_blobs = quarantined_blobs + (NEW.quarantined_at IS NOT NULL) - (OLD.quarantined_at IS NOT NULL),
    quarantined_bytes = quarantined_bytes + iif(NEW.quarantined_at IS NOT NULL, NEW.size, 0)
                                          - iif(OLD.quarantined_at IS NOT NULL, OLD.size, 0),
    pinned_blobs = pinned_blobs + (NEW.pinned != 0) - (OLD.pinned != 0),
    verified_blobs = verified_blobs + (NEW.verified_at IS NOT NULL AND NEW.verified_at IS NOT OLD.verified_at),
    verified_bytes = verified_bytes + iif(NEW.verified_at IS NOT NULL AND NEW.verified_at IS NOT OLD.verified_at, NEW.size, 0),
    quarantines = quarantines + (OLD.quarantined_at IS NULL AND NEW.quarantined_at IS NOT NULL),
    dedup_saved_bytes = dedup_saved_bytes + (NEW.size - OLD.size) *
      max((SELECT count(*) FROM names WHERE sha512 = NEW.sha512 AND detached_at IS NULL) - 1, 0)
  WHERE id = 1;
END;

-- A pair becoming attached (new row, or a detached one re-attached), and below its reverse (detached,
-- or deleted while attached): SQLite has no shared procedures and a trigger answers one event, so the
-- bodies repeat. The counts below run after
-- the change, over the partial index names_current and over names_by_blob: a few rows each.
CREATE TRIGGER index_counters_name_insert AFTER INSERT ON names WHEN NEW.detached_at IS NULL BEGIN
  UPDATE index_counters SET
    attached_pairs = attached_pairs + 1,
    attached_names = attached_names +
      ((SELECT count(*) FROM names WHERE filename = NEW.filename AND detached_at IS NULL) = 1),
    dedup_saved_bytes = dedup_saved_bytes +
      iif((SELECT count(*) FROM names WHERE sha512 = NEW.sha512 AND detached_at IS NULL) > 1,
          coalesce((SELECT size FROM blobs WHERE sha512 = NEW.sha512), 0), 0)
  WHERE id = 1;
END;

CREATE TRIGGER index_counters_name_reattach AFTER UPDATE OF detached_at ON names
WHEN OLD.detached_at IS NOT NULL AND NEW.detached_at IS NULL BEGIN
  UPDATE index_counters SET
    attached_pairs = attached_pairs + 1,
    attached_names = attached_names +
      ((SELECT count(*) FROM names WHERE filename = NEW.filename AND detached_at IS NULL) = 1),
    dedup_saved_bytes = dedup_saved_bytes +
      iif((SELECT count(*) FROM names WHERE sha512 = NEW.sha512 AND detached_at IS NULL) > 1,
          coalesce((SELECT size FROM blobs WHERE sha512 = NEW.sha512), 0), 0)
  WHERE id = 1;
END;

CREATE TRIGGER index_counters_name_detach AFTER UPDATE OF detached_at ON names
WHEN OLD.detached_at IS NULL AND NEW.detached_at IS NOT NULL BEGIN
  UPDATE index_counters SET
    attached_pairs = attached_pairs - 1,
    attached_names = attached_names -
      ((SELECT count(*) FROM names WHERE filename = OLD.filename AND detached_at IS NULL) = 0),
    dedup_saved_bytes = dedup_saved_bytes -
      iif((SELECT count(*) FROM names WHERE sha512 = OLD.sha512 AND detached_at IS NULL) > 0,
          coalesce((SELECT size FROM blobs WHERE sha512 = OLD.sha512), 0), 0)
  WHERE id = 1;
END;

CREATE TRIGGER index_counters_name_delete AFTER DELETE ON names WHEN OLD.detached_at IS NULL BEGIN
  UPDATE index_counters SET
    attached_pairs = attached_pairs - 1,
    attached_names = attached_names -
      ((SELECT count(*) FROM names WHERE filename = OLD.filename AND detached_at IS NULL) = 0),
    dedup_saved_bytes = dedup_saved_bytes -
      iif((SELECT count(*) FROM names WHERE sha512 = OLD.sha512 AND detached_at IS NULL) > 0,
          coalesce((SELECT size FROM blobs WHERE sha512 = OLD.sha512), 0), 0)
  WHERE id = 1;
END;

-- The scrubber's walk, oldest verification first, was a scan and a sort of every blob per page of 100.
CREATE INDEX blobs_scrub_order ON blobs (coalesce(verified_at, 0), sha512) WHERE quarantined_at IS NULL;

-- Case-insensitive name search (ASCII folding, like SQLite's NOCASE) over attached names.
CREATE INDEX names_current_nocase ON names (filename COLLATE NOCASE, filename) WHERE detached_at IS NULL;

-- At start every item left 'downloading' by a crash goes back to the queue: find them without
-- reading every finished item of every job ever run.
CREATE INDEX fetch_items_downloading ON fetch_items (job_id, idx) WHERE state = 'downloading';
