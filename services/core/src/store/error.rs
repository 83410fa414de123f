//! Errors at the database boundary, and what each is about: the database
//! as a whole (an outage to wait out) or the rows of the statement
//! ([`Fault`]).

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
    /// A call to the database did not end within its deadline (the
    /// connection hung: a network path that drops packets, a server that
    /// stopped answering). The call was abandoned, its connection dropped.
    #[error("the database did not answer within {0:?}")]
    CallTimedOut(std::time::Duration),
}

impl StoreError {
    /// What the error is about: the database as a whole, or the rows of
    /// the statement (see [`Fault`]).
    pub fn fault(&self) -> Fault {
        match self {
            StoreError::Sqlx(e) => fault_of_sqlx(e),
            // A copy of the batch is being stored by another consumer right
            // now: trying again finds its trace.
            StoreError::ConcurrentDelivery(_) => Fault::Outage,
            StoreError::SchemaNotReady { .. } | StoreError::Migrate(_) => Fault::Outage,
            StoreError::UnsupportedUrl(_) => Fault::Outage,
            StoreError::CallTimedOut(_) => Fault::Outage,
        }
    }

    /// An outage after which the pool's connections should not be used
    /// again: every outage but waits on other transactions (lock timeouts,
    /// deadlocks, a busy SQLite file), where the session is fine and only
    /// had to wait.
    pub fn calls_for_new_sessions(&self) -> bool {
        if self.fault() != Fault::Outage {
            return false;
        }
        let StoreError::Sqlx(sqlx::Error::Database(db)) = self else {
            // No free connection in time says the pool is busy (lock waits
            // hold its connections), not that they are broken.
            return !matches!(
                self,
                StoreError::ConcurrentDelivery(_) | StoreError::Sqlx(sqlx::Error::PoolTimedOut)
            );
        };
        if let Some(e) = db.try_downcast_ref::<MySqlDatabaseError>() {
            use mysql_errors::*;
            return !matches!(
                e.number(),
                ER_LOCK_WAIT_TIMEOUT | ER_LOCK_DEADLOCK | ER_STATEMENT_TIMEOUT | ER_QUERY_TIMEOUT
            );
        }
        if db.try_downcast_ref::<SqliteError>().is_some() {
            let code: i32 = db.code().and_then(|c| c.parse().ok()).unwrap_or_default();
            return !matches!(code & 0xff, sqlite_codes::BUSY | sqlite_codes::LOCKED);
        }
        let code = db.code();
        let code = code.as_deref().unwrap_or("");
        // Transaction rollback (deadlock, serialization), lock timeout,
        // statement timeout.
        !(code.starts_with("40") || code == "55P03" || code == "57014")
    }

    /// The database answered the call, if only with an error: not a call
    /// that ran out its deadline or found no connection in time.
    pub fn was_answered(&self) -> bool {
        !matches!(
            self,
            StoreError::CallTimedOut(_) | StoreError::Sqlx(sqlx::Error::PoolTimedOut)
        )
    }

    /// True for errors that say nothing about the data: the database is
    /// unreachable, refuses this client, is read-only, out of resources,
    /// timed out, or a transaction lost a deadlock. Retrying the same work
    /// later is the right answer.
    pub fn is_transient(&self) -> bool {
        self.fault() == Fault::Outage
    }

    /// A short, stable name for the error's kind, for metrics and logs:
    /// the SQLSTATE or error number where the database gave one.
    pub fn code(&self) -> String {
        match self {
            // MySQL's error number says more than its SQLSTATE (`HY000`).
            StoreError::Sqlx(sqlx::Error::Database(db)) => {
                match db.try_downcast_ref::<MySqlDatabaseError>() {
                    Some(e) => e.number().to_string(),
                    None => db
                        .code()
                        .map(|c| c.into_owned())
                        .unwrap_or_else(|| "database".into()),
                }
            }
            StoreError::Sqlx(sqlx::Error::Io(_)) => "io".into(),
            StoreError::Sqlx(sqlx::Error::PoolTimedOut) => "pool_timed_out".into(),
            StoreError::CallTimedOut(_) => "call_timed_out".into(),
            StoreError::ConcurrentDelivery(_) => "concurrent_delivery".into(),
            StoreError::Sqlx(_) => "client".into(),
            StoreError::SchemaNotReady { .. } | StoreError::Migrate(_) => "schema".into(),
            StoreError::UnsupportedUrl(_) => "config".into(),
        }
    }
}

