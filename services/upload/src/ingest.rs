//! One upload, from the first body byte to the last row in the stream.
//!
//! The body is read chunk by chunk, hashed, counted against the size limit
//! and fed to the [`Intake`]; finished rows become [`StreamEntry`]s, grouped
//! into batches and handed over a small bounded channel to a writer task that
//! pipelines them into Redis. Reading the next chunk overlaps with writing the
//! previous batch, and when the writer waits (backpressure) the channel fills
//! and the body is no longer read: memory stays bounded.
//!
//! An attempt that resumes an upload reads the whole file again and leaves
//! out the rows its earlier attempts got accounted for; the others are enqueued
//! under the same upload id and sequence number. How the attempt ends
//! decides the record: a fault of the file (too large, unreadable as CSV)
//! fails it; any other end interrupts it, resumable, with the row reached.

use bytes::Bytes;
use futures::{Stream, StreamExt};
use rowpipe_core::store::accounting::RowSet;
use rowpipe_core::store::uploads::FinishedBody;
use rowpipe_core::stream::StreamEntry;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tracing::Instrument;

use crate::buffer_budget::BufferShare;
use crate::enqueue::{EnqueueError, Enqueuer};
use crate::error::ApiError;
use crate::intake::{Intake, IntakeOptions, IntakeRow, sniff};
use crate::lease::{Lease, ProgressSender};
use crate::state::AppState;

/// One attempt at receiving an upload: the record it writes to, the rows an
/// earlier attempt got accounted for, and this instance's lease on it.
pub struct Attempt {
    pub upload_id: String,
    /// Rows not to enqueue again (None: the first attempt).
    pub accounted: Option<RowSet>,
    pub lease: Lease,
    /// Given to the writer, which reports each pipeline's ids through it.
    pub progress: Option<ProgressSender>,
}

/// Facts about an upload once its body was read.
#[derive(Clone, Debug)]
pub struct IngestReport {
    pub body: FinishedBody,
}

/// Why an upload stopped before its end.
#[derive(Debug)]
enum Stop {
    TooLarge,
    ShuttingDown,
    LeaseLost,
    /// The body sent nothing for `ROWPIPE_BODY_IDLE_TIMEOUT_SECS`.
    Idle,
    Body(String),
    /// The compressed data is corrupt (the file's fault).
    Corrupt(String),
    Intake(crate::intake::IntakeError),
    Enqueue(EnqueueError),
}

