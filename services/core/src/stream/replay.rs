//! Reading the dead-letter stream back ([`list`]) and sending its rows
//! through the pipeline again ([`replay`]), once what failed them is fixed
//! (a trigger dropped, a column widened, an upload's record restored).
//!
//! A replay writes each letter's `entry` back to the main stream as a new
//! entry, then deletes the letter: a replayed row is processed by the
//! normal path, and the transaction that stores it also removes its
//! `processing_failed` record (see [`crate::store::Store::apply_batch`]),
//! so its upload's counts move from rejected to inserted or duplicate. A
//! replay stopped between the two steps leaves the letter in place: running
//! it again writes the row twice, which the store's exactly-once rule makes
//! harmless. A row that fails again is dead-lettered again.

use std::collections::HashMap;

use crate::stream::Connection;
use redis::{AsyncTypedCommands, RedisResult, Value};

use super::dead_letter::{
    Cause, F_CAUSE, F_DEAD_LETTERED_BY, F_ENTRY, F_ERROR, F_FIELDS, F_SOURCE_ID,
};
use super::entry::{F_ROW_NUMBER, F_UPLOAD_ID};

/// Letters read per `XRANGE`.
const PAGE: usize = 500;

/// One letter read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Letter {
    /// Its id in the dead-letter stream.
    pub id: String,
    /// The entry's id in the main stream.
    pub source_id: String,
    /// `None` for letters written before causes were recorded.
    pub cause: Option<Cause>,
    pub error: String,
    pub upload_id: Option<String>,
    pub row_number: Option<i64>,
    pub fields: Option<String>,
    /// The entry to write back; `None` for undecodable entries (and for
    /// letters written before the entry was kept), which cannot be
    /// replayed.
    pub entry: Option<Vec<(String, String)>>,
    pub dead_lettered_by: String,
}

impl Letter {
    fn from_map(id: String, map: &HashMap<String, Value>) -> Self {
        let text = |key: &str| -> Option<String> {
            match map.get(key)? {
                Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
                Value::SimpleString(s) => Some(s.clone()),
                _ => None,
            }
        };
        Self {
            id,
            source_id: text(F_SOURCE_ID).unwrap_or_default(),
            cause: text(F_CAUSE).as_deref().and_then(Cause::from_code),
            error: text(F_ERROR).unwrap_or_default(),
            upload_id: text(F_UPLOAD_ID),
            row_number: text(F_ROW_NUMBER).and_then(|n| n.parse().ok()),
            fields: text(F_FIELDS),
            entry: text(F_ENTRY).and_then(|e| serde_json::from_str(&e).ok()),
            dead_lettered_by: text(F_DEAD_LETTERED_BY).unwrap_or_default(),
        }
    }
}

/// Which letters a command is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selection {
    All,
    Upload(String),
}

impl Selection {
    pub fn matches(&self, letter: &Letter) -> bool {
        match self {
            Selection::All => true,
            Selection::Upload(id) => letter.upload_id.as_deref() == Some(id.as_str()),
        }
    }
}

/// Reads a dead-letter stream a page at a time, oldest first.
struct Pages<'a> {
    dead_stream: &'a str,
    /// Where the next page starts: `-`, then just past the last letter read.
    start: String,
    done: bool,
}

impl<'a> Pages<'a> {
    fn new(dead_stream: &'a str) -> Self {
        Self {
            dead_stream,
            start: "-".to_string(),
            done: false,
        }
    }

    /// The next page's letters; empty once the stream is read.
    async fn next(&mut self, con: &mut Connection) -> RedisResult<Vec<Letter>> {
        if self.done {
            return Ok(Vec::new());
        }
        let page = con
            .xrange_count(self.dead_stream, &self.start, "+", PAGE)
            .await?;
        self.done = page.ids.len() < PAGE;
        if let Some(last) = page.ids.last() {
            self.start = format!("({}", last.id);
        }
        Ok(page
            .ids
            .into_iter()
            .map(|e| Letter::from_map(e.id, &e.map))
            .collect())
    }
}

/// Call `visit` with each selected letter of `dead_stream`, oldest first.
/// Returns how many were visited.
pub async fn list(
    con: &mut Connection,
    dead_stream: &str,
    selection: &Selection,
    mut visit: impl FnMut(&Letter),
) -> RedisResult<usize> {
    let mut visited = 0;
    let mut pages = Pages::new(dead_stream);
    loop {
        let letters = pages.next(con).await?;
        if letters.is_empty() {
            return Ok(visited);
        }
        for letter in letters.iter().filter(|l| selection.matches(l)) {
            visit(letter);
            visited += 1;
        }
    }
}

/// What a [`replay`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplayReport {
    /// Letters written back to the main stream and deleted.
    pub replayed: usize,
    /// Selected letters without an entry to write back (undecodable
    /// entries): left in place.
    pub not_replayable: usize,
}

/// Write every selected letter's entry back to `stream` and delete the
/// letter from `dead_stream` (see the module docs). `progress` is called
/// after each page with the report so far.
pub async fn replay(
    con: &mut Connection,
    shards: &super::shards::Shards,
    dead_stream: &str,
    selection: &Selection,
    mut progress: impl FnMut(&ReplayReport),
) -> RedisResult<ReplayReport> {
    let mut report = ReplayReport::default();
    let mut pages = Pages::new(dead_stream);
    loop {
        let letters = pages.next(con).await?;
        if letters.is_empty() {
            return Ok(report);
        }
        for letter in letters.iter().filter(|l| selection.matches(l)) {
            let Some(entry) = &letter.entry else {
                report.not_replayable += 1;
                continue;
            };
            // Back to the shard its row belongs to, as the upload routes.
            let email = entry
                .iter()
                .find(|(name, _)| name == super::entry::F_EMAIL)
                .map(|(_, value)| value.as_str());
            let stream = shards.key(shards.for_raw_email(email));
            con.xadd(stream, "*", entry).await?;
            con.xdel(dead_stream, &[letter.id.as_str()]).await?;
            report.replayed += 1;
        }
        progress(&report);
    }
}
