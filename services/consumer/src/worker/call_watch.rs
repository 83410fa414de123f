//! Whether this worker's database calls are getting answers.
//!
//! A worker waiting out an outage renews its claim on the batch in hand, so
//! that the batch is not taken over and counted as delivered again while
//! every consumer would fail the same way. A worker whose call has had no
//! answer for longer than the claim idle time may be the only one cut off
//! (its node's network, a connection to a server that froze): it stops
//! renewing, and another consumer takes the batch over. Should the stuck
//! call come back and commit after all, the store's exactly-once rule makes
//! the second copy change nothing.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// When the call in flight began, if one is.
#[derive(Debug)]
pub(super) struct CallWatch {
    epoch: Instant,
    /// Milliseconds since `epoch` at which the call in flight began, plus
    /// one; 0 when no call is in flight.
    in_flight_since: AtomicU64,
}

impl CallWatch {
    pub(super) fn new() -> Self {
        Self {
            epoch: Instant::now(),
            in_flight_since: AtomicU64::new(0),
        }
    }

    pub(super) fn begin(&self) {
        let now = self.epoch.elapsed().as_millis() as u64 + 1;
        self.in_flight_since.store(now, Ordering::Relaxed);
    }

    pub(super) fn end(&self) {
        self.in_flight_since.store(0, Ordering::Relaxed);
    }

    /// A call has been in flight for longer than `limit`.
    pub(super) fn stuck_longer_than(&self, limit: Duration) -> bool {
        let since = self.in_flight_since.load(Ordering::Relaxed);
        since != 0 && self.epoch.elapsed().as_millis() as u64 + 1 - since > limit.as_millis() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_call_in_flight_past_the_limit_is_stuck() {
        let watch = CallWatch::new();
        assert!(!watch.stuck_longer_than(Duration::ZERO), "no call");
        watch.begin();
        std::thread::sleep(Duration::from_millis(20));
        assert!(watch.stuck_longer_than(Duration::from_millis(5)));
        assert!(!watch.stuck_longer_than(Duration::from_secs(60)));
        watch.end();
        assert!(!watch.stuck_longer_than(Duration::ZERO), "answered");
    }
}
