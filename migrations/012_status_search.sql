-- Twin of migrations/postgres/012_status_search.sql. SQLite needs nothing: its names_current and
-- names_current_nocase (005) already compare names byte-wise and by NOCASE, as the search does.
SELECT 1;
