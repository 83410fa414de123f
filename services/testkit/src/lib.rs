//! The integration-test harness: real Redis, real databases, real processes.
//!
//! Every test gets its own stream key and its own database (a fresh
//! PostgreSQL/MariaDB database or SQLite file), so tests run in parallel. A
//! missing server fails the test with a message, never skips it.
//!
//! # Layout
//!
//! * [`services`]: where the shared servers are (`REDIS_URL`,
//!   `ROWPIPE_TEST_*_URL`), a test's own stream key, URL surgery.
//! * [`db`]: [`Backend`] and a database of the test's own ([`TestDb`]).
//! * [`config`]: program configurations parsed by the programs' own `clap`
//!   definitions, so tests run on the real defaults, deaf to the environment.
//! * [`app`]: the upload service in-process on port 0 ([`spawn_app`],
//!   [`TestApp`]) and what a test reads back from it.
//! * [`consumer`]: the real consumer binary as OS processes of a
//!   [`TestApp`] ([`ConsumerProcess`]).
//! * [`upload_process`]: the real upload binary as an OS process of a
//!   [`TestApp`] ([`UploadProcess`]), for tests that kill an instance.
//! * [`data`]: reproducible contact files ([`generate_contacts`]) and the
//!   oracle of the table they must leave ([`Generated::oracle`]).
//! * [`dns`]: an authoritative DNS server of the test's own on a loopback
//!   port ([`TestDns`]), with a [`Zone`] per domain and a count of queries.
//! * [`faults`]: a database link to cut ([`ToggleProxy`]) and a Redis of the
//!   test's own to restart ([`OwnRedis`]).
//! * [`faults::redis_cluster`]: a Redis Cluster of the test's own
//!   ([`RedisCluster`]), whose primaries it kills to watch a failover.
//! * [`assertions`]: shared checks and [`eventually`].
//! * [`macros`]: [`on_databases!`], one test body run on each database.
//!
//! Everything a test uses is re-exported here, so tests import from the
//! crate root (`rowpipe_testkit::spawn_app`).

pub mod app;
pub mod assertions;
pub mod config;
pub mod consumer;
pub mod data;
pub mod db;
pub mod dns;
pub mod faults;
pub mod macros;
pub mod services;
pub mod upload_process;

pub use app::{AppOptions, TOKEN, TestApp, spawn_app, spawn_app_with};
pub use assertions::{acknowledged, assert_every_row_counted_once, eventually};
pub use consumer::ConsumerProcess;
pub use data::{Generated, file_with_an_unclosed_quote, generate_contacts};
pub use db::{Backend, TestDb};
pub use dns::{TestDns, Zone};
pub use faults::proxy::ToggleProxy;
pub use faults::redis::OwnRedis;
pub use faults::redis_cluster::RedisCluster;
pub use services::{fresh_stream, host_port, redis_url, require_binary, via_port};
pub use upload_process::UploadProcess;
