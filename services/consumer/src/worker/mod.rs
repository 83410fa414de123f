//! One consumer-group member: read a batch, judge it, store it in one
//! transaction, acknowledge it.
//!
//! Delivery is at-least-once (`XACK` only after the commit) and the effect is
//! exactly-once (the store passes over rows it already recorded). What goes
//! wrong is sorted by cause, not by error code list:
//!
//! * the database as a whole fails (away, read-only, refusing this client,
//!   out of resources, timed out, a lost deadlock, a missing table): the
//!   batch is kept and the call tried again with backoff and jitter, the
//!   claim on the batch held, nothing acknowledged, no delivery counted,
//!   not-ready reported after two seconds ([`outage`]);
//! * the database refuses some rows (a constraint, a value): the batch is
//!   split in halves until each refused row stands alone, the others stored
//!   on the way ([`bisect`]); a row refused alone is left for a later
//!   delivery, and after `max_deliveries` goes to the reject ledger
//!   (`processing_failed`, with the database's error) and the dead-letter
//!   stream, unless an earlier delivery stored it after all (its consumer
//!   died before `XACK`), then it is only acknowledged;
//! * an entry whose upload has no record waits the same number of
//!   deliveries, then is dead-lettered (`unknown_upload`): a row's upload
//!   sequence, which decides duplicates, comes only from the upload's
//!   record ([`upload_seq`]); an entry that cannot be decoded is
//!   dead-lettered at once ([`failed`]).
//!
//! Entries pending on a consumer longer than `claim_idle` are taken over by
//! another one (`XAUTOCLAIM`, one worker per process at a time: see
//! [`crate::reclaim`]), as if their consumer had died. So that a live
//! consumer's slow batch (lock waits, a database outage being waited out) is
//! not taken over, stored twice and counted as delivered again each time,
//! the worker renews its claim on the batch in hand while it works on it.
//! Every database call has a deadline (`ROWPIPE_DB_STATEMENT_TIMEOUT_MS`),
//! so a call that hangs ends as an outage; and a worker whose call has had
//! no answer for longer than `claim_idle` stops renewing its claim, so the
//! others take the batch over.
//!
//! What is said to Redis is [`rowpipe_core::stream::ConsumerGroup`]'s; this
//! module decides when. Its parts:
//!
//! * this file: the loop, reading a batch and reclaim turns;
//! * [`batch`]: one batch from delivery to report (judging, tracing,
//!   holding the claim, what a commit leads to);
//! * [`upload_seq`]: each upload's sequence, from its record;
//! * [`bisect`]: storing the rows, splitting a batch the database refuses;
//! * [`outage`]: waiting out an outage of the database, and acknowledging;
//! * [`call_watch`]: whether its calls get answers (a stuck worker stops
//!   renewing its claim);
//! * [`failed`]: entries given up on (the reject ledger, the dead-letter
//!   stream);
//! * [`error`] and [`health`]: which dependency a failure is blamed on.
//!
//! Tests drive a worker one batch at a time with [`Worker::run_once`].

mod batch;
mod bisect;
mod call_watch;
mod error;
mod failed;
mod health;
mod outage;
mod upload_seq;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rowpipe_core::shutdown::Shutdown;
use rowpipe_core::store::Store;
use rowpipe_core::stream::Connection;
use rowpipe_core::stream::ConsumerGroup;
use rowpipe_core::stream::reader::GroupReader;

use crate::config::Config;
use crate::reclaim::ReclaimTurns;
use batch::Delivered;

pub use error::{Dependency, WorkerError};
pub use health::Health;

/// What one batch did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BatchReport {
    pub entries: usize,
    pub acknowledged: usize,
    pub replayed: u64,
    pub dead_lettered: usize,
    /// Entries left pending (to be retried or reclaimed).
    pub left_pending: usize,
    /// Transactions tried to store the batch's rows: 1 when the database
    /// took them at once; more when it refused some and the batch was
    /// split (see `bisect`).
    pub store_attempts: usize,
    pub completed_uploads: Vec<String>,
}

/// The shards a worker serves: for each, its index, the process's reclaim
/// turns of it ([`crate::reclaim`]).
pub type ServedShards = Vec<(usize, Arc<ReclaimTurns>)>;

