-- PostgreSQL twin of migrations/005_index_counters.sql: totals that grow with the index, kept current by
-- triggers so /metrics, /api/v1/status and the watermark read a handful of rows instead of scanning.
--
-- Choice: striped rows ("per-replica delta rows summed on read"), not SQLite's single row. A single row
-- that every ingest transaction updates is locked from that update until the transaction commits, so with
-- several replicas every write to the index would queue behind whichever transaction touched the row
-- last; SQLite has one writer at a time anyway, PostgreSQL does not. Here each session adds its deltas to
-- slot pg_backend_pid() % 16, so two writers only wait for each other when their backends share a slot,
-- and readers sum 16 rows through the view `index_counters`, which keeps SQLite's shape (one row, id = 1)
-- so the same read statement works on both. The triggers are statement-level with transition tables: a
-- batch (migrate-index copies 1000 rows per statement, gc deletes many) moves the counters once, and a
-- statement that changes nothing counted (every ingest's no-op release) touches no slot at all.
--
-- Limitation, documented rather than hidden: blobs, bytes, quarantine, pins, attached pairs and the
-- cumulative counts depend only on the rows a statement changed and are exact. attached_names and
-- dedup_saved_bytes also depend on how many *other* rows are attached to the same name or blob; two
-- transactions attaching the first hash of one new name at the same moment (READ COMMITTED: neither sees
-- the other's row) both count the name. index_counters_recount() settles those from a full scan (cheap
-- enough for gc or an operator to run; it keeps the cumulative counts).
CREATE TABLE index_counter_slots (
  slot              smallint NOT NULL PRIMARY KEY CHECK (slot BETWEEN 0 AND 15),
  blobs             bigint   NOT NULL DEFAULT 0,
  blob_bytes        bigint   NOT NULL DEFAULT 0,
  quarantined_blobs bigint   NOT NULL DEFAULT 0,
  quarantined_bytes bigint   NOT NULL DEFAULT 0,
  pinned_blobs      bigint   NOT NULL DEFAULT 0,
  attached_names    bigint   NOT NULL DEFAULT 0,
  attached_pairs    bigint   NOT NULL DEFAULT 0,
  dedup_saved_bytes bigint   NOT NULL DEFAULT 0,
  -- Cumulative, never decreasing: intact verifications, and times a blob went into quarantine.
  verified_blobs    bigint   NOT NULL DEFAULT 0,
  verified_bytes    bigint   NOT NULL DEFAULT 0,
  quarantines       bigint   NOT NULL DEFAULT 0
);

CREATE VIEW index_counters AS
SELECT 1 AS id,
  coalesce(sum(blobs), 0)::bigint AS blobs,
  coalesce(sum(blob_bytes), 0)::bigint AS blob_bytes,
  coalesce(sum(quarantined_blobs), 0)::bigint AS quarantined_blobs,
  coalesce(sum(quarantined_bytes), 0)::bigint AS quarantined_bytes,
  coalesce(sum(pinned_blobs), 0)::bigint AS pinned_blobs,
  coalesce(sum(attached_names), 0)::bigint AS attached_names,
  coalesce(sum(attached_pairs), 0)::bigint AS attached_pairs,
  coalesce(sum(dedup_saved_bytes), 0)::bigint AS dedup_saved_bytes,
  coalesce(sum(verified_blobs), 0)::bigint AS verified_blobs,
  coalesce(sum(verified_bytes), 0)::bigint AS verified_bytes,
  coalesce(sum(quarantines), 0)::bigint AS quarantines
FROM index_counter_slots;

CREATE FUNCTION index_counters_add(
  d_blobs bigint, d_blob_bytes bigint, d_quarantined_blobs bigint, d_quarantined_bytes bigint, d_pinned_blobs bigint,
  d_attached_names bigint, d_attached_pairs bigint, d_dedup_saved_bytes bigint,
  d_verified_blobs bigint, d_verified_bytes bigint, d_quarantines bigint
) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
  IF d_blobs = 0 AND d_blob_bytes = 0 AND d_quarantined_blobs = 0 AND d_quarantined_bytes = 0 AND d_pinned_blobs = 0
     AND d_attached_names = 0 AND d_attached_pairs = 0 AND d_dedup_saved_bytes = 0
     AND d_verified_blobs = 0 AND d_verified_bytes = 0 AND d_quarantines = 0 THEN
    RETURN;
  END IF;
  INSERT INTO index_counter_slots AS s VALUES (pg_backend_pid() % 16,
    d_blobs, d_blob_bytes, d_quarantined_blobs, d_quarantined_bytes, d_pinned_blobs,
    d_attached_names, d_attached_pairs, d_dedup_saved_bytes, d_verified_blobs, d_verified_bytes, d_quarantines)
  ON CONFLICT (slot) DO UPDATE SET
    blobs = s.blobs + excluded.blobs,
    blob_bytes = s.blob_bytes + excluded.blob_bytes,
    quarantined_blobs = s.quarantined_blobs + excluded.quarantined_blobs,
    quarantined_bytes = s.quarantined_bytes + excluded.quarantined_bytes,
    pinned_blobs = s.pinned_blobs + excluded.pinned_blobs,
    attached_names = s.attached_names + excluded.attached_names,
    attached_pairs = s.attached_pairs + excluded.attached_pairs,
    dedup_saved_bytes = s.dedup_saved_bytes + excluded.dedup_saved_bytes,
    verified_blobs = s.verified_blobs + excluded.verified_blobs,
    verified_bytes = s.verified_bytes + excluded.verified_bytes,
    quarantines = s.quarantines + excluded.quarantines;
END
$$;

-- The full scan of the non-cumulative counts, as SQLite's migration does once.
CREATE FUNCTION index_counters_scan() RETURNS TABLE (
  blobs bigint, blob_bytes bigint, quarantined_blobs bigint, quarantined_bytes bigint, pinned_blobs bigint,
  attached_names bigint, attached_pairs bigint, dedup_saved_bytes bigint
) LANGUAGE sql STABLE AS $$
  SELECT
    (SELECT count(*) FROM blobs),
    (SELECT coalesce(sum(size), 0) FROM blobs)::bigint,
    (SELECT count(*) FROM blobs WHERE quarantined_at IS NOT NULL),
    (SELECT coalesce(sum(size), 0) FROM blobs WHERE quarantined_at IS NOT NULL)::bigint,
    (SELECT count(*) FROM blobs WHERE pinned != 0),
    (SELECT count(DISTINCT filename) FROM names WHERE detached_at IS NULL),
    (SELECT count(*) FROM names WHERE detached_at IS NULL),
    (SELECT coalesce(sum(b.size * (r.n - 1)), 0) FROM blobs b
       JOIN (SELECT sha512, count(*) AS n FROM names WHERE detached_at IS NULL GROUP BY sha512) r ON r.sha512 = b.sha512)::bigint
$$;

INSERT INTO index_counter_slots
SELECT 0, s.*,
  (SELECT count(*) FROM blobs WHERE verified_at IS NOT NULL),
  (SELECT coalesce(sum(size), 0) FROM blobs WHERE verified_at IS NOT NULL)::bigint,
  (SELECT count(*) FROM blobs WHERE quarantined_at IS NOT NULL)
FROM index_counters_scan() s;

-- Settles the non-cumulative counts to a full scan (see the limitation above); cumulative ones are kept.
CREATE FUNCTION index_counters_recount() RETURNS void LANGUAGE sql AS $$
  SELECT index_counters_add(s.blobs - c.blobs, s.blob_bytes - c.blob_bytes, s.quarantined_blobs - c.quarantined_blobs,
    s.quarantined_bytes - c.quarantined_bytes, s.pinned_blobs - c.pinned_blobs, s.attached_names - c.attached_names,
    s.attached_pairs - c.attached_pairs, s.dedup_saved_bytes - c.dedup_saved_bytes, 0, 0, 0)
  FROM index_counters_scan() s, index_counters c
$$;

-- Blobs: one function per event, since a transition table exists only for the events that define it.
CREATE FUNCTION index_counters_blobs_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM index_counters_add(count(*), coalesce(sum(size), 0)::bigint,
    count(*) FILTER (WHERE quarantined_at IS NOT NULL), coalesce(sum(size) FILTER (WHERE quarantined_at IS NOT NULL), 0)::bigint,
    count(*) FILTER (WHERE pinned != 0), 0, 0, 0,
    count(*) FILTER (WHERE verified_at IS NOT NULL), coalesce(sum(size) FILTER (WHERE verified_at IS NOT NULL), 0)::bigint,
    count(*) FILTER (WHERE quarantined_at IS NOT NULL))
  FROM new_blobs;
  RETURN NULL;
END
$$;

CREATE FUNCTION index_counters_blobs_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM index_counters_add(-count(*), -coalesce(sum(size), 0)::bigint,
    -count(*) FILTER (WHERE quarantined_at IS NOT NULL), -coalesce(sum(size) FILTER (WHERE quarantined_at IS NOT NULL), 0)::bigint,
    -count(*) FILTER (WHERE pinned != 0), 0, 0, 0, 0, 0, 0)
  FROM old_blobs;
  RETURN NULL;
END
$$;

CREATE FUNCTION index_counters_blobs_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM index_counters_add(0,
    coalesce(sum(n.size - o.size), 0)::bigint,
    count(*) FILTER (WHERE n.quarantined_at IS NOT NULL) - count(*) FILTER (WHERE o.quarantined_at IS NOT NULL),
    (coalesce(sum(n.size) FILTER (WHERE n.quarantined_at IS NOT NULL), 0) - coalesce(sum(o.size) FILTER (WHERE o.quarantined_at IS NOT NULL), 0))::bigint,
    count(*) FILTER (WHERE n.pinned != 0) - count(*) FILTER (WHERE o.pinned != 0),
    0, 0,
    coalesce(sum((n.size - o.size) * greatest(
      (SELECT count(*) FROM names m WHERE m.sha512 = n.sha512 AND m.detached_at IS NULL) - 1, 0)) FILTER (WHERE n.size != o.size), 0)::bigint,
    count(*) FILTER (WHERE n.verified_at IS NOT NULL AND n.verified_at IS DISTINCT FROM o.verified_at),
    coalesce(sum(n.size) FILTER (WHERE n.verified_at IS NOT NULL AND n.verified_at IS DISTINCT FROM o.verified_at), 0)::bigint,
    count(*) FILTER (WHERE o.quarantined_at IS NULL AND n.quarantined_at IS NOT NULL))
  FROM old_blobs o JOIN new_blobs n ON n.sha512 = o.sha512;
  RETURN NULL;
END
$$;

CREATE TRIGGER index_counters_blob_insert AFTER INSERT ON blobs REFERENCING NEW TABLE AS new_blobs
  FOR EACH STATEMENT EXECUTE FUNCTION index_counters_blobs_inserted();
CREATE TRIGGER index_counters_blob_update AFTER UPDATE ON blobs REFERENCING OLD TABLE AS old_blobs NEW TABLE AS new_blobs
  FOR EACH STATEMENT EXECUTE FUNCTION index_counters_blobs_updated();
CREATE TRIGGER index_counters_blob_delete AFTER DELETE ON blobs REFERENCING OLD TABLE AS old_blobs
  FOR EACH STATEMENT EXECUTE FUNCTION index_counters_blobs_deleted();

-- Names go first, while the blob (and so its size) still exists: their trigger then settles the name and
-- dedup counts, and the foreign key's cascade finds nothing left to do (as in SQLite).
CREATE FUNCTION index_counters_blob_delete_names() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  DELETE FROM names WHERE sha512 = OLD.sha512;
  RETURN OLD;
END
$$;
CREATE TRIGGER index_counters_blob_delete_names BEFORE DELETE ON blobs
  FOR EACH ROW EXECUTE FUNCTION index_counters_blob_delete_names();

-- Names: every statement reduces to per-pair changes of "attached" (+1, -1); the name and dedup counts
-- compare each touched name's and blob's attached count after the statement with the count before it
-- (after minus the statement's own change), so a statement detaching several pairs of one name at once
-- counts the name once, where SQLite's row triggers see each row in turn.
CREATE FUNCTION index_counters_names_apply(changes jsonb) RETURNS void LANGUAGE sql AS $$
  WITH c AS (
    SELECT x.filename, x.sha512, x.d FROM jsonb_to_recordset(changes) AS x(filename text, sha512 text, d integer) WHERE x.d != 0
  ), by_name AS (
    SELECT f.filename, f.d, (SELECT count(*) FROM names m WHERE m.filename = f.filename AND m.detached_at IS NULL) AS now
    FROM (SELECT filename, sum(d) AS d FROM c GROUP BY filename) f
  ), by_blob AS (
    SELECT s.sha512, s.d, (SELECT count(*) FROM names m WHERE m.sha512 = s.sha512 AND m.detached_at IS NULL) AS now,
           coalesce((SELECT size FROM blobs b WHERE b.sha512 = s.sha512), 0) AS size
    FROM (SELECT sha512, sum(d) AS d FROM c GROUP BY sha512) s
  )
  SELECT index_counters_add(0, 0, 0, 0, 0,
    (SELECT coalesce(sum((now > 0)::int - (now - d > 0)::int), 0) FROM by_name)::bigint,
    (SELECT coalesce(sum(d), 0) FROM c)::bigint,
    (SELECT coalesce(sum(size * (greatest(now - 1, 0) - greatest(now - d - 1, 0))), 0) FROM by_blob)::bigint,
    0, 0, 0)
$$;

CREATE FUNCTION index_counters_names_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM index_counters_names_apply(coalesce(jsonb_agg(jsonb_build_object('filename', filename, 'sha512', sha512, 'd', 1)), '[]'))
  FROM new_names WHERE detached_at IS NULL;
  RETURN NULL;
END
$$;

CREATE FUNCTION index_counters_names_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM index_counters_names_apply(coalesce(jsonb_agg(jsonb_build_object('filename', filename, 'sha512', sha512, 'd', -1)), '[]'))
  FROM old_names WHERE detached_at IS NULL;
  RETURN NULL;
END
$$;

CREATE FUNCTION index_counters_names_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM index_counters_names_apply(coalesce(jsonb_agg(jsonb_build_object('filename', x.filename, 'sha512', x.sha512, 'd', x.d)), '[]'))
  FROM (
    SELECT filename, sha512, 1 AS d FROM new_names WHERE detached_at IS NULL
    UNION ALL
    SELECT filename, sha512, -1 FROM old_names WHERE detached_at IS NULL
  ) x;
  RETURN NULL;
END
$$;

CREATE TRIGGER index_counters_name_insert AFTER INSERT ON names REFERENCING NEW TABLE AS new_names
  FOR EACH STATEMENT EXECUTE FUNCTION index_counters_names_inserted();
CREATE TRIGGER index_counters_name_update AFTER UPDATE ON names REFERENCING OLD TABLE AS old_names NEW TABLE AS new_names
  FOR EACH STATEMENT EXECUTE FUNCTION index_counters_names_updated();
CREATE TRIGGER index_counters_name_delete AFTER DELETE ON names REFERENCING OLD TABLE AS old_names
  FOR EACH STATEMENT EXECUTE FUNCTION index_counters_names_deleted();

-- The scrubber's walk, oldest verification first.
CREATE INDEX blobs_scrub_order ON blobs ((coalesce(verified_at, 0)), sha512) WHERE quarantined_at IS NULL;

-- Case-insensitive name search over attached names: lower() stands in for SQLite's NOCASE (ASCII folding).
CREATE INDEX names_current_nocase ON names (lower(filename), filename) WHERE detached_at IS NULL;

-- Items left 'downloading' by a crash go back to the queue at start.
CREATE INDEX fetch_items_downloading ON fetch_items (job_id, idx) WHERE state = 'downloading';
