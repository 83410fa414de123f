//! rowpipe-consumer: reads the stream as a member of a consumer group and
//! inserts rows into the contacts table, one record per normalized email.
//!
//! # Layout
//!
//! * [`config`]: the environment contract (batching, reclaiming, dead letters).
//! * [`startup`]: [`startup::Application::build`] then `run_until_stopped`.
//! * [`worker`]: read → judge → store → acknowledge, with the retry rules:
//!   the loop and reading (`worker/mod.rs`), one batch from delivery to
//!   report (`batch.rs`), storing with retries and acknowledging
//!   (`retry.rs`), entries given up on (`failed.rs`), and which dependency a
//!   failure is blamed on (`error.rs`, `health.rs`). What the worker says to
//!   Redis is `rowpipe_core::stream::ConsumerGroup`'s.
//! * [`completion`]: marking uploads completed, after each batch and by a sweep.
//! * [`loss`]: naming the rows lost in the stream (`incomplete`), settling
//!   `interrupted` uploads, and marking `interrupted` those whose upload
//!   instance stopped renewing its lease.
//! * [`mail_domain`]: the optional deliverability check
//!   (`ROWPIPE_CHECK_MAIL_DOMAIN=mx`): each batch's distinct domains looked
//!   up in DNS (MX, then A/AAAA) through a per-process cache, before the
//!   batch is stored.
//! * [`reclaim`]: which worker's turn it is to take over entries dead consumers left pending.
//! * [`maintenance`]: healing the group, gauges, trimming acknowledged
//!   entries, forgetting dead consumers, and running the sweeps.

pub mod completion;
pub mod config;
pub mod loss;
pub mod mail_domain;
pub mod maintenance;
pub mod reclaim;
pub mod startup;
pub mod worker;
