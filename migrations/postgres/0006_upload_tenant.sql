-- Uploads belong to a tenant: the name the upload service's bearer token is
-- configured under (`ROWPIPE_AUTH_TOKENS=acme=TOKEN1,...`). A tenant's token
-- sees and exports only its own uploads; an operator token (a bare token, as
-- before 0006) sees all. NULL: uploaded with an operator token, or before
-- 0006. The index serves a tenant's listing, newest first.
ALTER TABLE uploads ADD COLUMN tenant VARCHAR(128) NULL;
CREATE INDEX uploads_tenant_seq_idx ON uploads (tenant, seq);
