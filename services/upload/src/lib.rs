//! rowpipe-upload: streams uploaded CSV files row by row into a Redis Stream.
//!
//! # Layout
//!
//! * [`config`]: the environment contract (`ROWPIPE_LISTEN`, limits, auth).
//! * [`startup`]: [`startup::Application::build`] then `run_until_stopped`.
//! * [`routes`]: HTTP handlers; [`error`] maps every failure to a status in one place.
//! * [`auth`]: bearer tokens.
//! * [`intake`]: bytes → decoded text → CSV records → numbered rows (no I/O).
//! * [`ingest`]: one upload: body → intake → batches → [`enqueue`].
//! * [`enqueue`]: pipelined `XADD` with backpressure on the group's backlog.

pub mod auth;
pub mod config;
pub mod enqueue;
pub mod error;
pub mod ingest;
pub mod intake;
pub mod routes;
pub mod startup;
pub mod state;

/// The OpenAPI document served at `/openapi.json`.
pub const OPENAPI_JSON: &str = include_str!("../openapi.json");
