//! One member's side of a consumer group: everything a consumer says to
//! Redis about the entries it reads, holds, hands back or gives up on.
//!
//! | operation | command | when |
//! |---|---|---|
//! | [`ConsumerGroup::read`] | `XREADGROUP … >` | every batch, over the dedicated connection ([`super::reader`]) |
//! | [`ConsumerGroup::ack`] | `XACK` | after the batch's commit |
//! | [`ConsumerGroup::keep_claimed`] | `XCLAIM … JUSTID` | while a batch is in hand |
//! | [`ConsumerGroup::reclaim`] | `XAUTOCLAIM` | on a reclaim turn, for entries of consumers that died |
//! | [`ConsumerGroup::delivery_counts`] | `XPENDING … consumer` | for reclaimed entries and rows that keep failing |
//! | [`ConsumerGroup::dead_letter`] | `XADD` to the dead-letter stream | an entry given up on ([`super::dead_letter`]) |
//! | [`ConsumerGroup::leave`] | `XPENDING`, `XGROUP DELCONSUMER` | at shutdown, if nothing is pending |
//!
//! The group and the stream are created by [`super::ensure_group`] (both
//! programs need that), and again when they vanished from under a running
//! consumer: by [`ConsumerGroup::keep_claimed`] itself (it runs beside the
//! loop), and by [`ConsumerGroup::create`] for the consumer's loop, which
//! heals whatever command of a turn met `NOGROUP`, reads included.
//!
//! What to do with the replies (when to retry, when to give up, what to
//! count) is the consumer's business, not this module's: each call sends
//! the commands the table names, and its error is the one Redis gave.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;

use crate::stream::Connection;
use redis::streams::StreamAutoClaimOptions;
use redis::{AsyncTypedCommands, RedisResult};

use super::RawEntry;
use super::dead_letter::DeadLetter;
use super::reader::{GroupReader, ReadError, ReadGroup};

/// The names that identify a member: its stream, group and consumer.
#[derive(Clone, Debug)]
struct Member {
    stream: String,
    group: String,
    consumer: String,
}

/// A consumer of a group, with its two connections: the dedicated one for
/// blocking reads and the shared one for everything else.
pub struct ConsumerGroup {
    member: Member,
    con: Connection,
    reader: GroupReader,
}

/// What one `XAUTOCLAIM` scan took over.
#[derive(Debug, Default)]
pub struct Reclaimed {
    /// Where the next scan starts; `0-0` when this one reached the end of
    /// the pending list.
    pub next: String,
    /// The entries now pending on this consumer, fields sorted by name.
    pub entries: Vec<RawEntry>,
}

impl ConsumerGroup {
    pub fn new(
        con: Connection,
        reader: GroupReader,
        stream: impl Into<String>,
        group: impl Into<String>,
        consumer: impl Into<String>,
    ) -> Self {
        Self {
            member: Member {
                stream: stream.into(),
                group: group.into(),
                consumer: consumer.into(),
            },
            con,
            reader,
        }
    }

    /// This member's consumer name.
    pub fn consumer(&self) -> &str {
        &self.member.consumer
    }

    /// The stream key (shard) this member reads.
    pub fn stream(&self) -> &str {
        &self.member.stream
    }

    /// Create the group (and the stream) if missing.
    pub async fn create(&mut self) -> RedisResult<()> {
        super::ensure_group(&mut self.con, &self.member.stream, &self.member.group).await
    }

    /// Up to `count` entries never delivered before, waiting up to `block`
    /// for the first. A group that vanished (e.g. a Redis without
    /// persistence restarted) is a `NOGROUP` error, healed by the
    /// consumer's loop like any other command's.
    pub async fn read(
        &mut self,
        count: usize,
        block: Duration,
    ) -> Result<Vec<RawEntry>, ReadError> {
        let request = ReadGroup {
            stream: &self.member.stream,
            group: &self.member.group,
            consumer: &self.member.consumer,
            count,
            block,
        };
        self.reader.read(request).await
    }

    /// Take over up to `count` entries pending longer than `min_idle` on
    /// any consumer, scanning the pending list from `start`.
    pub async fn reclaim(
        &mut self,
        min_idle: Duration,
        start: &str,
        count: usize,
    ) -> RedisResult<Reclaimed> {
        let opts = StreamAutoClaimOptions::default().count(count);
        let reply = self
            .con
            .xautoclaim_options(
                &self.member.stream,
                &self.member.group,
                &self.member.consumer,
                min_idle.as_millis() as u64,
                start,
                opts,
            )
            .await?;
        let entries = reply
            .claimed
            .into_iter()
            .map(|s| {
                let fields = super::entry::fields_of_map(&s.map);
                (s.id, fields)
            })
            .collect();
        Ok(Reclaimed {
            next: reply.next_stream_id,
            entries,
        })
    }

