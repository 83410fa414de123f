//! SQLite's own statements: one writer at a time, taken at the start.

use super::select_contacts;
use crate::store::Dialect;

/// Take the write lock up front: a deferred transaction that reads first
/// and writes later can fail with `SQLITE_BUSY` instead of waiting.
pub(super) const BEGIN: &str = "BEGIN IMMEDIATE";

/// Step 3b: the stored rows, unlocked: the transaction holds the only
/// write lock already ([`BEGIN`]), and SQLite has no `FOR UPDATE`.
pub(super) fn lock_contacts(emails: usize) -> String {
    select_contacts(Dialect::Sqlite, emails)
}
