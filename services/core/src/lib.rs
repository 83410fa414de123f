//! rowpipe-core: everything the two rowpipe programs share.
//!
//! rowpipe moves rows of third-party CSV files into a relational table with one
//! record per email address:
//!
//! ```text
//!  upload (HTTP) ──XADD──▶ Redis Stream ──XREADGROUP──▶ consumer ×N ──▶ store (SQL)
//! ```
//!
//! # Layout
//!
//! * [`config`]: the environment contract shared by every program (`REDIS_URL`,
//!   `DATABASE_URL`, stream and group names, telemetry switches).
//! * [`row`]: what a row is once it left the CSV file: [`row::RowFields`], and
//!   how header names map to the email and name columns ([`row::ColumnMap`]).
//! * [`validate`]: the rules a field is judged by: the email policy,
//!   normalization of the uniqueness key, the name, and
//!   [`validate::RejectReason`] with every reason code.
//! * [`suggest`]: typo suggestions for a rejected address's domain
//!   (`gmial.com` → `gmail.com`), from the data files `data/common_mail_domains.txt`
//!   and `data/tlds.txt`.
//! * [`deliverability`]: what the consumer's DNS check found about an
//!   accepted row's domain ([`deliverability::DomainVerdict`]) and what it
//!   does to the row (rejected as `no_mail_domain`, or stored `unverified`).
//! * [`verdict`]: the verdict on a row ([`verdict::RowVerdict`],
//!   [`verdict::JudgedRow`]) and [`verdict::judge`], which reaches it from a
//!   stream entry.
//! * [`stream`]: the Redis side: connections and the group-wide operations
//!   both programs need (`stream/mod.rs`), the on-the-wire
//!   [`stream::StreamEntry`] format ([`stream::entry`]), one consumer's side
//!   of the group protocol ([`stream::group`]: read, claim, reclaim,
//!   acknowledge, leave), the dead-letter format ([`stream::dead_letter`]),
//!   and the consumer's own `XREADGROUP` reader ([`stream::reader`]).
//! * [`store`]: the database side: the [`store::Store`] pool and its
//!   migrations, [`store::Dialect`] (placeholders, quoting),
//!   [`store::StoreError`] with which errors are transient, upload records
//!   ([`store::uploads`]), and the batch insert ([`store::batch`]: the
//!   algorithm, its encoding, and each dialect's statements in its own file).
//! * [`telemetry`]: logs, OpenTelemetry traces and Prometheus metrics set-up.
//! * [`shutdown`]: the SIGTERM/SIGINT future threaded through every task.

pub mod config;
pub mod deliverability;
pub mod row;
pub mod shutdown;
pub mod store;
pub mod stream;
pub mod suggest;
pub mod telemetry;
pub mod validate;
pub mod verdict;

/// Milliseconds since the Unix epoch; the portable timestamp every table uses.
pub fn now_ms() -> i64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
