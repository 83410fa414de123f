//! A bound on what a multipart body may send before its file's data.
//!
//! The multipart parser buffers a part's headers until their blank line,
//! and with the body limit enforced while streaming (not by buffering
//! middleware) nothing bounded that: a client could send headers forever.
//! [`PartHeaderBudget`] counts the bytes read while the handler waits for
//! the next part (the preamble, part headers, fields before `file`) and
//! fails the body past `ROWPIPE_MAX_PART_HEADER_BYTES`. A chunk that arrives
//! while the budget is not yet spent is let through whole (it may hold the
//! file's first bytes), so a body is refused at most one chunk past it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytes::Bytes;
use futures::{Stream, StreamExt};

/// The body sent more than the budget before the `file` part's data.
#[derive(Debug, thiserror::Error)]
#[error(
    "the multipart body sent more than {limit} bytes before the `file` part's data \
     (part headers and fields before it); send the file part first, with short headers"
)]
pub struct PartHeadersTooLong {
    pub limit: u64,
}

/// Counts the bytes read while armed.
#[derive(Clone, Debug)]
pub struct PartHeaderBudget {
    limit: u64,
    armed: Arc<AtomicBool>,
    spent: Arc<AtomicU64>,
}

impl PartHeaderBudget {
    pub fn new(limit: u64) -> Self {
        Self {
            limit,
            armed: Arc::new(AtomicBool::new(true)),
            spent: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Waiting for the next part: count what is read.
    pub fn arm(&self) {
        self.armed.store(true, Ordering::Relaxed);
    }

    /// In a part's data: read freely (the ingest bounds the file).
    pub fn disarm(&self) {
        self.armed.store(false, Ordering::Relaxed);
    }

    /// `body`, failing once the bytes read while armed passed the limit.
    pub fn wrap<S, E>(
        &self,
        body: S,
    ) -> impl Stream<Item = Result<Bytes, Box<dyn std::error::Error + Send + Sync>>> + Send + use<S, E>
    where
        S: Stream<Item = Result<Bytes, E>> + Send,
        E: std::error::Error + Send + Sync + 'static,
    {
        let budget = self.clone();
        body.map(move |chunk| {
            let chunk =
                chunk.map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)?;
            if budget.armed.load(Ordering::Relaxed) {
                let before = budget
                    .spent
                    .fetch_add(chunk.len() as u64, Ordering::Relaxed);
                if before > budget.limit {
                    return Err(Box::new(PartHeadersTooLong {
                        limit: budget.limit,
                    })
                        as Box<dyn std::error::Error + Send + Sync>);
                }
            }
            Ok(chunk)
        })
    }

    /// Whether a multipart error is this budget running out.
    pub fn is_exceeded(error: &(dyn std::error::Error + 'static)) -> bool {
        std::iter::successors(Some(error), |e| e.source()).any(|e| e.is::<PartHeadersTooLong>())
    }
}
