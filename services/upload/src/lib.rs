//! rowpipe-upload: streams uploaded CSV files row by row into a Redis Stream.
//!
//! # Layout
//!
//! * [`config`]: the environment contract (`ROWPIPE_LISTEN`, limits, auth).
//! * [`startup`]: [`startup::Application::build`] merges the route groups,
//!   layers authentication, binds; then `run_until_stopped`.
//! * [`serve`]: the HTTP server: header read timeout, connection cap,
//!   graceful shutdown.
//! * [`state`]: [`state::AppState`], what every handler can reach.
//! * [`routes`]: one module per route group, each with its `router()`:
//!   [`routes::uploads`], [`routes::exports`], [`routes::health`],
//!   [`routes::openapi`]. [`error`] maps every failure to a status in one place.
//! * [`auth`]: bearer tokens, and the tenant a token is for.
//! * [`body`]: the request body as the file's bytes: decompressed (gzip,
//!   zstd), and refused when it is not text (a workbook, a PDF, an image).
//! * [`lifecycle`]: one `POST /v1/uploads`: checks, replay lookup, record,
//!   [`ingest`], finish.
//! * [`part_headers`]: the bound on a multipart body's bytes before its
//!   file's data.
//! * [`options`]: the upload's query parameters and the media types taken as CSV.
//! * [`idempotency`]: `Idempotency-Key` and `X-Content-SHA256` replays.
//! * [`intake`]: bytes → decoded text → CSV records → numbered rows (no I/O).
//! * [`ingest`]: one attempt at an upload's body → intake → batches →
//!   [`enqueue`], leaving out the rows a resumed upload has accounted for.
//! * [`lease`]: this instance's lease on the uploads it receives (renewed
//!   with their progress, or the upload interrupted), and the sweep that
//!   marks the uploads of dead instances `interrupted`.
//! * [`enqueue`]: pipelined `XADD` with backpressure on the group's backlog.
//! * [`buffer_budget`]: the bytes of pipelines all uploads of the instance
//!   hold at once (shared, so wide rows stay bounded however many uploads).
//! * [`csv_writer`]: the exports' CSV, quoted by hand and streamed page by page.
//! * [`stream_gauges`]: the group's lag, pending and length gauges, sampled
//!   here too so they exist while the consumers are scaled to zero.
//!
//! Dependencies point one way: `startup` → `routes` → `lifecycle` →
//! `ingest` → `intake`/`enqueue`/`lease`, and everything that needs the shared state
//! takes it from `state`, which depends only on `config`, `enqueue` and
//! `buffer_budget`.

pub mod auth;
pub mod body;
pub mod buffer_budget;
pub mod config;
pub mod csv_writer;
pub mod enqueue;
pub mod error;
pub mod idempotency;
pub mod ingest;
pub mod intake;
pub mod lease;
pub mod lifecycle;
pub mod options;
pub mod part_headers;
pub mod routes;
pub mod serve;
pub mod startup;
pub mod state;
pub mod stream_gauges;

/// The OpenAPI document served at `/openapi.json`.
pub const OPENAPI_JSON: &str = include_str!("../openapi.json");
