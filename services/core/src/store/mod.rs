//! The database side: one [`Store`] over PostgreSQL, MySQL/MariaDB or SQLite,
//! chosen by the scheme of `DATABASE_URL`.
//!
//! rowpipe talks to all three through sqlx's `Any` driver with portable SQL:
//! BIGINT/TEXT columns only, timestamps as epoch milliseconds, `?`
//! placeholders and ANSI-quoted identifiers, which [`Dialect`] rewrites.
//! Statements that differ beyond that (the conflict clause, row locks,
//! PostgreSQL's packed parameters) are written out per dialect in
//! `batch/sql/`.
//!
//! # Layout
//!
//! * this file: [`Store`]: connecting (each dialect's session settings),
//!   migrations and the schema check.
//! * `dialect.rs`: [`Dialect`], from the URL scheme: placeholders and
//!   identifier quoting.
//! * `error.rs`: [`StoreError`], and which errors are transient (by the
//!   database's error codes).
//! * [`uploads`]: upload records and their counts.
//! * [`accounting`]: which rows of an upload the ledgers hold ([`RowSet`]),
//!   and naming the rows that reached the stream and were lost
//!   (`incomplete`, or an `interrupted` upload's settled counts).
//! * [`leases`]: who is receiving an upload, how far it got, and marking
//!   `interrupted` the uploads whose instance stopped renewing its lease.
//! * [`unverified`]: stored rows whose mail domain DNS could not verify
//!   (recorded in the batch's transaction; the `unverified` count and export).
//! * [`batch`]: applying a batch of judged rows in one transaction: the
//!   duplicate rule and the exactly-once effect (`batch/mod.rs`), its steps
//!   on the ledgers and on contacts, how values are encoded
//!   (`batch/encode.rs`), and each statement's text (`batch/sql/`, with
//!   `postgres.rs`, `mysql.rs` and `sqlite.rs` for what only that dialect
//!   sends).

pub mod accounting;
pub mod batch;
mod dialect;
mod error;
pub mod leases;
pub mod unverified;
pub mod uploads;

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, AssertSqlSafe, ConnectOptions, Executor};

use crate::config::DatabaseConfig;

pub use accounting::{AccountingCandidate, RowSet};
pub use batch::BatchOutcome;
pub use dialect::Dialect;
pub use error::{Fault, StoreError, fault_of_sqlx};
pub use leases::LeaseProgress;
pub use uploads::{NewUpload, UploadCounts, UploadRecord, UploadStatus};

/// A connection pool plus the dialect it speaks.
#[derive(Clone, Debug)]
pub struct Store {
    pool: AnyPool,
    dialect: Dialect,
    /// See [`Store::call`].
    call_deadline: Option<Duration>,
    sessions: Arc<SessionsValidSince>,
    /// On MySQL's protocol: does the server have `INSERT … RETURNING`
    /// (MariaDB 10.5 and later; MySQL has none)? Asked once, by the first
    /// batch (see [`Store::insert_returning`]).
    insert_returning: Arc<tokio::sync::OnceCell<bool>>,
}

/// Which pooled connections are still worth using: those opened after the
/// last outage that left sessions unusable. A demoted primary keeps its
/// sessions read-only, a server behind a failed-over address keeps the old
/// connections: after such an error, every connection opened before it is
/// closed when next taken from the pool, so the next try connects anew
/// (resolving the address again, reading the session defaults again).
#[derive(Debug)]
struct SessionsValidSince {
    epoch: Instant,
    /// Milliseconds since `epoch` of the last such error (0: none).
    since_ms: AtomicU64,
}

impl SessionsValidSince {
    fn new() -> Self {
        Self {
            epoch: Instant::now(),
            since_ms: AtomicU64::new(0),
        }
    }

    fn renew(&self) {
        let now = self.epoch.elapsed().as_millis() as u64;
        self.since_ms.store(now.max(1), Ordering::Relaxed);
    }

    /// Whether a connection of this age was opened after the last renewal.
    fn holds(&self, age: Duration) -> bool {
        let since = self.since_ms.load(Ordering::Relaxed);
        if since == 0 {
            return true;
        }
        let opened = self.epoch.elapsed().saturating_sub(age).as_millis() as u64;
        opened > since
    }
}

/// Is this `VERSION()` a MariaDB of 10.5 or later, which has `INSERT …
/// RETURNING`? MariaDB says `10.11.6-MariaDB-0+deb12u1`, or behind a
/// proxy for old clients `5.5.5-10.11.6-MariaDB`; MySQL says `8.0.36`.
fn mariadb_with_returning(version: &str) -> bool {
    if !version.contains("MariaDB") {
        return false;
    }
    let version = version.strip_prefix("5.5.5-").unwrap_or(version);
    let mut parts = version
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(major), Some(minor)) => (major, minor) >= (10, 5),
        _ => false,
    }
}

