//! Whether this worker's database calls are getting answers.
//!
//! A worker waiting out an outage, or a lock, renews its claim on the
//! batch in hand, so that the batch is not taken over and counted as
//! delivered again while every consumer would fail or wait the same way. A
//! worker whose call has had no answer for longer than the statement
//! timeout (plus a margin: by then the server would have answered, if only
//! with its timeout) may be the only one cut off (its node's network, a
//! connection to a server that froze): it stops renewing, and another
//! consumer takes the batch over. Should the stuck call come back and
//! commit after all, the store's exactly-once rule makes the second copy
//! change nothing.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// When the call in flight began, and whether the last one went unanswered.
#[derive(Debug)]
pub(super) struct CallWatch {
    epoch: Instant,
    /// Milliseconds since `epoch` at which the call in flight began, plus
    /// one; 0 when no call is in flight.
    in_flight_since: AtomicU64,
    /// The last call ended with no answer at all (its deadline, or no
    /// connection within the acquire timeout), and none has been answered
    /// since: the backoff between tries is no sign of life.
    cut_off: AtomicBool,
}

impl CallWatch {
    pub(super) fn new() -> Self {
        Self {
            epoch: Instant::now(),
            in_flight_since: AtomicU64::new(0),
            cut_off: AtomicBool::new(false),
        }
    }

    pub(super) fn begin(&self) {
        let now = self.epoch.elapsed().as_millis() as u64 + 1;
        self.in_flight_since.store(now, Ordering::Relaxed);
    }

    /// The call ended; `answered`: the database said something (a result
    /// or an error of its own).
    pub(super) fn end(&self, answered: bool) {
        self.in_flight_since.store(0, Ordering::Relaxed);
        self.cut_off.store(!answered, Ordering::Relaxed);
    }

    /// Cut off: the last call went unanswered, or the one in flight has
    /// been for longer than `limit`.
    pub(super) fn stuck_longer_than(&self, limit: Duration) -> bool {
        if self.cut_off.load(Ordering::Relaxed) {
            return true;
        }
        let since = self.in_flight_since.load(Ordering::Relaxed);
        since != 0 && self.epoch.elapsed().as_millis() as u64 + 1 - since > limit.as_millis() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_call_unanswered_past_the_limit_is_stuck() {
        let watch = CallWatch::new();
        assert!(!watch.stuck_longer_than(Duration::ZERO), "no call");
        watch.begin();
        std::thread::sleep(Duration::from_millis(20));
        assert!(watch.stuck_longer_than(Duration::from_millis(5)));
        assert!(!watch.stuck_longer_than(Duration::from_secs(60)));
        watch.end(true);
        assert!(!watch.stuck_longer_than(Duration::ZERO), "answered");
        watch.begin();
        watch.end(false);
        assert!(
            watch.stuck_longer_than(Duration::from_secs(60)),
            "unanswered, until the next answer"
        );
        watch.begin();
        watch.end(true);
        assert!(!watch.stuck_longer_than(Duration::ZERO));
    }
}