/// Stream `body` into Redis as the upload of `attempt`. A failed upload is
/// recorded failed, an interrupted one interrupted, before the error is
/// returned; a finished one is left for the caller to record.
pub async fn ingest<S, E>(
    state: &AppState,
    attempt: &mut Attempt,
    options: IntakeOptions,
    body: S,
) -> Result<IngestReport, ApiError>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::error::Error + 'static,
{
    let config = &state.config;
    let upload_id = attempt.upload_id.as_str();
    // One batch waits while the writer writes another: reading overlaps
    // writing, and an upload holds at most three batches (the one being
    // built, the one waiting, the one being written).
    // Each pipeline carries its share of the instance's buffer budget
    // (crate::buffer_budget) until it is written.
    let (tx, mut rx) = mpsc::channel::<(Vec<StreamEntry>, Option<BufferShare>)>(1);
    let mut enqueuer = Enqueuer::new(state.redis.clone(), state.enqueue.clone());
    let mut writer_shutdown = state.shutdown.clone();
    let writer_upload = upload_id.to_string();
    let progress = attempt.progress.take();
    let writer = tokio::spawn(
        async move {
            let mut written: i64 = 0;
            while let Some((batch, share)) = rx.recv().await {
                let n = batch.len() as i64;
                let result = enqueuer
                    .write(&writer_upload, &batch, &mut writer_shutdown)
                    .await;
                drop(share);
                if let Some(progress) = &progress {
                    // The range of every entry written, a failed write's
                    // included (the loss check must look through them);
                    // the rows only once they are all written. Rows are
                    // numbered in file order and every earlier row is
                    // written or accounted for, so the last row number
                    // written is how far the stream holds the file.
                    let reached = batch.last().map(|e| e.row_number).unwrap_or(0);
                    let ids = enqueuer.written().cloned();
                    let done = result.is_ok();
                    progress.send_modify(|p| {
                        if done {
                            p.rows_enqueued = p.rows_enqueued.max(reached);
                        }
                        if let Some(ids) = ids {
                            p.first_entry_id = Some(ids.first);
                            p.last_entry_id = Some(ids.last);
                        }
                    });
                }
                result?;
                written += n;
            }
            // `progress` is dropped here: the lease knows the writer is done.
            Ok::<i64, EnqueueError>(written)
        }
        .instrument(tracing::Span::current()),
    );
    let lease_lost = attempt.lease.lost();
    tokio::pin!(lease_lost);
    let accounted = attempt.accounted.as_ref();

    let mut intake = Intake::new(options);
    let mut rows: Vec<IntakeRow> = Vec::new();
    let mut batch: Vec<StreamEntry> = Vec::with_capacity(config.enqueue_batch);
    // The batch's bytes: it is written at `enqueue_batch` rows or
    // `enqueue_batch_bytes`, so its memory is bounded by bytes too.
    let mut batch_bytes: usize = 0;
    // The batch's share of the instance's buffer budget.
    let mut share: Option<BufferShare> = None;
    let mut hasher = Sha256::new();
    let mut size: u64 = 0;
    let mut shutdown = state.shutdown.clone();
    let grace = std::time::Duration::from_secs(config.shutdown_grace_secs);
    let deadline = async move {
        shutdown.requested().await;
        tokio::time::sleep(grace).await;
    };
    tokio::pin!(deadline);
    let mut body = body;
    let idle = std::time::Duration::from_secs(config.body_idle_timeout_secs);

    let make_entry = |row: IntakeRow| StreamEntry {
        upload_id: upload_id.to_string(),
        row_number: row.row_number,
        body: row.body,
        trace: Vec::new(),
    };

    let stop: Option<Stop> = loop {
        let chunk = tokio::select! {
            biased;
            _ = &mut deadline => break Some(Stop::ShuttingDown),
            _ = &mut lease_lost => break Some(Stop::LeaseLost),
            chunk = tokio::time::timeout(idle, body.next()) => match chunk {
                Ok(chunk) => chunk,
                Err(_) => break Some(Stop::Idle),
            },
        };
        let finished = chunk.is_none();
        let result = match chunk {
            None => intake.finish(&mut rows),
            Some(Err(e)) => {
                break Some(if is_length_limit(&e) {
                    Stop::TooLarge
                } else if is_corrupt(&e) {
                    Stop::Corrupt(e.to_string())
                } else {
                    Stop::Body(e.to_string())
                });
            }
            Some(Ok(bytes)) => {
                size += bytes.len() as u64;
                if size > config.max_body_bytes {
                    break Some(Stop::TooLarge);
                }
                metrics::counter!("rowpipe_upload_bytes_received_total")
                    .increment(bytes.len() as u64);
                hasher.update(&bytes);
                intake.push(&bytes, &mut rows)
            }
        };
        if let Err(e) = result {
            break Some(Stop::Intake(e));
        }
        metrics::counter!("rowpipe_upload_rows_received_total").increment(rows.len() as u64);
        let mut writer_gone = false;
        for row in rows.drain(..) {
            if accounted.is_some_and(|a| a.contains(row.row_number)) {
                continue;
            }
            let entry = make_entry(row);
            let bytes = crate::enqueue::entry_bytes(&entry);
            // The row's bytes come from the instance's budget
            // (crate::buffer_budget). Spent: what is built so far goes to the
            // writer first, so the wait never holds a share unsent.
            let row_share = match state.buffers.try_take(bytes) {
                Some(row_share) => Some(row_share),
                None => {
                    if !batch.is_empty() {
                        batch_bytes = 0;
                        let part =
                            std::mem::replace(&mut batch, Vec::with_capacity(config.enqueue_batch));
                        if tx.send((part, share.take())).await.is_err() {
                            writer_gone = true;
                            break;
                        }
                    }
                    state.buffers.take(bytes).await
                }
            };
            share = match (share.take(), row_share) {
                (Some(mut held), Some(more)) => {
                    held.merge(more);
                    Some(held)
                }
                (held, more) => held.or(more),
            };
            batch_bytes += bytes;
            batch.push(entry);
            if batch.len() >= config.enqueue_batch || batch_bytes >= config.enqueue_batch_bytes {
                batch_bytes = 0;
                let full = std::mem::replace(&mut batch, Vec::with_capacity(config.enqueue_batch));
                if tx.send((full, share.take())).await.is_err() {
                    writer_gone = true;
                    break;
                }
            }
        }
        if writer_gone {
            break None; // the writer's error is reported below
        }
        if finished {
            if !batch.is_empty() {
                let _ = tx.send((std::mem::take(&mut batch), share.take())).await;
            }
            break None;
        }
    };
    drop(tx);
    let written = match writer.await {
        Ok(Ok(n)) => Ok(n),
        Ok(Err(e)) => Err(e),
        Err(join) => Err(EnqueueError::Redis(redis::RedisError::from(
            std::io::Error::other(join.to_string()),
        ))),
    };
    let rows_read = intake.rows_read();
    let rows_enqueued = *written.as_ref().unwrap_or(&0);
    let stop = match (stop, written) {
        (Some(stop), _) => Some(stop),
        (None, Err(e)) => Some(Stop::Enqueue(e)),
        (None, Ok(_)) => None,
    };
    if let Some(stop) = stop {
        let error = match stop {
            Stop::TooLarge => ApiError::PayloadTooLarge {
                limit: config.max_body_bytes,
                upload_id: Some(upload_id.to_string()),
                rows_read,
            },
            Stop::Intake(e) => {
                let columns = match &e {
                    crate::intake::IntakeError::Columns(
                        rowpipe_core::row::ColumnError::NoEmailColumn(cols)
                        | rowpipe_core::row::ColumnError::UnknownColumn(_, cols),
                    ) => cols.clone(),
                    _ => Vec::new(),
                };
                ApiError::Unprocessable {
                    message: e.to_string(),
                    columns,
                }
            }
            Stop::ShuttingDown | Stop::Enqueue(EnqueueError::ShuttingDown) => {
                ApiError::ShuttingDown {
                    upload_id: Some(upload_id.to_string()),
                }
            }
            Stop::LeaseLost => ApiError::Unavailable(format!(
                "the upload's lease was lost after {rows_read} rows (the database is unreachable, \
                 or another instance took the upload over)"
            )),
            Stop::Idle => ApiError::BodyIdle {
                idle_secs: config.body_idle_timeout_secs,
            },
            Stop::Corrupt(message) => ApiError::Unprocessable {
                message,
                columns: Vec::new(),
            },
            Stop::Body(e) => ApiError::BadRequest(format!(
                "reading the request body failed after {rows_read} rows: {e}"
            )),
            // Not an outage's detail but the deployment's guarantee: the
            // client is told (the public message keeps what precedes ": ").
            Stop::Enqueue(e @ EnqueueError::NotReplicated { .. }) => ApiError::Unavailable(
                format!("writing rows to Redis failed after {rows_enqueued} rows, {e}"),
            ),
            Stop::Enqueue(e) => ApiError::Unavailable(format!(
                "writing rows to Redis failed after {rows_enqueued} rows: {e}"
            )),
        };
        if is_the_files_fault(&error) {
            attempt.lease.settle();
            state
                .store
                .fail_upload(upload_id, &error.public_message(), rows_read, rows_enqueued)
                .await?;
            metrics::counter!("rowpipe_uploads_total", "status" => "failed").increment(1);
            return Err(error);
        }
        attempt
            .lease
            .interrupt(&error.public_message(), rows_read)
            .await;
        return Err(ApiError::Interrupted {
            cause: Box::new(error),
            upload_id: upload_id.to_string(),
        });
    }
    // Every row of the file is now in the stream or accounted for.
    let rows_enqueued = if attempt.accounted.is_some() {
        rows_read
    } else {
        rows_enqueued
    };
    let written = attempt.lease.progress();
    Ok(IngestReport {
        body: FinishedBody {
            size_bytes: size as i64,
            sha256: hex::encode(hasher.finalize()),
            encoding: intake.encoding().unwrap_or("UTF-8").to_string(),
            delimiter: intake
                .delimiter()
                .map(sniff::delimiter_name)
                .unwrap_or_else(|| ",".into()),
            rows_read,
            rows_enqueued,
            first_entry_id: written.first_entry_id,
            last_entry_id: written.last_entry_id,
            lease_owner: Some(attempt.lease.owner().to_string()),
        },
    })
}

