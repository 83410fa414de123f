//! rowpipe-upload's tests: the intake corpus (pure, no services) and the
//! HTTP API against real Redis and a real database, and interrupted uploads
//! and their resumes.

mod backlog_bytes;
mod compressed_and_foreign;
mod http;
mod intake_corpus;
mod no_leaks;
mod replication;
mod resume;
mod slow_clients;
mod stream_gauges;
mod tenants;
mod unterminated_quote;
