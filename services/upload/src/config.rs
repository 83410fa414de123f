//! The upload service's configuration: the environment contract.

use std::net::SocketAddr;

use clap::Parser;
use rowpipe_core::config::{DatabaseConfig, LeaseConfig, StreamConfig, TelemetryConfig};

use crate::intake::Limits;

/// rowpipe-upload: streams uploaded CSV files row by row into a Redis Stream.
#[derive(Parser, Clone, Debug)]
#[command(name = "rowpipe-upload", version, about)]
pub struct Config {
    #[command(flatten)]
    pub stream: StreamConfig,

    #[command(flatten)]
    pub database: DatabaseConfig,

    #[command(flatten)]
    pub telemetry: TelemetryConfig,

    #[command(flatten)]
    pub lease: LeaseConfig,

    /// Address the HTTP API listens on (port 0 picks a free port).
    #[arg(long, env = "ROWPIPE_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Separate address for `/healthz`, `/readyz` and `/metrics` (they stay on
    /// the API address too), so probes and scrapers can be let in where the
    /// API is not (a NetworkPolicy, an Ingress that routes only `/v1`).
    #[arg(long, env = "ROWPIPE_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,

    /// Accepted bearer tokens, comma-separated.
    #[arg(long, env = "ROWPIPE_AUTH_TOKENS", hide_env_values = true)]
    pub auth_tokens: Option<String>,

    /// File holding accepted bearer tokens, one per line (a mounted Secret).
    #[arg(long, env = "ROWPIPE_AUTH_TOKENS_FILE")]
    pub auth_tokens_file: Option<std::path::PathBuf>,

    /// Accept requests without a token (local runs only; logged as a warning).
    #[arg(long, env = "ROWPIPE_AUTH_DISABLED", default_value_t = false, action = clap::ArgAction::Set)]
    pub auth_disabled: bool,

    /// Largest request body accepted, in bytes (413 beyond it).
    #[arg(long, env = "ROWPIPE_MAX_BODY_BYTES", default_value_t = 8 * 1024 * 1024 * 1024)]
    pub max_body_bytes: u64,

    /// Longest field accepted, in bytes (the row is rejected beyond it).
    #[arg(long, env = "ROWPIPE_MAX_FIELD_BYTES", default_value_t = Limits::DEFAULT.max_field_bytes)]
    pub max_field_bytes: usize,

    /// Most columns accepted in a row.
    #[arg(long, env = "ROWPIPE_MAX_COLUMNS", default_value_t = Limits::DEFAULT.max_columns)]
    pub max_columns: usize,

    /// Longest row accepted, in bytes.
    #[arg(long, env = "ROWPIPE_MAX_ROW_BYTES", default_value_t = Limits::DEFAULT.max_row_bytes)]
    pub max_row_bytes: usize,

    /// Most entries in the stream (waiting, in flight, or acknowledged and not
    /// yet trimmed) before uploads wait for consumers; this bounds Redis memory.
    #[arg(long, env = "ROWPIPE_MAX_BACKLOG", default_value_t = 200_000)]
    pub max_backlog: u64,

    /// Bytes of the stream in Redis (estimated with `MEMORY USAGE`) above
    /// which uploads wait for consumers; with `ROWPIPE_MAX_BACKLOG` it
    /// bounds Redis memory whatever the size of the rows.
    #[arg(long, env = "ROWPIPE_MAX_BACKLOG_BYTES", default_value_t = 512 * 1024 * 1024)]
    pub max_backlog_bytes: u64,

    /// Bytes of rows per XADD pipeline: a pipeline is written at
    /// `ROWPIPE_ENQUEUE_BATCH` rows or at this many bytes, whichever comes
    /// first, so an upload's buffers stay small with mebibyte rows.
    #[arg(long, env = "ROWPIPE_ENQUEUE_BATCH_BYTES", default_value_t = 1024 * 1024)]
    pub enqueue_batch_bytes: usize,

    /// Bytes of rows all uploads of this instance may hold at once in
    /// pipelines waiting to be written or being written (each upload also
    /// builds one of at most `ROWPIPE_ENQUEUE_BATCH_BYTES`): concurrent
    /// uploads of wide rows share it, so the instance's memory does not
    /// grow with their number. A pipeline larger than all of it still goes,
    /// alone.
    #[arg(long, env = "ROWPIPE_UPLOAD_BUFFER_BYTES", default_value_t = 8 * 1024 * 1024)]
    pub upload_buffer_bytes: usize,

    /// Rows per XADD pipeline.
    #[arg(long, env = "ROWPIPE_ENQUEUE_BATCH", default_value_t = 500)]
    pub enqueue_batch: usize,