/// Whether an upload stopped for a reason of the file or the request, which
/// no retry can change: it is failed, not interrupted.
fn is_the_files_fault(error: &ApiError) -> bool {
    matches!(
        error,
        ApiError::PayloadTooLarge { .. } | ApiError::Unprocessable { .. }
    )
}

/// Whether a body error is compressed data that does not decode.
fn is_corrupt(error: &(dyn std::error::Error + 'static)) -> bool {
    matches!(
        error.downcast_ref::<crate::body::BodyError>(),
        Some(crate::body::BodyError::Corrupt { .. })
    )
}

/// Whether a body error is a body length limit being hit (a `Limited` body,
/// which axum's `DefaultBodyLimit` and tower-http's `RequestBodyLimit` wrap a
/// body in). The limit error is found by type anywhere in the source chain:
/// a raw body's `axum::Error` holds it directly, a multipart field's error
/// holds it under multer's read error.
fn is_length_limit(error: &(dyn std::error::Error + 'static)) -> bool {
    std::iter::successors(Some(error), |e| e.source())
        .any(|e| e.is::<http_body_util::LengthLimitError>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_length_limit_is_told_by_type_not_by_text() {
        let limited = http_body_util::Limited::new(axum::body::Body::from("0123456789"), 4);
        let mut body = axum::body::Body::new(limited).into_data_stream();
        let error = match body.next().await {
            Some(Err(e)) => e,
            other => panic!("expected a length limit error, got {other:?}"),
        };
        assert!(is_length_limit(&error));
        let lookalike = axum::Error::new(std::io::Error::other("length limit exceeded"));
        assert!(!is_length_limit(&lookalike));
    }
}
