//! Whose turn it is to take over entries that dead consumers left pending.
//!
//! `XAUTOCLAIM` scans the group's pending list from its start, up to ten
//! times COUNT entries per call (about 9 ms on the benchmark's busy stream),
//! and Redis runs nothing else meanwhile. When every worker of a process
//! called it on its own timer, each process paid that once per worker per
//! interval and found nothing the first call had not already taken. The
//! workers of a process now share one [`ReclaimTurns`]: the first worker to
//! find the interval over takes the turn. A turn that comes back with a full
//! batch hands the next turn out at once, so a dead process's whole backlog
//! is taken over as fast as the workers can store it, not one batch per
//! interval.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// One process's schedule of `XAUTOCLAIM` calls, shared by its workers.
#[derive(Debug)]
pub struct ReclaimTurns {
    interval: Duration,
    /// When the last turn was taken; `None` once a turn is due at once.
    last: Mutex<Option<Instant>>,
}

impl ReclaimTurns {
    /// The first turn is due `interval` from now: at start-up nothing has
    /// been idle long enough to be claimed yet.
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            last: Mutex::new(Some(Instant::now())),
        }
    }

    /// True for exactly one caller per interval (or once after [`Self::again`]).
    pub fn take(&self) -> bool {
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        let due = last.is_none_or(|t| t.elapsed() >= self.interval);
        if due {
            *last = Some(Instant::now());
        }
        due
    }

    /// The turn found a full batch: more is probably waiting, so the next
    /// caller of [`Self::take`] gets a turn without waiting for the interval.
    pub fn again(&self) {
        *self.last.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn one_worker_per_interval_gets_the_turn() {
        // An interval no test run reaches: only `again` makes a turn due, so
        // a slow machine cannot hand out a second one.
        let turns = Arc::new(ReclaimTurns::new(Duration::from_secs(3600)));
        assert!(!turns.take(), "nothing is due at start-up");
        turns.again();
        let winners: usize = (0..4)
            .map(|_| {
                let t = turns.clone();
                std::thread::spawn(move || t.take())
            })
            .map(|h| h.join().unwrap_or(false) as usize)
            .sum();
        assert_eq!(winners, 1, "four workers, one turn");
        assert!(!turns.take(), "the next turn waits for the interval");
    }

    #[test]
    fn a_turn_is_due_again_once_the_interval_is_over() {
        let turns = ReclaimTurns::new(Duration::ZERO);
        assert!(turns.take());
        assert!(turns.take(), "a zero interval is always over");
    }

    #[test]
    fn a_full_batch_hands_out_the_next_turn_at_once() {
        let turns = ReclaimTurns::new(Duration::from_secs(3600));
        assert!(!turns.take());
        turns.again();
        assert!(turns.take(), "due at once after a full batch");
        assert!(!turns.take(), "and only once");
    }
}
