-- Rows stored although the consumer's deliverability check
-- (ROWPIPE_CHECK_MAIL_DOMAIN=mx) could not verify their mail domain: the DNS
-- lookup timed out, the server answered SERVFAIL, or no resolver answered.
-- An outage of DNS is not bad data, so such a row is stored as usual and
-- recorded here too, in the same transaction: counted as `unverified` in the
-- upload's status, exported by GET /v1/uploads/{id}/unverified. Keyed like
-- the ledgers, so a redelivery records nothing twice.
CREATE TABLE unverified_rows (
    upload_id     VARCHAR(64)  NOT NULL,
    "row_number"  BIGINT       NOT NULL,
    domain        VARCHAR(255) NOT NULL,
    reason        VARCHAR(32)  NOT NULL,
    message       TEXT         NOT NULL,
    fields        TEXT         NOT NULL,
    created_at_ms BIGINT       NOT NULL,
    PRIMARY KEY (upload_id, "row_number")
);
