-- Bytes that uploads in flight hold against FASTPULL_HIGH_WATERMARK_BYTES: their declared size, or
-- what they have received so far. In the index rather than in memory so the mark holds across every
-- process writing to it (cluster workers, a CLI beside the server). A row whose pid no longer runs is
-- a crash's leftover and is removed by the next upload that would otherwise be refused.
CREATE TABLE upload_holds (
  id    TEXT    NOT NULL PRIMARY KEY,
  pid   INTEGER NOT NULL,
  bytes INTEGER NOT NULL CHECK (bytes >= 0)
) WITHOUT ROWID;