/// What a database error is about, which decides what the consumer does
/// with the rows of the statement that met it.
///
/// Decided by cause, from each dialect's error classes (PostgreSQL's
/// SQLSTATE classes, MySQL's SQLSTATE and error numbers, SQLite's primary
/// result codes), never from message text, which varies across versions
/// and locales.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// About the database, the connection or the statement as a whole:
    /// connection, authentication, authorization, read-only, resources,
    /// timeouts, lock waits and deadlocks, missing objects, shutdown. The
    /// rows are not at fault: wait it out and try again.
    Outage,
    /// About a value or a constraint: the database refuses some row of
    /// the statement. Isolating the row says which.
    Row,
    /// The database did not say which. A row is blamed only when rows
    /// beside it were stored by the same database meanwhile.
    Unknown,
}

/// See [`StoreError::fault`].
pub fn fault_of_sqlx(e: &sqlx::Error) -> Fault {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Configuration(_)
        | sqlx::Error::BeginFailed
        | sqlx::Error::InvalidSavePointStatement => Fault::Outage,
        // The statement's result does not fit this build: the schema moved
        // under the program (a migration, a renamed column).
        sqlx::Error::ColumnNotFound(_)
        | sqlx::Error::ColumnIndexOutOfBounds { .. }
        | sqlx::Error::ColumnDecode { .. }
        | sqlx::Error::TypeNotFound { .. } => Fault::Outage,
        sqlx::Error::Database(db) => fault_of_database_error(db.as_ref()),
        _ => Fault::Unknown,
    }
}

fn fault_of_database_error(db: &dyn DatabaseError) -> Fault {
    if let Some(e) = db.try_downcast_ref::<MySqlDatabaseError>() {
        return mysql_fault(e.number(), e.code());
    }
    if db.try_downcast_ref::<SqliteError>().is_some() {
        // The extended result code, as a number.
        let code: i32 = db.code().and_then(|c| c.parse().ok()).unwrap_or_default();
        // SQLite gives a missing table or column no code of its own
        // (SQLITE_ERROR, like a function's error): its message, fixed in
        // SQLite's source, is the only sign of a schema moved under us.
        let message = db.message();
        if code & 0xff == 1
            && (message.starts_with("no such table") || message.starts_with("no such column"))
        {
            return Fault::Outage;
        }
        return sqlite_fault(code);
    }
    postgres_fault(db.code().as_deref().unwrap_or(""))
}

/// PostgreSQL, by SQLSTATE class (the first two characters; appendix A of
/// its manual).
fn postgres_fault(sqlstate: &str) -> Fault {
    // A deferred constraint that fails at commit: about a row, in the
    // transaction-rollback class.
    if sqlstate == "40002" {
        return Fault::Row;
    }
    match sqlstate.get(..2).unwrap_or("") {
        // Data exception, integrity constraint violation, cardinality,
        // triggered data change, an exception raised by a trigger or a
        // function (PL/pgSQL `RAISE`, external routines), and program limits
        // (54000: an index row too large for its value).
        "22" | "23" | "21" | "27" | "P0" | "38" | "39" | "54" => Fault::Row,
        // Connection exception, invalid authorization, invalid transaction
        // state (25006: read-only transaction), insufficient resources (disk
        // full, out of memory, too many connections), object not in
        // prerequisite state (55P03: lock timeout), operator intervention
        // (57014: statement timeout; shutdowns), system error, transaction
        // rollback (serialization failure, deadlock), syntax or access rule
        // (42501: permission denied; 42P01: undefined table), invalid
        // catalog or schema name, feature not supported, internal error,
        // configuration file error.
        "08" | "28" | "25" | "53" | "55" | "57" | "58" | "40" | "42" | "3D" | "3F" | "0A"
        | "XX" | "F0" | "2D" | "26" | "0L" | "0P" | "HV" => Fault::Outage,
        _ => Fault::Unknown,
    }
}

