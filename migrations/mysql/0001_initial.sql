-- rowpipe schema, MySQL / MariaDB dialect. Keep the three dialect folders in
-- step (see migrations/README.md). `row_number` is a reserved word in MySQL 8,
-- hence the backticks. Every table uses utf8mb4_bin: normalizing addresses is
-- the application's job, and MariaDB's default collation would otherwise fold
-- case, accents and trailing spaces and merge addresses behind its back.

CREATE TABLE uploads (
    seq             BIGINT       NOT NULL AUTO_INCREMENT PRIMARY KEY,
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
    CONSTRAINT uploads_idempotency_key_key UNIQUE (idempotency_key),
    INDEX uploads_sha256_idx (sha256, created_at_ms)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- One record per normalized email: the email is the primary key.
CREATE TABLE contacts (
    email         VARCHAR(320) NOT NULL COLLATE utf8mb4_bin,
    email_raw     MEDIUMTEXT   NOT NULL,
    name          TEXT         NULL,
    attributes    MEDIUMTEXT   NULL,
    upload_id     VARCHAR(64)  NOT NULL,
    upload_seq    BIGINT       NOT NULL,
    `row_number`  BIGINT       NOT NULL,
    created_at_ms BIGINT       NOT NULL,
    CONSTRAINT contacts_email_key PRIMARY KEY (email)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE accepted_rows (
    upload_id    VARCHAR(64)  NOT NULL,
    `row_number` BIGINT       NOT NULL,
    email        VARCHAR(320) NOT NULL COLLATE utf8mb4_bin,
    PRIMARY KEY (upload_id, `row_number`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE rejected_rows (
    upload_id     VARCHAR(64) NOT NULL,
    `row_number`  BIGINT      NOT NULL,
    reason        VARCHAR(32) NOT NULL,
    message       MEDIUMTEXT  NOT NULL,
    fields        MEDIUMTEXT  NOT NULL,
    created_at_ms BIGINT      NOT NULL,
    PRIMARY KEY (upload_id, `row_number`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