    /// Replicas that must confirm each XADD pipeline (`WAIT`) before its
    /// rows count as enqueued; 0: none (Redis replicates asynchronously,
    /// so a primary that dies may take its last writes with it). When fewer
    /// confirm within `ROWPIPE_REDIS_WAIT_TIMEOUT_MS` the pipeline is
    /// written again, and after its attempts the upload fails, resumable.
    #[arg(long, env = "ROWPIPE_REDIS_WAIT_REPLICAS", default_value_t = 0)]
    pub redis_wait_replicas: u32,

    /// Milliseconds `WAIT` waits for the replicas of
    /// `ROWPIPE_REDIS_WAIT_REPLICAS` (1 to 5000).
    #[arg(long, env = "ROWPIPE_REDIS_WAIT_TIMEOUT_MS", default_value_t = 1000)]
    pub redis_wait_timeout_ms: u64,

    /// Window in seconds within which a re-upload of the same content (the
    /// same sha256, sent by the client in `X-Content-SHA256` as 64 hex digits)
    /// returns the earlier upload. 0 disables it.
    #[arg(long, env = "ROWPIPE_IDEMPOTENCY_WINDOW_SECS", default_value_t = 24 * 3600)]
    pub idempotency_window_secs: u64,

    /// Seconds in-flight uploads may continue after SIGTERM before they are
    /// interrupted (with the row reached, resumable) so the process can exit.
    #[arg(long, env = "ROWPIPE_SHUTDOWN_GRACE_SECS", default_value_t = 20)]
    pub shutdown_grace_secs: u64,

    /// Seconds a connection has to send a request's head (request line and
    /// headers) before it is closed: a client dribbling headers holds
    /// nothing for long.
    #[arg(long, env = "ROWPIPE_HEADER_READ_TIMEOUT_SECS", default_value_t = 10)]
    pub header_read_timeout_secs: u64,

    /// Seconds an upload's body may send nothing before the upload is
    /// stopped (408; the upload is interrupted, resumable).
    #[arg(long, env = "ROWPIPE_BODY_IDLE_TIMEOUT_SECS", default_value_t = 60)]
    pub body_idle_timeout_secs: u64,

    /// Connections open at once; past it a new connection is closed.
    #[arg(long, env = "ROWPIPE_MAX_CONNECTIONS", default_value_t = 1024)]
    pub max_connections: usize,

    /// Uploads this instance receives at once; past it `POST /v1/uploads`
    /// answers 429 with `Retry-After`.
    #[arg(long, env = "ROWPIPE_MAX_CONCURRENT_UPLOADS", default_value_t = 16)]
    pub max_concurrent_uploads: usize,

    /// Bytes of a multipart body before its `file` part's data begins
    /// (the preamble, every part's headers, and any fields before `file`);
    /// more is refused (400) instead of buffered.
    #[arg(long, env = "ROWPIPE_MAX_PART_HEADER_BYTES", default_value_t = 64 * 1024)]
    pub max_part_header_bytes: u64,
}

impl Config {
    /// Fail fast on values that cannot work.
    pub fn validate(&self) -> anyhow::Result<()> {
        self.stream.validate()?;
        self.lease.validate()?;
        rowpipe_core::store::Dialect::from_url(&self.database.database_url)?;
        if self.enqueue_batch == 0 {
            anyhow::bail!("ROWPIPE_ENQUEUE_BATCH must be at least 1");
        }
        if self.enqueue_batch_bytes == 0 || self.max_backlog_bytes < self.enqueue_batch_bytes as u64
        {
            anyhow::bail!(
                "ROWPIPE_ENQUEUE_BATCH_BYTES must be at least 1 and ROWPIPE_MAX_BACKLOG_BYTES at least that"
            );
        }
        if self.redis_wait_replicas > 0 && !(1..=5000).contains(&self.redis_wait_timeout_ms) {
            // 0 is "forever" to Redis, and a WAIT must end well within the
            // connection's 10 s reply timeout.
            anyhow::bail!(
                "ROWPIPE_REDIS_WAIT_TIMEOUT_MS must be between 1 and 5000 (got {})",
                self.redis_wait_timeout_ms
            );
        }
        if self.max_backlog < self.enqueue_batch as u64 {
            anyhow::bail!("ROWPIPE_MAX_BACKLOG must be at least ROWPIPE_ENQUEUE_BATCH");
        }
        if self.max_connections == 0 || self.max_concurrent_uploads == 0 {
            anyhow::bail!(
                "ROWPIPE_MAX_CONNECTIONS and ROWPIPE_MAX_CONCURRENT_UPLOADS must be at least 1"
            );
        }
        if self.header_read_timeout_secs == 0 || self.body_idle_timeout_secs == 0 {
            anyhow::bail!(
                "ROWPIPE_HEADER_READ_TIMEOUT_SECS and ROWPIPE_BODY_IDLE_TIMEOUT_SECS must be at least 1"
            );
        }
        if self.max_columns == 0 || self.max_field_bytes == 0 || self.max_row_bytes == 0 {
            anyhow::bail!("row limits must be positive");
        }
        Ok(())
    }
}
