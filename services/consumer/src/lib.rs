//! rowpipe-consumer: reads the stream as a member of a consumer group and
//! inserts rows into the contacts table, one record per normalized email.
//!
//! # Layout
//!
//! * [`config`]: the environment contract (batching, reclaiming, dead letters).
//! * [`startup`]: [`startup::Application::build`] then `run_until_stopped`.
//! * [`worker`]: read → judge → store → acknowledge, with the retry rules.
//! * [`completion`]: marking uploads completed, after each batch and by a sweep.
//! * [`reclaim`]: which worker's turn it is to take over entries dead consumers left pending.
//! * [`maintenance`]: gauges, trimming acknowledged entries, forgetting dead consumers.

pub mod completion;
pub mod config;
pub mod maintenance;
pub mod reclaim;
pub mod startup;
pub mod worker;
