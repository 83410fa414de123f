//! Whose turn it is to take over entries that dead consumers left pending.
//!
//! `XAUTOCLAIM` scans the group's pending list, up to ten times COUNT
//! entries per call, and Redis runs nothing else meanwhile: on a busy stream
//! each call is expensive for every client of that Redis. Every worker of a
//! process calling it on its own timer would pay that once per worker per
//! interval, and all but the first call would find nothing left to take. So
//! the workers of a process share one [`ReclaimTurns`]: the first worker to
//! find the interval over takes the turn.
//!
//! The turns also keep the scan's cursor. A call that stops before the end
//! of the pending list (it returns where to go on) or that claims a full
//! batch hands the next turn out at once, starting where it stopped; so a
//! dead process's whole backlog, and entries behind a long run of live ones,
//! are taken over as fast as the workers can store them, not one batch per
//! interval. Once a scan reaches the end, the next one starts from the
//! beginning, an interval later.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// The `XAUTOCLAIM` start that means "from the beginning" (and, in a reply,
/// "the scan reached the end").
pub const SCAN_START: &str = "0-0";

/// One process's schedule of `XAUTOCLAIM` calls, shared by its workers.
#[derive(Debug)]
pub struct ReclaimTurns {
    interval: Duration,
    state: Mutex<TurnState>,
}

#[derive(Debug)]
struct TurnState {
    /// When the last turn was taken; `None` once a turn is due at once.
    last: Option<Instant>,
    /// Where the next turn's scan starts.
    cursor: String,
}

impl ReclaimTurns {
    /// The first turn is due `interval` from now: at start-up nothing has
    /// been idle long enough to be claimed yet.
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            state: Mutex::new(TurnState {
                last: Some(Instant::now()),
                cursor: SCAN_START.to_string(),
            }),
        }
    }

    /// The start id for this caller's `XAUTOCLAIM` if it is its turn: one
    /// caller per interval, or the next caller after [`Self::finish`] or
    /// [`Self::again`] made a turn due.
    pub fn take(&self) -> Option<String> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let due = state.last.is_none_or(|t| t.elapsed() >= self.interval);
        if !due {
            return None;
        }
        state.last = Some(Instant::now());
        Some(state.cursor.clone())
    }

    /// A turn's `XAUTOCLAIM` returned: `next` is the reply's cursor, `full`
    /// whether it claimed as many entries as it asked for. Either way more
    /// may be waiting, and the next turn is due at once.
    pub fn finish(&self, next: &str, full: bool) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.cursor = next.to_string();
        if full || next != SCAN_START {
            state.last = None;
        }
    }

    /// The turn failed: the next caller gets a turn without waiting for the
    /// interval, from the same start.
    pub fn again(&self) {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .last = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// An interval no test run reaches: only `finish` and `again` make a
    /// turn due, so a slow machine cannot hand out a second one.
    fn hour() -> ReclaimTurns {
        ReclaimTurns::new(Duration::from_secs(3600))
    }

    #[test]
    fn one_worker_per_interval_gets_the_turn() {
        let turns = Arc::new(hour());
        assert_eq!(turns.take(), None, "nothing is due at start-up");
        turns.again();
        let winners: usize = (0..4)
            .map(|_| {
                let t = turns.clone();
                std::thread::spawn(move || t.take().is_some())
            })
            .map(|h| h.join().unwrap_or(false) as usize)
            .sum();
        assert_eq!(winners, 1, "four workers, one turn");
        assert_eq!(turns.take(), None, "the next turn waits for the interval");
    }

    #[test]
    fn a_turn_is_due_again_once_the_interval_is_over() {
        let turns = ReclaimTurns::new(Duration::ZERO);
        assert_eq!(turns.take().as_deref(), Some(SCAN_START));
        assert_eq!(turns.take().as_deref(), Some(SCAN_START));
    }

    #[test]
    fn a_full_batch_hands_out_the_next_turn_at_once() {
        let turns = hour();
        turns.again();
        assert!(turns.take().is_some());
        turns.finish(SCAN_START, true);
        assert_eq!(turns.take().as_deref(), Some(SCAN_START));
        assert_eq!(turns.take(), None, "and only once");
    }

    #[test]
    fn an_unfinished_scan_goes_on_where_it_stopped() {
        let turns = hour();
        turns.again();
        assert_eq!(turns.take().as_deref(), Some(SCAN_START));
        turns.finish("1700000000000-5", false);
        assert_eq!(turns.take().as_deref(), Some("1700000000000-5"));
        turns.finish(SCAN_START, false);
        assert_eq!(turns.take(), None, "the scan reached the end: wait");
    }

    #[test]
    fn a_failed_turn_is_taken_again_from_the_same_start() {
        let turns = hour();
        turns.again();
        assert!(turns.take().is_some());
        turns.finish("1700000000000-5", false);
        assert_eq!(turns.take().as_deref(), Some("1700000000000-5"));
        turns.again();
        assert_eq!(turns.take().as_deref(), Some("1700000000000-5"));
    }
}