/// A group member, of the group of every shard its process serves.
///
/// With one shard it reads that shard's stream as it always did. With
/// several it takes them in turn: one turn (a reclaim or a read, then the
/// batch) on one shard, the next turn on the next. While turns find
/// entries, reads do not wait (`BLOCK 1`), so a busy shard is never held up
/// behind an empty one; after a whole round of empty reads each read waits
/// its share of about a second, so an idle worker costs Redis a few calls
/// a second. Every worker of a process serves every shard of it, starting
/// at a different one, so shards are served evenly whatever the number of
/// workers (see `docs/scaling.md` for the choice against one reader per
/// shard).
pub struct Worker {
    config: Arc<Config>,
    store: Store,
    /// The member of the shard this turn is on.
    group: ConsumerGroup,
    /// That shard's index, and its reclaim turns.
    shard: usize,
    reclaim_turns: Arc<ReclaimTurns>,
    /// The other shards served, in the order their turns come.
    waiting: std::collections::VecDeque<(usize, ConsumerGroup, Arc<ReclaimTurns>)>,
    /// Reads in a row that found nothing, across shards.
    empty_reads: usize,
    health: Arc<Health>,
    seq_cache: HashMap<String, i64>,
    /// Whether its database calls get answers (see [`call_watch`]).
    calls: Arc<call_watch::CallWatch>,
    /// The deliverability check, shared by the process's workers; `None`
    /// when `ROWPIPE_CHECK_MAIL_DOMAIN=off`.
    mail_domains: Option<Arc<crate::mail_domain::MailDomains>>,
}

const FIRST_READ_BLOCK: Duration = Duration::from_millis(1000);

impl Worker {
    /// A member named `name` of the groups of `shards` (at least one), its
    /// first turn on the first of them.
    pub async fn new(
        name: String,
        config: Arc<Config>,
        store: Store,
        redis: Connection,
        health: Arc<Health>,
        shards: ServedShards,
    ) -> anyhow::Result<Self> {
        let reader = GroupReader::connect(
            &config.stream.redis_target(),
            FIRST_READ_BLOCK.max(config.batch_timeout()),
        )
        .await?;
        let keys = config.stream.shards();
        let mut members = std::collections::VecDeque::new();
        // The connected reader (start-up proved the credentials with it)
        // serves the first shard; the others get siblings of it.
        let mut readers: Vec<GroupReader> = (1..shards.len()).map(|_| reader.sibling()).collect();
        readers.insert(0, reader);
        for ((shard, turns), reader) in shards.into_iter().zip(readers) {
            let group = ConsumerGroup::new(
                redis.clone(),
                reader,
                keys.key(shard).to_string(),
                config.stream.group.clone(),
                name.clone(),
            );
            members.push_back((shard, group, turns));
        }
        let Some((shard, group, reclaim_turns)) = members.pop_front() else {
            anyhow::bail!("a worker must serve at least one shard");
        };
        Ok(Self {
            config,
            store,
            group,
            shard,
            reclaim_turns,
            waiting: members,
            empty_reads: 0,
            health,
            seq_cache: HashMap::new(),
            calls: Arc::new(call_watch::CallWatch::new()),
            mail_domains: None,
        })
    }

    /// Check the domains of this worker's batches with `check` (see
    /// [`crate::mail_domain`]).
    pub fn with_mail_domains(
        mut self,
        check: Option<Arc<crate::mail_domain::MailDomains>>,
    ) -> Self {
        self.mail_domains = check;
        self
    }

    pub fn name(&self) -> &str {
        self.group.consumer()
    }

    /// Move to the next shard served (a no-op with one).
    fn next_shard(&mut self) {
        if let Some((shard, group, turns)) = self.waiting.pop_front() {
            let group = std::mem::replace(&mut self.group, group);
            let turns = std::mem::replace(&mut self.reclaim_turns, turns);
            self.waiting
                .push_back((std::mem::replace(&mut self.shard, shard), group, turns));
        }
    }

    /// How long this turn's first read waits: today's second with one
    /// shard; with several, no wait while reads find entries, and a share
    /// of the second once a whole round found none.
    fn first_read_block(&self) -> Duration {
        let shards = self.waiting.len() + 1;
        if shards == 1 {
            FIRST_READ_BLOCK
        } else if self.empty_reads >= shards {
            FIRST_READ_BLOCK / shards as u32
        } else {
            Duration::from_millis(1)
        }
    }

    /// Read one batch (waiting up to about a second for its first entry) and
    /// process it. `Ok(None)` when nothing arrived.
    ///
    /// A turn that meets a missing stream or group (`NOGROUP`, from any of
    /// its commands) creates the group again at `0` and comes back empty:
    /// the next turn finds the group. Healing here rather than in one
    /// command's wrapper matters because a reclaim turn that fails is due
    /// again at once, so a worker whose reclaim keeps failing would never
    /// reach a read that could heal.
    pub async fn run_once(
        &mut self,
        shutdown: &Shutdown,
    ) -> Result<Option<BatchReport>, WorkerError> {
        let result = self.turn(shutdown).await;
        if !matches!(result, Ok(Some(_))) {
            self.empty_reads += 1;
        } else {
            self.empty_reads = 0;
        }
        // An error (a NOGROUP healed below included) moves on too: one
        // shard's trouble does not stop the others being served.
        let result = self.heal(result).await;
        self.next_shard();
        result
    }