    /// How many times each of `ids` (pending on this consumer) was
    /// delivered. One `XPENDING` over the range the ids span; ids not in the
    /// reply are not pending here.
    pub async fn delivery_counts(&mut self, ids: &[String]) -> RedisResult<HashMap<String, usize>> {
        let (Some(first), Some(last)) = (
            ids.iter().min_by_key(|i| super::parse_id(i)),
            ids.iter().max_by_key(|i| super::parse_id(i)),
        ) else {
            return Ok(HashMap::new());
        };
        let reply = self
            .con
            .xpending_consumer_count(
                &self.member.stream,
                &self.member.group,
                first,
                last,
                ids.len().max(1) * 4,
                &self.member.consumer,
            )
            .await?;
        Ok(reply
            .ids
            .into_iter()
            .map(|p| (p.id, p.times_delivered))
            .collect())
    }

    /// Renew this consumer's claim on `ids` every `period` until dropped,
    /// as long as `still_working()` says the work on them is getting
    /// answers. The minimum idle time, half the period, leaves alone an
    /// entry another consumer has only just claimed. Runs beside the work on
    /// the batch, on its own handle of the shared connection.
    pub fn keep_claimed(
        &self,
        ids: Vec<String>,
        period: Duration,
        still_working: impl Fn() -> bool + Send + 'static,
    ) -> impl Future<Output = Infallible> + 'static {
        let mut con = self.con.clone();
        let member = self.member.clone();
        async move {
            loop {
                tokio::time::sleep(period).await;
                if ids.is_empty() {
                    continue;
                }
                if !still_working() {
                    tracing::warn!(
                        entries = ids.len(),
                        "a call on the batch in hand has had no answer past the statement timeout; the claim is no longer renewed, so other consumers can take the batch over"
                    );
                    continue;
                }
                match member.renew(&mut con, &ids, period / 2).await {
                    Ok(renewed) => {
                        tracing::debug!(
                            renewed = renewed.len(),
                            "claim on the batch in hand renewed"
                        )
                    }
                    // The group vanished under the batch: put it back now,
                    // so the members' next reads find it (what the batch
                    // held is gone with the old group).
                    Err(e) if e.code() == Some("NOGROUP") => {
                        tracing::warn!(
                            "consumer group missing while renewing a claim; recreating it"
                        );
                        if let Err(e) =
                            super::ensure_group(&mut con, &member.stream, &member.group).await
                        {
                            tracing::warn!(error = %e, "could not recreate the consumer group");
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "could not renew the claim on the batch in hand")
                    }
                }
            }
        }
    }

    /// Acknowledge `ids`: they leave this consumer's pending list.
    pub async fn ack(&mut self, ids: &[String]) -> RedisResult<()> {
        self.con
            .xack(&self.member.stream, &self.member.group, ids)
            .await
            .map(drop)
    }

    /// The fields of entry `id` as the stream holds them, in order; `None`
    /// if the stream no longer has it.
    pub async fn entry(&mut self, id: &str) -> RedisResult<Option<Vec<(String, String)>>> {
        let reply: redis::Value = redis::cmd("XRANGE")
            .arg(&self.member.stream)
            .arg(id)
            .arg(id)
            .query_async(&mut self.con)
            .await?;
        Ok(super::reader::range_entries(reply)
            .into_iter()
            .next()
            .map(|(_, fields)| fields))
    }

    /// Write `letter` to the dead-letter stream `stream` (trimmed to about
    /// `max_len` letters), signed with this consumer's name.
    pub async fn dead_letter(
        &mut self,
        stream: &str,
        max_len: usize,
        letter: &DeadLetter<'_>,
    ) -> RedisResult<()> {
        letter
            .write(&mut self.con, stream, max_len, &self.member.consumer)
            .await
    }

    /// Leave the group if nothing is pending on this consumer (what is
    /// pending stays with its name, for whoever reclaims it). True if it
    /// left.
    pub async fn leave(&mut self) -> RedisResult<bool> {
        let pending = self
            .con
            .xpending_consumer_count(
                &self.member.stream,
                &self.member.group,
                "-",
                "+",
                1,
                &self.member.consumer,
            )
            .await?;
        if !pending.ids.is_empty() {
            return Ok(false);
        }
        self.con
            .xgroup_delconsumer(
                &self.member.stream,
                &self.member.group,
                &self.member.consumer,
            )
            .await?;
        Ok(true)
    }
}

impl Member {
    /// `XCLAIM stream group consumer min-idle-ms ids… JUSTID`.
    async fn renew(
        &self,
        con: &mut Connection,
        ids: &[String],
        min_idle: Duration,
    ) -> RedisResult<Vec<String>> {
        redis::cmd("XCLAIM")
            .arg(&self.stream)
            .arg(&self.group)
            .arg(&self.consumer)
            .arg(min_idle.as_millis() as u64)
            .arg(ids)
            .arg("JUSTID")
            .query_async(con)
            .await
    }
}
