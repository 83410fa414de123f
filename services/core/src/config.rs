//! The environment contract shared by every rowpipe program.
//!
//! Each program's own `Config` flattens these groups, so a variable means the
//! same thing everywhere and `--help` lists it with its default.

use clap::Args;

/// Default stream key, shared by upload, consumer, CLI and the Helm chart.
pub const DEFAULT_STREAM: &str = "rowpipe:rows";
/// Default consumer group.
pub const DEFAULT_GROUP: &str = "rowpipe-consumers";
/// Default database: an embedded SQLite file in the working directory.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://rowpipe.db";

/// Where the Redis Stream lives and who reads it.
#[derive(Args, Clone, Debug)]
pub struct StreamConfig {
    /// Redis connection URL (`redis://` or `rediss://` for TLS; credentials go in the URL).
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,

    /// Key of the Redis Stream rows travel through.
    #[arg(long, env = "ROWPIPE_STREAM", default_value = DEFAULT_STREAM)]
    pub stream: String,

    /// Consumer group that consumers join (created with MKSTREAM if missing).
    #[arg(long, env = "ROWPIPE_GROUP", default_value = DEFAULT_GROUP)]
    pub group: String,

    /// `REDIS_URL` names the seed nodes of a Redis Cluster (one or more
    /// comma-separated `redis://` or `rediss://` URLs): the topology is
    /// discovered from them, `MOVED`/`ASK` redirections are followed, and a
    /// failover is followed without a restart.
    #[arg(long, env = "ROWPIPE_REDIS_CLUSTER", default_value_t = false, action = clap::ArgAction::Set)]
    pub redis_cluster: bool,

    /// Keys the stream is split into (1 to 64). 1 is the stream key itself;
    /// N > 1 is N keys `<stream>:{<tag>}` whose hash tags spread them over
    /// a cluster's primaries, each with its own consumer group, rows routed
    /// by their normalized email (see `docs/scaling.md`). Every program of
    /// a deployment must have the same value; changing it needs the stream
    /// drained first.
    #[arg(long, env = "ROWPIPE_STREAM_SHARDS", default_value_t = 1)]
    pub stream_shards: u16,
}

impl StreamConfig {
    /// Checks that fail fast at start rather than at the first row.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.redis_cluster {
            for url in self.redis_urls() {
                if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                    anyhow::bail!(
                        "with ROWPIPE_REDIS_CLUSTER=true, REDIS_URL is comma-separated redis:// or rediss:// URLs of cluster nodes (got {:?})",
                        redact(url)
                    );
                }
            }
        } else if self.redis_url.contains(',') {
            anyhow::bail!(
                "REDIS_URL names several servers: set ROWPIPE_REDIS_CLUSTER=true for a Redis Cluster (got {:?})",
                redact(&self.redis_url)
            );
        } else if !(self.redis_url.starts_with("redis://")
            || self.redis_url.starts_with("rediss://")
            || self.redis_url.starts_with("redis+unix://")
            || self.redis_url.starts_with("unix://"))
        {
            anyhow::bail!(
                "REDIS_URL must start with redis://, rediss:// or unix:// (got {:?})",
                redact(&self.redis_url)
            );
        }
        if !(1..=crate::stream::shards::MAX_SHARDS).contains(&self.stream_shards) {
            anyhow::bail!(
                "ROWPIPE_STREAM_SHARDS must be between 1 and {} (got {})",
                crate::stream::shards::MAX_SHARDS,
                self.stream_shards
            );
        }
        if self.stream_shards > 1 && self.stream.contains('{') {
            anyhow::bail!(
                "ROWPIPE_STREAM {:?} has a hash tag of its own: with ROWPIPE_STREAM_SHARDS > 1 every shard would hash to its slot; drop the braces",
                self.stream
            );
        }
        if self.stream.trim().is_empty() {
            anyhow::bail!("ROWPIPE_STREAM must not be empty");
        }
        if self.group.trim().is_empty() {
            anyhow::bail!("ROWPIPE_GROUP must not be empty");
        }
        Ok(())
    }

    /// The seed URLs of `REDIS_URL` (one unless it names cluster nodes).
    pub fn redis_urls(&self) -> impl Iterator<Item = &str> {
        self.redis_url
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
    }

    /// Where Redis is: one server or a cluster's seed nodes.
    pub fn redis_target(&self) -> crate::stream::RedisTarget {
        crate::stream::RedisTarget {
            urls: self.redis_urls().map(str::to_string).collect(),
            cluster: self.redis_cluster,
        }
    }

    /// The stream's shard keys.
    pub fn shards(&self) -> crate::stream::shards::Shards {
        crate::stream::shards::Shards::new(&self.stream, self.stream_shards)
    }

    /// The dead-letter stream for entries that failed too often.
    pub fn dead_letter_stream(&self) -> String {
        format!("{}:dead", self.stream)
    }
}