/// MySQL/MariaDB error numbers that SQLSTATE alone does not classify (a
/// lock wait timeout, a read-only server and a rejected string value all
/// share the catch-all `HY000`).
mod mysql_errors {
    /// The server runs with `--read-only` / `--super-read-only`.
    pub const ER_OPTION_PREVENTS_STATEMENT: u16 = 1290;
    pub const ER_READ_ONLY_MODE: u16 = 1836;
    pub const ER_LOCK_WAIT_TIMEOUT: u16 = 1205;
    pub const ER_LOCK_DEADLOCK: u16 = 1213;
    /// A disk or a table is full; the server ran out of memory.
    pub const ER_DISK_FULL: u16 = 1021;
    pub const ER_RECORD_FILE_FULL: u16 = 1114;
    pub const ER_OUTOFMEMORY: u16 = 1037;
    pub const ER_OUT_OF_SORTMEMORY: u16 = 1038;
    pub const ER_OUT_OF_RESOURCES: u16 = 1041;
    /// Shutdown in progress; the connection was killed; a query
    /// interrupted; MariaDB's `max_statement_time` and MySQL's
    /// `max_execution_time` exceeded; disconnected for inactivity.
    pub const ER_SERVER_SHUTDOWN: u16 = 1053;
    pub const ER_QUERY_INTERRUPTED: u16 = 1317;
    pub const ER_CONNECTION_KILLED: u16 = 1927;
    pub const ER_STATEMENT_TIMEOUT: u16 = 1969;
    pub const ER_QUERY_TIMEOUT: u16 = 3024;
    pub const ER_CLIENT_INTERACTION_TIMEOUT: u16 = 4031;
    /// InnoDB is read-only; the storage engine failed (errno 28: disk
    /// full); too many concurrent transactions.
    pub const ER_INNODB_READ_ONLY: u16 = 1874;
    pub const ER_GET_ERRNO: u16 = 1030;
    pub const ER_TOO_MANY_CONCURRENT_TRXS: u16 = 1637;
    /// A commit or rollback failed; too many connections.
    pub const ER_ERROR_DURING_COMMIT: u16 = 1180;
    pub const ER_ERROR_DURING_ROLLBACK: u16 = 1181;
    pub const ER_CON_COUNT_ERROR: u16 = 1040;
    /// A value the column refuses: a string not valid in its character
    /// set, a value out of range, a CHECK constraint (MySQL, MariaDB), a
    /// trigger's `SIGNAL`.
    pub const ER_TRUNCATED_WRONG_VALUE_FOR_FIELD: u16 = 1366;
    pub const ER_WARN_DATA_OUT_OF_RANGE: u16 = 1264;
    pub const ER_CHECK_CONSTRAINT_VIOLATED: u16 = 3819;
    pub const ER_CONSTRAINT_FAILED: u16 = 4025;
    pub const ER_SIGNAL_EXCEPTION: u16 = 1644;
    /// A statement larger than `max_allowed_packet`: a batch too big (the
    /// split makes it smaller) or, alone, a row too big. SQLSTATE 08S01
    /// would call it a connection error.
    pub const ER_NET_PACKET_TOO_LARGE: u16 = 1153;
}

/// MySQL/MariaDB: the error number first, then the SQLSTATE class.
fn mysql_fault(number: u16, sqlstate: Option<&str>) -> Fault {
    use mysql_errors::*;
    match number {
        ER_OPTION_PREVENTS_STATEMENT
        | ER_READ_ONLY_MODE
        | ER_LOCK_WAIT_TIMEOUT
        | ER_LOCK_DEADLOCK
        | ER_DISK_FULL
        | ER_RECORD_FILE_FULL
        | ER_OUTOFMEMORY
        | ER_OUT_OF_SORTMEMORY
        | ER_OUT_OF_RESOURCES
        | ER_SERVER_SHUTDOWN
        | ER_QUERY_INTERRUPTED
        | ER_CONNECTION_KILLED
        | ER_STATEMENT_TIMEOUT
        | ER_QUERY_TIMEOUT
        | ER_CLIENT_INTERACTION_TIMEOUT
        | ER_ERROR_DURING_COMMIT
        | ER_ERROR_DURING_ROLLBACK
        | ER_CON_COUNT_ERROR
        | ER_INNODB_READ_ONLY
        | ER_GET_ERRNO
        | ER_TOO_MANY_CONCURRENT_TRXS => return Fault::Outage,
        ER_TRUNCATED_WRONG_VALUE_FOR_FIELD
        | ER_WARN_DATA_OUT_OF_RANGE
        | ER_CHECK_CONSTRAINT_VIOLATED
        | ER_CONSTRAINT_FAILED
        | ER_SIGNAL_EXCEPTION
        | ER_NET_PACKET_TOO_LARGE => return Fault::Row,
        _ => {}
    }
    match sqlstate.and_then(|s| s.get(..2)).unwrap_or("") {
        // Data exception, integrity constraint violation, a trigger's
        // `SIGNAL SQLSTATE '45000'` (the class for user-defined errors).
        "22" | "23" | "45" => Fault::Row,
        // Connection, access denied (28000; 42000 holds `INSERT command
        // denied` 1142 and the syntax errors, which are about the
        // statement), read-only transaction (25006), missing table or
        // column (42S02, 42S22), unknown database, deadlock, interrupted.
        "08" | "28" | "42" | "25" | "3D" | "40" | "70" => Fault::Outage,
        // `HY000` (the catch-all) among them, for numbers not listed above.
        _ => Fault::Unknown,
    }
}

