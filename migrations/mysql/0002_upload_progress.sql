-- Per-upload progress, in a few rows per upload instead of one.
--
-- Every consumer batch used to add its counts to its upload's row in
-- `uploads`, which every concurrent batch of that upload then waited for
-- until commit (a quarter of the database's samples in the 1M-row
-- benchmark were that lock wait). Now a batch adds its deltas to one of
-- `slot` 0..63 of its upload, picked at random, so two batches rarely meet.
-- The counts of an upload are the sums over its slots; when it completes they
-- are also copied into `uploads.rows_*` for people reading that table.
--
-- Also from this version: a winning row is recorded by its own `contacts` row
-- only, and `accepted_rows` holds the duplicates and displaced winners (on
-- MySQL/MariaDB it keeps every accepted row, see store/batch.rs).

CREATE TABLE upload_progress (
    upload_id      VARCHAR(64) NOT NULL,
    slot           INTEGER     NOT NULL,
    rows_processed BIGINT      NOT NULL DEFAULT 0,
    rows_rejected  BIGINT      NOT NULL DEFAULT 0,
    rows_inserted  BIGINT      NOT NULL DEFAULT 0,
    updated_at_ms  BIGINT      NOT NULL,
    PRIMARY KEY (upload_id, slot)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- Counts kept in `uploads` so far become slot -1 of each upload.
INSERT INTO upload_progress (upload_id, slot, rows_processed, rows_rejected, rows_inserted, updated_at_ms)
SELECT id, -1, rows_processed, rows_rejected, rows_inserted, updated_at_ms FROM uploads;