/// Where rows end up.
#[derive(Args, Clone, Debug)]
pub struct DatabaseConfig {
    /// Database URL: `postgres://…`, `mysql://…` (MySQL or MariaDB) or `sqlite://path.db`.
    #[arg(long, env = "DATABASE_URL", default_value = DEFAULT_DATABASE_URL)]
    pub database_url: String,

    /// Maximum connections in this process's database pool.
    #[arg(long, env = "ROWPIPE_DB_MAX_CONNECTIONS", default_value_t = 8)]
    pub db_max_connections: u32,

    /// Milliseconds a statement may run, or wait for a lock, before the
    /// database cancels it (PostgreSQL `statement_timeout` and
    /// `lock_timeout`; MariaDB `max_statement_time`; MySQL/MariaDB
    /// `innodb_lock_wait_timeout` and `lock_wait_timeout`, in whole seconds;
    /// SQLite `busy_timeout`). A call that gets no answer at all is
    /// abandoned after twice this plus 5 s. 0: no limit (`rowpipe migrate`
    /// always runs without one).
    #[arg(
        long,
        env = "ROWPIPE_DB_STATEMENT_TIMEOUT_MS",
        default_value_t = 30_000
    )]
    pub db_statement_timeout_ms: u64,

    /// Milliseconds to wait for a free connection from the pool (or a new
    /// one to open) before the call fails as an outage.
    #[arg(long, env = "ROWPIPE_DB_ACQUIRE_TIMEOUT_MS", default_value_t = 10_000)]
    pub db_acquire_timeout_ms: u64,
}

impl DatabaseConfig {
    /// `url` with every other setting at its default.
    pub fn for_url(url: &str) -> Self {
        Self {
            database_url: url.to_string(),
            db_max_connections: 8,
            db_statement_timeout_ms: 30_000,
            db_acquire_timeout_ms: 10_000,
        }
    }

    /// The statement timeout, if any.
    pub fn statement_timeout(&self) -> Option<std::time::Duration> {
        (self.db_statement_timeout_ms > 0)
            .then(|| std::time::Duration::from_millis(self.db_statement_timeout_ms))
    }

    /// How long a call may go unanswered before its caller counts itself
    /// cut off from the database: past the statement timeout, by which the
    /// server would have answered, if only with an error.
    pub fn unanswered_after(&self) -> Option<std::time::Duration> {
        self.statement_timeout()
            .map(|t| t + std::time::Duration::from_secs(5))
    }

    /// How long one call to the database may take in all before the caller
    /// abandons it (see [`crate::store::Store::call`]): longer than the
    /// server's own timeout, which should end it first, and than the wait
    /// for a connection.
    pub fn call_deadline(&self) -> Option<std::time::Duration> {
        self.statement_timeout().map(|t| {
            t * 2
                + std::time::Duration::from_millis(self.db_acquire_timeout_ms)
                + std::time::Duration::from_secs(5)
        })
    }
}

/// How long an upload being received is held by the instance reading it.
///
/// The upload service renews the lease of every upload it is receiving
/// every third of this; an upload whose lease lapsed has no live instance
/// behind it, and any upload instance or consumer marks it `interrupted`.
/// Both programs read it: the upload service to renew, both to judge
/// lapsed leases.
#[derive(Args, Clone, Debug)]
pub struct LeaseConfig {
    /// Seconds an upload being received is held without renewal.
    #[arg(long, env = "ROWPIPE_UPLOAD_LEASE_SECS", default_value_t = 30)]
    pub upload_lease_secs: u64,
}

impl LeaseConfig {
    /// Reject a lease too short to renew.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.upload_lease_secs == 0 {
            anyhow::bail!("ROWPIPE_UPLOAD_LEASE_SECS must be at least 1");
        }
        Ok(())
    }

    /// The lease in milliseconds, as the store compares it.
    pub fn lease_ms(&self) -> i64 {
        i64::try_from(self.upload_lease_secs.saturating_mul(1000)).unwrap_or(i64::MAX)
    }

    /// How often a live upload renews its lease: three times per lease, so
    /// one late or failed renewal does not lose it.
    pub fn renew_every(&self) -> std::time::Duration {
        std::time::Duration::from_millis((self.upload_lease_secs.saturating_mul(1000) / 3).max(100))
    }
}

/// Logging and tracing switches. The standard `OTEL_*` variables are read too
/// (see [`crate::telemetry`]).
#[derive(Args, Clone, Debug)]
pub struct TelemetryConfig {
    /// Log format: `pretty` for terminals, `json` for log collectors.
    #[arg(long, env = "ROWPIPE_LOG_FORMAT", default_value = "pretty", value_parser = ["pretty", "json"])]
    pub log_format: String,
}

/// Hide the password part of a URL before it reaches a log line or error.
pub fn redact(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://")
        && let Some((creds, host)) = rest.rsplit_once('@')
    {
        let user = creds.split(':').next().unwrap_or("");
        return format!("{scheme}://{user}:***@{host}");
    }
    url.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_hides_passwords_but_keeps_host() {
        assert_eq!(
            redact("postgres://app:s3cret@db:5432/x"),
            "postgres://app:***@db:5432/x"
        );
        assert_eq!(redact("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
    }
}
