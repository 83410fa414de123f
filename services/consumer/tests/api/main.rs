//! End-to-end tests: the upload service in-process on a random port, the
//! real `rowpipe-consumer` binary as separate processes (or, where a test is
//! about batches rather than processes, a worker in the test's own process:
//! [`in_process`]), real Redis and each real database. One binary, one
//! module per concern.

mod accounting;
mod cluster;
mod db_faults;
mod delivery;
mod fixtures;
mod hostile_input;
mod in_process;
mod ledger;
mod mail_domain;
mod pipeline;
mod queue_loss;
mod reader;
mod startup;
mod stream_range;
mod upload_loss;
mod validation;

/// Path of the consumer binary built for this test run.
pub const CONSUMER_BIN: &str = env!("CARGO_BIN_EXE_rowpipe-consumer");