/// What every connection of a pool is told when it opens.
#[derive(Clone, Copy, Debug)]
struct SessionSettings {
    statement_timeout: Option<Duration>,
}

impl SessionSettings {
    fn from_config(config: &DatabaseConfig) -> Self {
        Self {
            statement_timeout: config.statement_timeout(),
        }
    }

    /// Whole seconds, at least one (MySQL's lock timeouts take no less).
    fn statement_timeout_secs(&self) -> Option<u64> {
        self.statement_timeout
            .map(|t| t.as_millis().div_ceil(1000).max(1) as u64)
    }

    fn statements(&self, dialect: Dialect) -> Vec<String> {
        let mut out = Vec::new();
        match dialect {
            Dialect::Sqlite => {
                // WAL lets readers and the one writer work at once;
                // busy_timeout makes concurrent writers wait, not fail, and
                // bounds how long (the lock timeout of SQLite).
                out.push("PRAGMA journal_mode = WAL".into());
                let busy = self
                    .statement_timeout
                    .map_or(i32::MAX as u128, |t| t.as_millis());
                out.push(format!("PRAGMA busy_timeout = {busy}"));
                // FULL: a commit is on disk before the consumer
                // acknowledges its entries, power loss included
                // (NORMAL would lose the last commits then).
                out.push("PRAGMA synchronous = FULL".into());
            }
            Dialect::MySql => {
                out.push(
                    "SET SESSION sql_mode = 'STRICT_ALL_TABLES,NO_ENGINE_SUBSTITUTION'".into(),
                );
                if let Some(secs) = self.statement_timeout_secs() {
                    // Row locks (InnoDB) and metadata locks (a table being
                    // altered or locked).
                    out.push(format!(
                        "SET SESSION innodb_lock_wait_timeout = {secs}, lock_wait_timeout = {secs}"
                    ));
                }
            }
            Dialect::Postgres => {
                if let Some(t) = self.statement_timeout {
                    let ms = t.as_millis();
                    out.push(format!("SET statement_timeout = {ms}"));
                    out.push(format!("SET lock_timeout = {ms}"));
                }
            }
        }
        out
    }
}

impl Store {
    /// Connect (lazily validated: the first query fails if the server is down).
    pub async fn connect(config: &DatabaseConfig) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let dialect = Dialect::from_url(&config.database_url)?;
        let url = match dialect {
            // Create the embedded database file on first use.
            Dialect::Sqlite if !config.database_url.contains("mode=") => {
                let sep = if config.database_url.contains('?') {
                    '&'
                } else {
                    '?'
                };
                format!("{}{sep}mode=rwc", config.database_url)
            }
            _ => config.database_url.clone(),
        };
        // sqlx reports a statement slower than a second at WARN with its
        // whole text: for a 1,000-row batch that is one line of tens of
        // kilobytes per slow batch. Batch timings are in the metrics and the
        // traces, so the statement text is kept for debug logs.
        let options = AnyConnectOptions::from_str(&url)?
            .log_statements(log::LevelFilter::Trace)
            .log_slow_statements(log::LevelFilter::Debug, Duration::from_secs(1));
        let session = SessionSettings::from_config(config);
        let sessions = Arc::new(SessionsValidSince::new());
        let valid = sessions.clone();
        let pool = AnyPoolOptions::new()
            .before_acquire(move |_conn, meta| {
                let keep = valid.holds(meta.age);
                Box::pin(async move { Ok(keep) })
            })
            .max_connections(config.db_max_connections.max(1))
            .acquire_timeout(Duration::from_millis(config.db_acquire_timeout_ms.max(1)))
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    for statement in session.statements(dialect) {
                        conn.execute(AssertSqlSafe(statement)).await?;
                    }
                    if dialect == Dialect::MySql
                        && let Some(secs) = session.statement_timeout_secs()
                    {
                        // MariaDB's statement timeout; MySQL has none for
                        // writes (its `max_execution_time` is for SELECT
                        // only) and answers "unknown variable", which the
                        // call deadline stands in for.
                        let mariadb = format!("SET SESSION max_statement_time = {secs}");
                        if let Err(e) = conn.execute(AssertSqlSafe(mariadb)).await {
                            tracing::debug!(error = %e, "no max_statement_time (MySQL): the call deadline bounds statements");
                        }
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await?;
        Ok(Self {
            pool,
            dialect,
            call_deadline: config.call_deadline(),
            sessions,
            insert_returning: Arc::new(tokio::sync::OnceCell::new()),
        })
    }

