//! The consumer's configuration: the environment contract.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use rowpipe_core::config::{DatabaseConfig, LeaseConfig, StreamConfig, TelemetryConfig};
use rowpipe_core::validate::EmailPolicy;

/// rowpipe-consumer: a consumer-group member that inserts stream rows into the
/// contacts table, one record per normalized email.
#[derive(Parser, Clone, Debug)]
#[command(name = "rowpipe-consumer", version, about)]
pub struct Config {
    #[command(flatten)]
    pub stream: StreamConfig,

    #[command(flatten)]
    pub database: DatabaseConfig,

    #[command(flatten)]
    pub telemetry: TelemetryConfig,

    /// The upload service's lease (`ROWPIPE_UPLOAD_LEASE_SECS`): the
    /// consumers' sweep marks `interrupted` a `receiving` upload whose
    /// instance has not renewed it for that long.
    #[command(flatten)]
    pub lease: LeaseConfig,

    /// Seconds a `queued` or `processing` upload may go without progress
    /// before the sweep checks it for lost rows: when nothing of it is left
    /// in the stream, the rows no ledger holds are named and the upload
    /// becomes `incomplete`. Only how soon a loss is looked for: an upload
    /// with entries still in the stream is never marked, however long it
    /// waits.
    #[arg(long, env = "ROWPIPE_STALL_SECS", default_value_t = 60)]
    pub stall_secs: u64,

    /// Address of the small HTTP port serving /healthz, /readyz and /metrics.
    #[arg(long, env = "ROWPIPE_METRICS_LISTEN", default_value = "127.0.0.1:9090")]
    pub metrics_listen: SocketAddr,

    /// Rows per batch (one transaction): a batch is flushed at this many rows…
    #[arg(long, env = "ROWPIPE_BATCH_SIZE", default_value_t = 1000)]
    pub batch_size: usize,

    /// …or this many milliseconds after its first row arrived.
    #[arg(long, env = "ROWPIPE_BATCH_TIMEOUT_MS", default_value_t = 200)]
    pub batch_timeout_ms: u64,

    /// Worker tasks in this process; each is a group member with its own
    /// blocking connection, so this many batches can be in flight at once.
    /// Two keep the database busy while a batch is read or judged; more only
    /// add transactions that wait on each other (measured in
    /// docs/performance.md). Scale out with processes instead.
    #[arg(long, env = "ROWPIPE_WORKERS", default_value_t = 2)]
    pub workers: usize,

    /// Entries pending this long on another (presumably dead) consumer are
    /// claimed with XAUTOCLAIM.
    #[arg(long, env = "ROWPIPE_CLAIM_IDLE_MS", default_value_t = 30_000)]
    pub claim_idle_ms: u64,

    /// Deliveries after which a failing entry goes to the dead-letter stream
    /// and the reject ledger (`processing_failed`).
    #[arg(long, env = "ROWPIPE_MAX_DELIVERIES", default_value_t = 5)]
    pub max_deliveries: usize,

    /// Seconds to finish the batch in hand after SIGTERM before exiting
    /// (keep it below Kubernetes' terminationGracePeriodSeconds).
    #[arg(long, env = "ROWPIPE_SHUTDOWN_GRACE_SECS", default_value_t = 20)]
    pub shutdown_grace_secs: u64,

    /// Consumer name prefix (default: host name); a pid and random suffix are added.
    #[arg(long, env = "ROWPIPE_CONSUMER_NAME")]
    pub consumer_name: Option<String>,

    /// Accept IP-literal email domains (`user@[192.0.2.1]`).
    #[arg(long, env = "ROWPIPE_ALLOW_IP_LITERAL", default_value_t = false, action = clap::ArgAction::Set)]
    pub allow_ip_literal: bool,

    /// Accept quoted local parts (`"john.smith"@example.com`).
    #[arg(long, env = "ROWPIPE_ALLOW_QUOTED_LOCAL_PART", default_value_t = false, action = clap::ArgAction::Set)]
    pub allow_quoted_local_part: bool,
}

impl Config {
    /// Fail fast on values that cannot work.
    pub fn validate(&self) -> anyhow::Result<()> {
        self.stream.validate()?;
        self.lease.validate()?;
        rowpipe_core::store::Dialect::from_url(&self.database.database_url)?;
        if self.batch_size == 0 || self.batch_size > 10_000 {
            anyhow::bail!("ROWPIPE_BATCH_SIZE must be between 1 and 10000");
        }
        if self.workers == 0 || self.workers > 64 {
            anyhow::bail!("ROWPIPE_WORKERS must be between 1 and 64");
        }
        if self.max_deliveries == 0 {
            anyhow::bail!("ROWPIPE_MAX_DELIVERIES must be at least 1");
        }
        Ok(())
    }

    pub fn policy(&self) -> EmailPolicy {
        EmailPolicy {
            allow_ip_literal: self.allow_ip_literal,
            allow_quoted_local_part: self.allow_quoted_local_part,
        }
    }

    pub fn batch_timeout(&self) -> Duration {
        Duration::from_millis(self.batch_timeout_ms.max(1))
    }

    pub fn stall(&self) -> Duration {
        Duration::from_secs(self.stall_secs)
    }

    pub fn claim_idle(&self) -> Duration {
        Duration::from_millis(self.claim_idle_ms.max(100))
    }

    /// How often a process looks for entries to take over: twice per
    /// `claim_idle` (at least every 500 ms), so an abandoned entry waits
    /// about 1.5 × `claim_idle` once a worker is free to look.
    pub fn reclaim_interval(&self) -> Duration {
        (self.claim_idle() / 2).max(Duration::from_millis(500))
    }

    /// A name unique to this process: host, pid, random suffix.
    pub fn consumer_base_name(&self) -> String {
        let host = self.consumer_name.clone().unwrap_or_else(|| {
            std::env::var("HOSTNAME")
                .ok()
                .filter(|h| !h.is_empty())
                .or_else(|| {
                    std::fs::read_to_string("/etc/hostname")
                        .ok()
                        .map(|h| h.trim().to_string())
                })
                .unwrap_or_else(|| "consumer".into())
        });
        let suffix: u32 = rand::random();
        format!("{host}-{}-{suffix:08x}", std::process::id())
    }
}