/// SQLite primary result codes (the low byte of the extended code).
mod sqlite_codes {
    pub const PERM: i32 = 3;
    pub const ABORT: i32 = 4;
    pub const BUSY: i32 = 5;
    pub const LOCKED: i32 = 6;
    pub const NOMEM: i32 = 7;
    pub const READONLY: i32 = 8;
    pub const INTERRUPT: i32 = 9;
    pub const IOERR: i32 = 10;
    pub const CORRUPT: i32 = 11;
    pub const FULL: i32 = 13;
    pub const CANTOPEN: i32 = 14;
    pub const PROTOCOL: i32 = 15;
    pub const SCHEMA: i32 = 17;
    pub const TOOBIG: i32 = 18;
    /// Constraints, a trigger's `RAISE(ABORT, …)` included
    /// (`SQLITE_CONSTRAINT_TRIGGER`).
    pub const CONSTRAINT: i32 = 19;
    pub const MISMATCH: i32 = 20;
    pub const AUTH: i32 = 23;
    pub const RANGE: i32 = 25;
    pub const NOTADB: i32 = 26;
}

/// SQLite: `SQLITE_ERROR` is both "no such table" and a function's error,
/// so it says nothing of its own ([`Fault::Unknown`]).
fn sqlite_fault(extended: i32) -> Fault {
    use sqlite_codes::*;
    match extended & 0xff {
        CONSTRAINT | MISMATCH | TOOBIG | RANGE => Fault::Row,
        PERM | ABORT | BUSY | LOCKED | NOMEM | READONLY | INTERRUPT | IOERR | CORRUPT | FULL
        | CANTOPEN | PROTOCOL | SCHEMA | AUTH | NOTADB => Fault::Outage,
        // SQLITE_ERROR (1) among them.
        _ => Fault::Unknown,
    }
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
        assert_eq!(fault_of_sqlx(&busy), Fault::Outage, "{busy}");
        let duplicate = holder
            .execute("INSERT INTO t VALUES (1)")
            .await
            .unwrap_err();
        assert_eq!(fault_of_sqlx(&duplicate), Fault::Row, "{duplicate}");
        let missing = holder
            .execute("INSERT INTO nowhere VALUES (1)")
            .await
            .unwrap_err();
        assert_eq!(fault_of_sqlx(&missing), Fault::Outage, "{missing}");

        drop((holder, waiter));
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn postgres_errors_about_the_database_are_outages_and_refused_values_are_rows() {
        for outage in [
            "25006", // read-only transaction (a failover's old primary)
            "42501", // permission denied (REVOKE)
            "28P01", // password authentication failed (a rotation)
            "53100", // disk full
            "57014", // statement timeout
            "55P03", // lock timeout
            "42P01", // the table was renamed
            "57P01", // admin shutdown
            "08006", // connection failure
            "40P01", // deadlock
        ] {
            assert_eq!(postgres_fault(outage), Fault::Outage, "{outage}");
        }
        for row in [
            "23505", "23514", "22001", "22P02", "P0001", "54000", "40002",
        ] {
            assert_eq!(postgres_fault(row), Fault::Row, "{row}");
        }
        assert_eq!(postgres_fault(""), Fault::Unknown);
    }

    #[test]
    fn mysql_errors_are_judged_by_number_before_sqlstate() {
        let hy = || Some("HY000");
        // INSERT command denied (42000), read-only (HY000), lock wait.
        assert_eq!(mysql_fault(1142, Some("42000")), Fault::Outage);
        assert_eq!(mysql_fault(1290, hy()), Fault::Outage);
        assert_eq!(mysql_fault(1792, Some("25006")), Fault::Outage);
        assert_eq!(mysql_fault(1205, hy()), Fault::Outage);
        assert_eq!(mysql_fault(1146, Some("42S02")), Fault::Outage);
        // An invalid string value is HY000 too, and is about the row.
        assert_eq!(mysql_fault(1366, hy()), Fault::Row);
        // A trigger's SIGNAL, a constraint.
        assert_eq!(mysql_fault(1644, Some("45000")), Fault::Row);
        assert_eq!(mysql_fault(1062, Some("23000")), Fault::Row);
        assert_eq!(mysql_fault(1406, Some("22001")), Fault::Row);
        // Too big a statement: split, not waited out.
        assert_eq!(mysql_fault(1153, Some("08S01")), Fault::Row);
        assert_eq!(mysql_fault(1874, hy()), Fault::Outage);
    }

    #[test]
    fn sqlite_result_codes_are_judged_by_their_primary_code() {
        // SQLITE_CONSTRAINT_TRIGGER (a trigger's RAISE(ABORT)), SQLITE_BUSY_SNAPSHOT.
        assert_eq!(sqlite_fault(1811), Fault::Row);
        assert_eq!(sqlite_fault(517), Fault::Outage);
        assert_eq!(sqlite_fault(8), Fault::Outage);
        assert_eq!(sqlite_fault(13), Fault::Outage);
        assert_eq!(sqlite_fault(1), Fault::Unknown);
    }
}