    /// Use MySQL's statements (no `INSERT … RETURNING`) on a MariaDB server
    /// too: how tests on MariaDB cover the path a MySQL server takes.
    pub fn without_insert_returning(self) -> Self {
        Self {
            insert_returning: Arc::new(tokio::sync::OnceCell::new_with(Some(false))),
            ..self
        }
    }

    /// Can a contacts insert say which rows it inserted? PostgreSQL and
    /// SQLite always can. On MySQL's protocol the server is asked once
    /// (`SELECT VERSION()`, on the caller's connection): MariaDB 10.5 and
    /// later can, MySQL cannot.
    pub(crate) async fn insert_returning(
        &self,
        conn: &mut sqlx::AnyConnection,
    ) -> Result<bool, StoreError> {
        if self.dialect != Dialect::MySql {
            return Ok(true);
        }
        let known = self
            .insert_returning
            .get_or_try_init(|| async {
                let version: String = sqlx::query_scalar("SELECT VERSION()")
                    .fetch_one(&mut *conn)
                    .await?;
                let returning = mariadb_with_returning(&version);
                tracing::info!(
                    server_version = %version,
                    insert_returning = returning,
                    "MySQL-protocol server: {}",
                    if returning {
                        "contacts inserts say which rows they inserted (INSERT … RETURNING)"
                    } else {
                        "no INSERT … RETURNING; every stored email of a batch is locked to learn its holder"
                    }
                );
                Ok::<_, StoreError>(returning)
            })
            .await?;
        Ok(*known)
    }

    /// Run one call to the database within the deadline of
    /// [`DatabaseConfig::call_deadline`]: a call the server never answers
    /// (a network path that drops packets, a server frozen mid-statement)
    /// ends as [`StoreError::CallTimedOut`], an outage, instead of holding
    /// its caller (and the caller's claim on stream entries) forever.
    pub async fn call<T>(
        &self,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let result = match self.call_deadline {
            Some(deadline) => tokio::time::timeout(deadline, call)
                .await
                .unwrap_or(Err(StoreError::CallTimedOut(deadline))),
            None => call.await,
        };
        if let Err(e) = &result
            && e.calls_for_new_sessions()
        {
            self.sessions.renew();
        }
        result
    }

    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Apply every pending migration of this dialect. Safe to run from
    /// several processes: sqlx takes the database's advisory lock.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        self.dialect.migrator().run(&self.pool).await?;
        Ok(())
    }

    /// The schema version this build expects.
    pub fn expected_schema_version(&self) -> i64 {
        self.dialect
            .migrator()
            .iter()
            .map(|m| m.version)
            .max()
            .unwrap_or(0)
    }

    /// The version applied to the database, if any.
    pub async fn schema_version(&self) -> Result<Option<i64>, StoreError> {
        let found: Result<Option<i64>, sqlx::Error> =
            sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations")
                .fetch_one(&self.pool)
                .await;
        match found {
            Ok(v) => Ok(v),
            Err(sqlx::Error::Database(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Refuse to run on a schema older than this build expects. Programs call
    /// this at start instead of migrating themselves, so many replicas never
    /// race to change the schema.
    pub async fn check_schema(&self) -> Result<(), StoreError> {
        let expected = self.expected_schema_version();
        let found = self.schema_version().await?;
        if found.is_some_and(|v| v >= expected) {
            Ok(())
        } else {
            Err(StoreError::SchemaNotReady { found, expected })
        }
    }

    /// A cheap round trip, for readiness probes.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    pub(crate) fn q(&self, portable: &str) -> AssertSqlSafe<String> {
        AssertSqlSafe(self.dialect.sql(portable))
    }

    /// Close the pool, waiting for connections in use to be returned.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::mariadb_with_returning;

    #[test]
    fn only_mariadb_from_10_5_is_taken_to_have_insert_returning() {
        for yes in [
            "10.5.0-MariaDB",
            "10.11.19-MariaDB-0+deb12u1",
            "5.5.5-10.11.6-MariaDB-log",
            "11.4.2-MariaDB-ubu2404",
        ] {
            assert!(mariadb_with_returning(yes), "{yes}");
        }
        for no in [
            "10.4.34-MariaDB",
            "5.5.5-10.3.39-MariaDB",
            "8.0.36",
            "8.4.0-commercial",
            "5.7.44-log",
            "MariaDB",
            "",
        ] {
            assert!(!mariadb_with_returning(no), "{no}");
        }
    }
}
