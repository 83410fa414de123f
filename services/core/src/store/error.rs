//! Errors at the database boundary, and which of them are worth retrying.
//!
//! Whether an error is transient is decided from the database's own error
//! codes, never from its message text, which varies across versions and
//! locales.

use sqlx::error::DatabaseError;
use sqlx::mysql::MySqlDatabaseError;
use sqlx::sqlite::SqliteError;

/// Errors at the database boundary.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("unsupported DATABASE_URL {0}: use postgres://, mysql:// or sqlite://")]
    UnsupportedUrl(String),
    #[error(
        "the database schema is not migrated (found version {found:?}, expected {expected}); run `rowpipe migrate` first"
    )]
    SchemaNotReady { found: Option<i64>, expected: i64 },
    #[error("database error: {0}")]
    Sqlx(#[from] sqlx::Error),
    /// A ledger insert met the same (upload, row) stored by another
    /// transaction since the batch looked: another consumer held a copy of
    /// the entry. Retried by [`Store::apply_batch`](super::Store::apply_batch);
    /// seen by callers only when that keeps happening.
    #[error("a row of this batch was stored by another consumer at the same time: {0}")]
    ConcurrentDelivery(sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

impl StoreError {
    /// True for errors that say nothing about the data: the database is
    /// unreachable, overloaded, or a transaction lost a deadlock. Retrying the
    /// same work later is the right answer.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Sqlx(e) => is_transient_sqlx(e),
            _ => false,
        }
    }
}

/// See [`StoreError::is_transient`].
pub fn is_transient_sqlx(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => is_transient_database_error(db.as_ref()),
        _ => false,
    }
}

/// MySQL/MariaDB error numbers: `innodb_lock_wait_timeout` ran out; the
/// transaction was chosen as a deadlock's victim (SQLSTATE 40001).
const ER_LOCK_WAIT_TIMEOUT: u16 = 1205;
const ER_LOCK_DEADLOCK: u16 = 1213;

/// SQLite result codes: the database file is locked by another connection
/// (`SQLITE_BUSY`, with its extended codes such as `SQLITE_BUSY_SNAPSHOT`,
/// 517, in the higher bits); a table is locked within this connection's
/// shared cache (`SQLITE_LOCKED`, `SQLITE_LOCKED_SHAREDCACHE`).
const SQLITE_BUSY: i32 = 5;
const SQLITE_LOCKED: i32 = 6;
const SQLITE_LOCKED_SHAREDCACHE: i32 = 262;

fn is_transient_database_error(db: &dyn DatabaseError) -> bool {
    if let Some(e) = db.try_downcast_ref::<MySqlDatabaseError>() {
        // MySQL's SQLSTATE is too coarse (a lock wait timeout is the
        // catch-all HY000); its error number says what happened.
        return matches!(e.number(), ER_LOCK_WAIT_TIMEOUT | ER_LOCK_DEADLOCK);
    }
    if db.try_downcast_ref::<SqliteError>().is_some() {
        // The extended result code, as a number.
        let code: i32 = db.code().and_then(|c| c.parse().ok()).unwrap_or_default();
        return code & 0xff == SQLITE_BUSY
            || matches!(code, SQLITE_LOCKED | SQLITE_LOCKED_SHAREDCACHE);
    }
    // PostgreSQL's SQLSTATE: serialization failure, deadlock, admin
    // shutdown, crash shutdown, cannot connect now, too many connections.
    matches!(
        db.code().as_deref(),
        Some("40001" | "40P01" | "57P01" | "57P02" | "57P03" | "53300")
    )
}

#[cfg(test)]
mod tests {
    use sqlx::{Connection, Executor, SqliteConnection};

    use super::*;

    #[tokio::test]
    async fn a_busy_sqlite_database_is_transient_a_unique_violation_is_not() {
        let path = std::env::temp_dir().join(format!("rowpipe-busy-{}.db", uuid::Uuid::new_v4()));
        let url = format!("sqlite://{}?mode=rwc", path.display());
        let mut holder = SqliteConnection::connect(&url).await.unwrap();
        let mut waiter = SqliteConnection::connect(&url).await.unwrap();
        waiter.execute("PRAGMA busy_timeout = 0").await.unwrap();
        holder
            .execute("CREATE TABLE t (k INTEGER PRIMARY KEY)")
            .await
            .unwrap();
        holder.execute("INSERT INTO t VALUES (1)").await.unwrap();
        holder.execute("BEGIN IMMEDIATE").await.unwrap();

        let busy = waiter.execute("BEGIN IMMEDIATE").await.unwrap_err();
        assert!(is_transient_sqlx(&busy), "{busy}");
        let duplicate = holder
            .execute("INSERT INTO t VALUES (1)")
            .await
            .unwrap_err();
        assert!(!is_transient_sqlx(&duplicate), "{duplicate}");

        drop((holder, waiter));
        let _ = std::fs::remove_file(&path);
    }
}
