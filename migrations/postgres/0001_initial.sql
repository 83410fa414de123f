-- rowpipe schema, PostgreSQL dialect. Keep the three dialect folders in step:
-- same tables, same columns, same constraints (see migrations/README.md).
-- Timestamps are BIGINT milliseconds since the Unix epoch: portable across the
-- three databases and readable through sqlx's Any driver.

-- One record per upload. `seq` is the acceptance order: when two rows share
-- an email, the one from the smaller seq (then the smaller row number) wins.
CREATE TABLE uploads (
    seq             BIGSERIAL PRIMARY KEY,
    id              VARCHAR(64)  NOT NULL,
    file_name       TEXT         NULL,
    size_bytes      BIGINT       NOT NULL DEFAULT 0,
    sha256          VARCHAR(64)  NULL,
    encoding        VARCHAR(32)  NULL,
    delimiter       VARCHAR(8)   NULL,
    idempotency_key VARCHAR(255) NULL,
    status          VARCHAR(16)  NOT NULL,
    error           TEXT         NULL,
    rows_read       BIGINT       NOT NULL DEFAULT 0,
    rows_enqueued   BIGINT       NOT NULL DEFAULT 0,
    rows_processed  BIGINT       NOT NULL DEFAULT 0,
    rows_inserted   BIGINT       NOT NULL DEFAULT 0,
    rows_duplicate  BIGINT       NOT NULL DEFAULT 0,
    rows_rejected   BIGINT       NOT NULL DEFAULT 0,
    created_at_ms   BIGINT       NOT NULL,
    updated_at_ms   BIGINT       NOT NULL,
    completed_at_ms BIGINT       NULL,
    CONSTRAINT uploads_id_key UNIQUE (id),
    CONSTRAINT uploads_idempotency_key_key UNIQUE (idempotency_key)
);
CREATE INDEX uploads_sha256_idx ON uploads (sha256, created_at_ms);

-- The destination table: one record per normalized email address. The
-- normalized email is the primary key (unique, and the only index: every
-- extra index is paid on every inserted row).
CREATE TABLE contacts (
    -- The uniqueness key: trimmed, NFC, lower-cased, punycoded domain.
    email         VARCHAR(320) NOT NULL,
    -- The address exactly as the file wrote it.
    email_raw     TEXT         NOT NULL,
    name          TEXT         NULL,
    -- Other columns of the row, as a JSON object (text, for portability).
    attributes    TEXT         NULL,
    upload_id     VARCHAR(64)  NOT NULL,
    upload_seq    BIGINT       NOT NULL,
    "row_number"  BIGINT       NOT NULL,
    created_at_ms BIGINT       NOT NULL,
    CONSTRAINT contacts_email_key PRIMARY KEY (email)
);

-- Every row that passed validation, winner or duplicate. It makes
-- redelivered stream entries no-ops (exactly-once effect), lets the
-- duplicates of an upload be listed, and finds the contact of any row:
--   SELECT c.* FROM accepted_rows a JOIN contacts c ON c.email = a.email
--   WHERE a.upload_id = $1 AND a."row_number" = $2;
CREATE TABLE accepted_rows (
    upload_id    VARCHAR(64)  NOT NULL,
    "row_number" BIGINT       NOT NULL,
    email        VARCHAR(320) NOT NULL,
    PRIMARY KEY (upload_id, "row_number")
);

-- The reject ledger: every row that was not inserted because it is bad data,
-- with the reason code, a message and the fields as written.
CREATE TABLE rejected_rows (
    upload_id     VARCHAR(64) NOT NULL,
    "row_number"  BIGINT      NOT NULL,
    reason        VARCHAR(32) NOT NULL,
    message       TEXT        NOT NULL,
    fields        TEXT        NOT NULL,
    created_at_ms BIGINT      NOT NULL,
    PRIMARY KEY (upload_id, "row_number")
);
