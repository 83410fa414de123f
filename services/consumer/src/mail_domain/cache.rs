//! The per-domain answer cache, shared by the workers of a process.
//!
//! One slot per domain. A fresh answer is read without waiting; a missing
//! or expired one is looked up by the first caller while the others for the
//! same domain wait for it (one lookup per domain, however many workers and
//! rows ask at once), then read what it stored. Answers are kept for the
//! time [`super::resolve`] gave them (the TTL within floor and ceiling, or
//! the failure TTL). The map is bounded: past its capacity the expired
//! slots are dropped, and if that is not enough, all of them.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rowpipe_core::deliverability::DomainVerdict;

struct Cached {
    verdict: DomainVerdict,
    until: Instant,
}

#[derive(Default)]
struct Slot {
    cached: Mutex<Option<Cached>>,
    /// Held by the caller looking the domain up.
    lookup: tokio::sync::Mutex<()>,
}

impl Slot {
    fn fresh(&self, now: Instant) -> Option<DomainVerdict> {
        let cached = self.cached.lock().unwrap_or_else(|e| e.into_inner());
        cached
            .as_ref()
            .filter(|c| c.until > now)
            .map(|c| c.verdict.clone())
    }

    fn expired(&self, now: Instant) -> bool {
        let cached = self.cached.lock().unwrap_or_else(|e| e.into_inner());
        cached.as_ref().is_none_or(|c| c.until <= now)
    }
}

/// Where a verdict came from, for the metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Cache,
    Lookup,
}

pub struct DomainCache {
    slots: Mutex<HashMap<String, Arc<Slot>>>,
    capacity: usize,
}

impl DomainCache {
    pub fn new(capacity: usize) -> Self {
        Self {
            slots: Mutex::new(HashMap::new()),
            capacity: capacity.max(1),
        }
    }

    fn slot(&self, domain: &str) -> Arc<Slot> {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(slot) = slots.get(domain) {
            return slot.clone();
        }
        if slots.len() >= self.capacity {
            let now = Instant::now();
            slots.retain(|_, s| !s.expired(now));
            if slots.len() >= self.capacity {
                slots.clear();
            }
        }
        slots.entry(domain.to_string()).or_default().clone()
    }

    /// The verdict on `domain`: cached, or from `lookup` (which returns it
    /// with how long to keep it), run once however many ask at once.
    pub async fn get<F, Fut>(&self, domain: &str, lookup: F) -> (DomainVerdict, Source)
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = (DomainVerdict, Duration)>,
    {
        let slot = self.slot(domain);
        if let Some(v) = slot.fresh(Instant::now()) {
            return (v, Source::Cache);
        }
        let _turn = slot.lookup.lock().await;
        // Whoever held the turn before may have just stored it.
        if let Some(v) = slot.fresh(Instant::now()) {
            return (v, Source::Cache);
        }
        let (verdict, keep) = lookup().await;
        let mut cached = slot.cached.lock().unwrap_or_else(|e| e.into_inner());
        *cached = Some(Cached {
            verdict: verdict.clone(),
            until: Instant::now() + keep,
        });
        (verdict, Source::Lookup)
    }

    /// Domains held (fresh or not), for tests and the gauge.
    pub fn len(&self) -> usize {
        self.slots.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn concurrent_askers_share_one_lookup_and_an_expired_answer_is_asked_again() {
        let cache = Arc::new(DomainCache::new(10));
        let lookups = Arc::new(AtomicUsize::new(0));
        let ask = |cache: Arc<DomainCache>, lookups: Arc<AtomicUsize>, keep: Duration| async move {
            cache
                .get("example.org", || async move {
                    lookups.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    (DomainVerdict::Accepts, keep)
                })
                .await
        };
        let keep = Duration::from_millis(200);
        let all =
            futures::future::join_all((0..20).map(|_| ask(cache.clone(), lookups.clone(), keep)))
                .await;
        assert_eq!(lookups.load(Ordering::SeqCst), 1);
        assert_eq!(all.iter().filter(|(_, s)| *s == Source::Lookup).count(), 1);
        tokio::time::sleep(Duration::from_millis(250)).await;
        let (_, source) = ask(cache.clone(), lookups.clone(), keep).await;
        assert_eq!(source, Source::Lookup);
        assert_eq!(lookups.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn the_cache_stays_within_its_capacity() {
        let cache = DomainCache::new(3);
        for i in 0..10 {
            cache
                .get(&format!("d{i}.example"), || async {
                    (DomainVerdict::Accepts, Duration::from_secs(60))
                })
                .await;
        }
        assert!(cache.len() <= 3, "{}", cache.len());
    }
}
