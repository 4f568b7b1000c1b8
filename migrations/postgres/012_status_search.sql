-- The status page's prefix search compares names byte-wise (COLLATE "C", SQLite's BINARY) whatever the
-- database's collation; an index serves such a range only when its column has that collation, so
-- names_current (default collation) and names_current_nocase (005) left the search filtering every attached
-- name. These two give it a range scan in result order, so LIMIT stops it early.
CREATE INDEX names_current_c ON names (filename COLLATE "C") WHERE detached_at IS NULL;
-- lower() under "C" folds ASCII letters only, like SQLite's NOCASE, whatever the database's locale.
CREATE INDEX names_current_nocase_c ON names ((lower(filename COLLATE "C")) COLLATE "C", filename COLLATE "C") WHERE detached_at IS NULL;
-- names_current_nocase served only the search.
DROP INDEX names_current_nocase;
