-- rowpipe schema, SQLite dialect (the embedded default). Keep the three
-- dialect folders in step (see migrations/README.md). Declared types are
-- INTEGER/TEXT only: sqlx's Any driver cannot read DATETIME or BOOLEAN.

CREATE TABLE uploads (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    id              TEXT    NOT NULL,
    file_name       TEXT    NULL,
    size_bytes      INTEGER NOT NULL DEFAULT 0,
    sha256          TEXT    NULL,
    encoding        TEXT    NULL,
    delimiter       TEXT    NULL,
    idempotency_key TEXT    NULL,
    status          TEXT    NOT NULL,
    error           TEXT    NULL,
    rows_read       INTEGER NOT NULL DEFAULT 0,
    rows_enqueued   INTEGER NOT NULL DEFAULT 0,
    rows_processed  INTEGER NOT NULL DEFAULT 0,
    rows_inserted   INTEGER NOT NULL DEFAULT 0,
    rows_duplicate  INTEGER NOT NULL DEFAULT 0,
    rows_rejected   INTEGER NOT NULL DEFAULT 0,
    created_at_ms   INTEGER NOT NULL,
    updated_at_ms   INTEGER NOT NULL,
    completed_at_ms INTEGER NULL,
    CONSTRAINT uploads_id_key UNIQUE (id),
    CONSTRAINT uploads_idempotency_key_key UNIQUE (idempotency_key)
);
CREATE INDEX uploads_sha256_idx ON uploads (sha256, created_at_ms);

-- One record per normalized email: the email is the primary key.
CREATE TABLE contacts (
    email         TEXT    NOT NULL,
    email_raw     TEXT    NOT NULL,
    name          TEXT    NULL,
    attributes    TEXT    NULL,
    upload_id     TEXT    NOT NULL,
    upload_seq    INTEGER NOT NULL,
    "row_number"  INTEGER NOT NULL,
    created_at_ms INTEGER NOT NULL,
    CONSTRAINT contacts_email_key PRIMARY KEY (email)
) WITHOUT ROWID;

CREATE TABLE accepted_rows (
    upload_id    TEXT    NOT NULL,
    "row_number" INTEGER NOT NULL,
    email        TEXT    NOT NULL,
    PRIMARY KEY (upload_id, "row_number")
) WITHOUT ROWID;

CREATE TABLE rejected_rows (
    upload_id     TEXT    NOT NULL,
    "row_number"  INTEGER NOT NULL,
    reason        TEXT    NOT NULL,
    message       TEXT    NOT NULL,
    fields        TEXT    NOT NULL,
    created_at_ms INTEGER NOT NULL,
    PRIMARY KEY (upload_id, "row_number")
) WITHOUT ROWID;
