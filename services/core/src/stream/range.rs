//! What is left in the stream of a range of entry ids: the question loss
//! detection asks about one upload.
//!
//! An upload's entries all lie between two ids (its first and last `XADD`,
//! or the stream's tip when its instance died before saying). Whether any of
//! them can still be processed is two cheap questions, each O(log n) in the
//! stream: is an entry of the range still undelivered to the group (after
//! its last-delivered id), or still pending in it? When both answers are
//! no, every entry of the range that will ever be processed has been, and
//! rows of the upload that left no trace in the ledgers were lost. Other
//! uploads' entries in the range can only delay that answer, never make it
//! wrong. The range of an upload whose instance died ends at the stream's
//! tip ([`super::tip`]).

use crate::stream::Connection;
use redis::{AsyncTypedCommands, RedisResult};

use super::{is_missing_key, parse_id};

/// True if an entry with an id in `[first, last]` (`first` `None`: from the
/// start) is still undelivered to `group` or pending in it. A missing
/// stream or group is created at `0` first (see [`super::ensure_group`]):
/// then nothing of the range is left.
pub async fn holds_range(
    con: &mut Connection,
    stream: &str,
    group: &str,
    first: Option<&str>,
    last: &str,
) -> RedisResult<bool> {
    let groups = match con.xinfo_groups(stream).await {
        Ok(g) => g.groups,
        Err(e) if is_missing_key(&e) => Vec::new(),
        Err(e) => return Err(e),
    };
    let Some(last_id) = parse_id(last) else {
        return Ok(false);
    };
    let first_id = first.and_then(parse_id).unwrap_or((0, 0));
    if first_id > last_id {
        return Ok(false);
    }
    let Some(info) = groups.into_iter().find(|g| g.name == group) else {
        // A group created now starts at `0`: every entry still in the
        // stream is undelivered to it, so the range holds whatever the
        // stream still has of it.
        super::ensure_group(con, stream, group).await?;
        let start = format!("{}-{}", first_id.0, first_id.1);
        let left = con.xrange_count(stream, &start, last, 1usize).await?;
        return Ok(!left.ids.is_empty());
    };
    // Undelivered: after the group's last-delivered id, within the range.
    let delivered = parse_id(&info.last_delivered_id).unwrap_or((0, 0));
    if delivered < last_id {
        let start = if delivered >= first_id {
            format!("({}", info.last_delivered_id)
        } else {
            format!("{}-{}", first_id.0, first_id.1)
        };
        let undelivered = con.xrange_count(stream, &start, last, 1usize).await?;
        if !undelivered.ids.is_empty() {
            return Ok(true);
        }
    }
    // Pending: delivered to some consumer, not acknowledged.
    if info.pending == 0 {
        return Ok(false);
    }
    let start = format!("{}-{}", first_id.0, first_id.1);
    let pending = con
        .xpending_count(stream, group, &start, last, 1usize)
        .await?;
    Ok(!pending.ids.is_empty())
}
