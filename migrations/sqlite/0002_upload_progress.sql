-- Per-upload progress, in a few rows per upload instead of one.
--
-- Every consumer batch used to add its counts to its upload's row in
-- `uploads`, which every concurrent batch of that upload then waited for
-- until commit (a quarter of the database's samples in the 1M-row
-- benchmark were that lock wait). Now a batch adds its deltas to one of
-- `slot` 0..63 of its upload, picked at random, so two batches rarely meet.
-- An upload's counts are `uploads.rows_*` (what consumers older than this
-- migration added, and what they add during a rolling upgrade) plus the
-- sums over its slots. The view `upload_counts` does that addition for
-- people reading the database directly.
--
-- Also from this version: a winning row is recorded by its own `contacts` row
-- only, and `accepted_rows` holds the duplicates and displaced winners (on
-- MySQL/MariaDB it keeps every accepted row, see store/batch.rs).

CREATE TABLE upload_progress (
    upload_id      TEXT    NOT NULL,
    slot           INTEGER NOT NULL,
    rows_processed INTEGER NOT NULL DEFAULT 0,
    rows_rejected  INTEGER NOT NULL DEFAULT 0,
    rows_inserted  INTEGER NOT NULL DEFAULT 0,
    updated_at_ms  INTEGER NOT NULL,
    PRIMARY KEY (upload_id, slot)
) WITHOUT ROWID;

CREATE VIEW upload_counts AS
SELECT u.id AS upload_id,
       u.status AS status,
       u.rows_read AS rows_read,
       u.rows_enqueued AS rows_enqueued,
       u.rows_processed + COALESCE(SUM(p.rows_processed), 0) AS rows_processed,
       u.rows_inserted + COALESCE(SUM(p.rows_inserted), 0) AS rows_inserted,
       u.rows_rejected + COALESCE(SUM(p.rows_rejected), 0) AS rows_rejected,
       u.rows_processed + COALESCE(SUM(p.rows_processed), 0)
         - u.rows_rejected - COALESCE(SUM(p.rows_rejected), 0)
         - u.rows_inserted - COALESCE(SUM(p.rows_inserted), 0) AS rows_duplicate
FROM uploads u
LEFT JOIN upload_progress p ON p.upload_id = u.id
GROUP BY u.id, u.status, u.rows_read, u.rows_enqueued, u.rows_processed, u.rows_inserted, u.rows_rejected;
