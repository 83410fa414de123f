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

    /// The stream shards this process serves: empty or `all` for every one
    /// of `ROWPIPE_STREAM_SHARDS`, or a list such as `0,3-5` for consumers
    /// pinned to shards. Every shard must be served by some consumer.
    #[arg(long, env = "ROWPIPE_SHARDS", default_value = "")]
    pub shards: String,

    /// Entries pending this long on another (presumably dead) consumer are
    /// claimed with XAUTOCLAIM.
    #[arg(long, env = "ROWPIPE_CLAIM_IDLE_MS", default_value_t = 30_000)]
    pub claim_idle_ms: u64,

    /// Deliveries after which a row the database refuses on its own (a
    /// constraint, a value; alone, not in a batch) goes to the dead-letter
    /// stream and the reject ledger (`processing_failed`), and an entry
    /// whose upload has no record goes to the dead-letter stream. A database
    /// outage counts no delivery: it is waited out.
    #[arg(long, env = "ROWPIPE_MAX_DELIVERIES", default_value_t = 5)]
    pub max_deliveries: usize,

    /// About how many letters the dead-letter stream keeps (oldest trimmed
    /// first). Every dead-lettered row stays in its upload's reject ledger.
    #[arg(long, env = "ROWPIPE_DEAD_LETTER_MAX_LEN", default_value_t = 100_000)]
    pub dead_letter_max_len: usize,

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

    /// The deliverability check (`ROWPIPE_CHECK_MAIL_DOMAIN`) and its DNS.
    #[command(flatten)]
    pub mail_domain: MailDomainConfig,
}

/// Whether accepted rows' domains are looked up in DNS.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CheckMailDomain {
    /// No lookups: an address is judged by its syntax alone.
    #[default]
    Off,
    /// A domain must have MX records, or none and an A/AAAA address (RFC
    /// 5321's implicit MX); NXDOMAIN, a null MX (RFC 7505) or neither
    /// rejects the row as `no_mail_domain`. A failed lookup stores the row
    /// as `unverified`.
    Mx,
}

/// The deliverability check's settings (see `crate::mail_domain`).
#[derive(clap::Args, Clone, Debug)]
pub struct MailDomainConfig {
    /// `off` (default: nothing is looked up) or `mx`.
    #[arg(long, env = "ROWPIPE_CHECK_MAIL_DOMAIN", value_enum, default_value_t = CheckMailDomain::Off)]
    pub check_mail_domain: CheckMailDomain,

    /// Name servers to ask, comma-separated `ip` or `ip:port` (`[v6]:port`);
    /// unset: the system's resolver configuration (/etc/resolv.conf).
    #[arg(long, env = "ROWPIPE_DNS_SERVERS")]
    pub dns_servers: Option<String>,

    /// Time one domain's lookup may take (MX, then A/AAAA), in milliseconds;
    /// past it the rows are stored `unverified` (`dns_timeout`).
    #[arg(long, env = "ROWPIPE_DNS_TIMEOUT_MS", default_value_t = 2000)]
    pub dns_timeout_ms: u64,

    /// Lookups in flight at once in this process, over all its workers.
    #[arg(long, env = "ROWPIPE_DNS_CONCURRENCY", default_value_t = 32)]
    pub dns_concurrency: usize,

    /// Floor of the time an answer is kept, in seconds: an answer with a
    /// shorter TTL (or 0) is kept this long, so a large upload does not ask
    /// again and again.
    #[arg(long, env = "ROWPIPE_DNS_MIN_TTL_SECS", default_value_t = 60)]
    pub dns_min_ttl_secs: u64,

    /// Ceiling of the time an answer is kept, in seconds, for positive and
    /// negative (NXDOMAIN, no records) answers alike.
    #[arg(long, env = "ROWPIPE_DNS_MAX_TTL_SECS", default_value_t = 3600)]
    pub dns_max_ttl_secs: u64,

    /// Seconds a failed lookup (timeout, SERVFAIL) is remembered before the
    /// domain is asked again; meanwhile its rows are stored `unverified`
    /// without waiting for another timeout.
    #[arg(long, env = "ROWPIPE_DNS_FAILURE_TTL_SECS", default_value_t = 10)]
    pub dns_failure_ttl_secs: u64,

    /// Domains the cache holds at most; past that, expired answers are
    /// dropped first, then all.
    #[arg(long, env = "ROWPIPE_DNS_CACHE_SIZE", default_value_t = 100_000)]
    pub dns_cache_size: usize,
}

impl MailDomainConfig {
    /// Fail fast on values that cannot work.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.dns_timeout_ms == 0 {
            anyhow::bail!("ROWPIPE_DNS_TIMEOUT_MS must be at least 1");
        }
        if self.dns_concurrency == 0 || self.dns_concurrency > 1024 {
            anyhow::bail!("ROWPIPE_DNS_CONCURRENCY must be between 1 and 1024");
        }
        if self.dns_min_ttl_secs > self.dns_max_ttl_secs {
            anyhow::bail!("ROWPIPE_DNS_MIN_TTL_SECS must not exceed ROWPIPE_DNS_MAX_TTL_SECS");
        }
        if self.dns_cache_size == 0 {
            anyhow::bail!("ROWPIPE_DNS_CACHE_SIZE must be at least 1");
        }
        self.name_servers()?;
        Ok(())
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.dns_timeout_ms)
    }

    /// `ROWPIPE_DNS_SERVERS` parsed (port 53 where none is given); `None`
    /// for the system's configuration.
    pub fn name_servers(&self) -> anyhow::Result<Option<Vec<SocketAddr>>> {
        let Some(list) = self.dns_servers.as_deref().filter(|l| !l.trim().is_empty()) else {
            return Ok(None);
        };
        list.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse::<SocketAddr>()
                    .or_else(|_| {
                        s.parse::<std::net::IpAddr>()
                            .map(|ip| SocketAddr::new(ip, 53))
                    })
                    .map_err(|_| {
                        anyhow::anyhow!(
                            "ROWPIPE_DNS_SERVERS: {s:?} is not an IP address or ip:port"
                        )
                    })
            })
            .collect::<anyhow::Result<Vec<_>>>()
            .map(Some)
    }
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
        self.mail_domain.validate()?;
        self.served_shards()?;
        Ok(())
    }

    /// The shards this process serves (`ROWPIPE_SHARDS` of
    /// `ROWPIPE_STREAM_SHARDS`), in order.
    pub fn served_shards(&self) -> anyhow::Result<Vec<usize>> {
        let served = rowpipe_core::stream::shards::ShardSet::parse(&self.shards)?
            .resolve(self.stream.shards().count())?;
        if served.is_empty() {
            anyhow::bail!("ROWPIPE_SHARDS names no shard");
        }
        Ok(served)
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