    /// A missing group, met by any command of the turn, created again.
    async fn heal(
        &mut self,
        result: Result<Option<BatchReport>, WorkerError>,
    ) -> Result<Option<BatchReport>, WorkerError> {
        match result {
            Err(e) if e.is_no_group() => {
                tracing::warn!(error = %e, "consumer group missing; recreating it");
                self.group.create().await?;
                metrics::counter!("rowpipe_consumer_group_recreated_total").increment(1);
                Ok(None)
            }
            other => other,
        }
    }

    /// One turn: a reclaim turn if due, else a read; then the batch.
    async fn turn(&mut self, shutdown: &Shutdown) -> Result<Option<BatchReport>, WorkerError> {
        if let Some(start) = self.reclaim_turns.take() {
            let claimed = match self.reclaim(&start).await {
                Ok(claimed) => claimed,
                Err(e) => {
                    // The turn did nothing: the next worker (after the run
                    // loop's backoff) tries again instead of a whole interval later.
                    self.reclaim_turns.again();
                    return Err(e.into());
                }
            };
            if !claimed.is_empty() {
                return Ok(Some(self.process(claimed, shutdown, true).await?));
            }
        }
        let delivered = self.read_batch().await?;
        if delivered.is_empty() {
            return Ok(None);
        }
        Ok(Some(self.process(delivered, shutdown, false).await?))
    }

    /// Up to `batch_size` entries: flushed when full or `batch_timeout` after
    /// the first one arrived.
    async fn read_batch(&mut self) -> Result<Vec<Delivered>, WorkerError> {
        let size = self.config.batch_size;
        let block = self.first_read_block();
        let mut ids = self.group.read(size, block).await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let started = Instant::now();
        let timeout = self.config.batch_timeout();
        while ids.len() < size {
            let left = timeout.saturating_sub(started.elapsed());
            if left.is_zero() {
                break;
            }
            let more = self.group.read(size - ids.len(), left).await?;
            if more.is_empty() {
                break;
            }
            ids.extend(more);
        }
        Ok(ids.into_iter().map(Delivered::from_raw).collect())
    }

    /// One turn's scan, from `start`, for entries left pending by consumers
    /// that died (see [`crate::reclaim`]); entries delivered more than
    /// `max_deliveries` times are then stored one at a time (see
    /// [`bisect`]).
    async fn reclaim(&mut self, start: &str) -> redis::RedisResult<Vec<Delivered>> {
        let batch_size = self.config.batch_size;
        let reclaimed = self
            .group
            .reclaim(self.config.claim_idle(), start, batch_size)
            .await?;
        let count = reclaimed.entries.len();
        self.reclaim_turns
            .finish(&reclaimed.next, count >= batch_size);
        if count == 0 {
            return Ok(Vec::new());
        }
        metrics::counter!("rowpipe_consumer_reclaimed_total").increment(count as u64);
        tracing::info!(count, "reclaimed entries from idle consumers");
        Ok(reclaimed
            .entries
            .into_iter()
            .map(Delivered::from_raw)
            .collect())
    }

    /// Run until shutdown; the batch in hand is finished first.
    pub async fn run(mut self, shutdown: Shutdown) {
        let mut backoff = outage::Backoff::new();
        // This loop marked the database not ready, and nothing has shown it
        // reachable since.
        let mut database_blamed = false;
        while !shutdown.is_requested() {
            match self.run_once(&shutdown).await {
                Ok(_) => {
                    // Every turn reads or claims: Redis answered.
                    self.health.set_redis(true);
                    if database_blamed {
                        database_blamed = !self.database_answers().await;
                    }
                    backoff = outage::Backoff::new();
                }
                Err(e) => {
                    self.health.blame(&e);
                    database_blamed |= e.dependency() == Dependency::Database;
                    tracing::warn!(error = %e, dependency = ?e.dependency(), "consumer loop error; retrying after a backoff");
                    backoff.wait(e.dependency().label(), &shutdown).await;
                }
            }
        }
        self.leave().await;
    }

    /// Whether the database answers, marking it ready if so. A turn that
    /// went well need not have touched it (nothing arrived), so it is asked;
    /// a batch's commit marks it ready as well (see [`outage`]).
    async fn database_answers(&self) -> bool {
        let answers = self.store.ping().await.is_ok();
        if answers {
            self.health.set_db(true);
        }
        answers
    }

    /// Leave the group if nothing is pending on this consumer.
    pub async fn leave(&mut self) {
        for _ in 0..=self.waiting.len() {
            match self.group.leave().await {
                Ok(true) => {
                    tracing::info!(consumer = %self.name(), shard = self.shard, "left the consumer group")
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::debug!(consumer = %self.name(), shard = self.shard, error = %e, "could not leave the consumer group")
                }
            }
            self.next_shard();
        }
    }
}
