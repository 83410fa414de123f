-- Uploads still open (`queued` or `processing`), found by status.
--
-- Consumers complete an upload after the batch that stores its last row.
-- A consumer or an upload service that dies between that commit and the
-- check, or a check that fails, would leave the upload open for good; so
-- each consumer process also sweeps the open uploads every few seconds
-- (consumer/src/maintenance.rs). This index keeps that sweep a lookup of the
-- few open uploads rather than a scan of every upload ever made.
CREATE INDEX uploads_status_idx ON uploads (status);
