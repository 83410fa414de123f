-- Uploads that lose work are named, not left open: leases for uploads being
-- received, and the accounting of rows that never reached the table.
--
-- * `lease_owner`, `lease_expires_at_ms`: the upload instance receiving
--   the body renews its lease while it reads (ROWPIPE_UPLOAD_LEASE_SECS).
--   A `receiving` upload whose lease lapsed has no live instance behind it;
--   any upload instance or consumer marks it `interrupted`.
-- * `first_entry_id`, `last_entry_id`: the stream ids that bound the
--   upload's entries (the last one is the stream's tip when an interrupted
--   upload's instance is gone). The consumers' sweep asks Redis whether
--   anything in that range is still undelivered or pending; when nothing is
--   and rows are still unaccounted for, those rows were lost in Redis.
-- * `rows_missing`, `missing_rows`: how many rows, and which, as JSON
--   ranges `[[first, last], ...]`, derived from the ledgers
--   (`contacts`, `accepted_rows`, `rejected_rows`) of an `incomplete`
--   or `interrupted` upload.
-- * `attempts`: 1 for the first POST, one more per resume with the same
--   Idempotency-Key.
-- No new index: the sweeps find these uploads through `uploads_status_idx`.
ALTER TABLE uploads ADD COLUMN lease_owner VARCHAR(64) NULL;
ALTER TABLE uploads ADD COLUMN lease_expires_at_ms BIGINT NULL;
ALTER TABLE uploads ADD COLUMN first_entry_id VARCHAR(48) NULL;
ALTER TABLE uploads ADD COLUMN last_entry_id VARCHAR(48) NULL;
ALTER TABLE uploads ADD COLUMN rows_missing BIGINT NOT NULL DEFAULT 0;
ALTER TABLE uploads ADD COLUMN missing_rows TEXT NULL;
ALTER TABLE uploads ADD COLUMN attempts BIGINT NOT NULL DEFAULT 1;
