//! The store's accounting of an upload's rows (`store/accounting.rs`) on
//! each real database: every row a ledger holds is accounted for (winners,
//! duplicates, displaced winners, rejects), the rows no ledger holds are
//! the missing ones, and marking an upload `incomplete` or settling an
//! `interrupted` one only acts on an upload still open for it.

use rowpipe_core::store::{Store, UploadRecord, UploadStatus};
use rowpipe_core::verdict::JudgedRow;
use rowpipe_testkit::{Backend, TestDb};

use crate::fixtures::{accepted, new_upload, rejected};

fn accept(upload: &str, seq: i64, row: i64, email: &str) -> JudgedRow {
    accepted(upload, seq, row, email, None)
}

fn reject(upload: &str, seq: i64, row: i64) -> JudgedRow {
    rejected(
        upload,
        seq,
        row,
        "not an email".into(),
        "{\"email\":\"nobody\"}".into(),
    )
}

/// A new upload in `status` with `rows_enqueued`; its sequence number.
async fn upload(store: &Store, id: &str, status: &str, enqueued: i64) -> i64 {
    let seq = new_upload(store, id).await;
    let sql = store
        .dialect()
        .sql("UPDATE uploads SET status = ?, rows_enqueued = ? WHERE id = ?");
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(status)
        .bind(enqueued)
        .bind(id)
        .execute(store.pool())
        .await
        .expect("set status");
    seq
}

/// The upload's record, which must exist.
async fn record(store: &Store, id: &str) -> UploadRecord {
    store.get_upload(id).await.expect("read").expect("upload")
}

async fn the_ledgers_account_for_every_stored_row(backend: Backend) {
    let db = TestDb::create(backend).await.expect("test database");
    let store = db.store().await;
    let early = upload(&store, "acct-early", "processing", 1).await;
    let late = upload(&store, "acct-late", "processing", 10).await;
    // Rows 4, 5 and 9 of the late upload never arrive. Row 1 wins first,
    // then loses its place to the early upload's row with the same email;
    // row 3 is a duplicate of row 2; rows 6 and 10 are rejects.
    store
        .apply_batch(&[
            accept("acct-late", late, 1, "shared@example.com"),
            accept("acct-late", late, 2, "two@example.com"),
            accept("acct-late", late, 3, "TWO@example.com"),
            reject("acct-late", late, 6),
            accept("acct-late", late, 7, "seven@example.com"),
            accept("acct-late", late, 8, "eight@example.com"),
            reject("acct-late", late, 10),
        ])
        .await
        .expect("late batch");
    store
        .apply_batch(&[accept("acct-early", early, 1, "shared@example.com")])
        .await
        .expect("early batch displaces the late winner");

    let accounted = store.accounted_rows("acct-late").await.expect("accounted");
    let rows: Vec<i64> = (1..=10).filter(|r| accounted.contains(*r)).collect();
    assert_eq!(rows, vec![1, 2, 3, 6, 7, 8, 10], "{backend:?}");
    assert_eq!((accounted.len(), accounted.max()), (7, 10));
    assert_eq!(accounted.missing_ranges(10), vec![[4, 5], [9, 9]]);
    let early_rows = store.accounted_rows("acct-early").await.expect("accounted");
    assert_eq!(early_rows.missing_ranges(1), Vec::<[i64; 2]>::new());
    assert!(
        store
            .accounted_rows("no-such-upload")
            .await
            .expect("accounted")
            .is_empty()
    );

    // Incomplete: the missing rows are named on the record.
    assert!(
        store
            .mark_incomplete("acct-late", &[[4, 5], [9, 9]], 3)
            .await
            .expect("mark incomplete")
    );
    assert!(
        !store
            .mark_incomplete("acct-late", &[[4, 5], [9, 9]], 3)
            .await
            .expect("mark incomplete again"),
        "a second sweep finding the same loss reports nothing"
    );
    let rec = record(&store, "acct-late").await;
    assert_eq!(rec.status, UploadStatus::Incomplete);
    assert_eq!(rec.counts.missing, 3);
    assert_eq!(rec.missing_rows, vec![[4, 5], [9, 9]]);
    assert!(rec.error.is_some_and(|e| e.contains("Idempotency-Key")));
    assert_eq!(
        rec.counts.processed + rec.counts.missing,
        rec.counts.enqueued
    );

    // Found after all: back to processing, missing rows cleared.
    assert!(store.reopen_incomplete("acct-late").await.expect("reopen"));
    let rec = record(&store, "acct-late").await;
    assert_eq!(rec.status, UploadStatus::Processing);
    assert_eq!((rec.counts.missing, rec.missing_rows.len()), (0, 0));

    // Neither acts on an upload that is not open for it.
    upload(&store, "acct-done", "completed", 1).await;
    assert!(
        !store
            .mark_incomplete("acct-done", &[[1, 1]], 1)
            .await
            .expect("no-op")
    );
    assert!(!store.reopen_incomplete("acct-done").await.expect("no-op"));
    assert!(
        !store
            .settle_interrupted("acct-done", 5, &[], 0)
            .await
            .expect("no-op")
    );
    let rec = record(&store, "acct-done").await;
    assert_eq!(
        (rec.status, rec.counts.missing),
        (UploadStatus::Completed, 0)
    );

    db.drop_db().await;
}

rowpipe_testkit::on_databases!(the_ledgers_account_for_every_stored_row: Sqlite, Postgres, MySql);

async fn an_interrupted_upload_is_settled_to_what_the_ledgers_show(backend: Backend) {
    let db = TestDb::create(backend).await.expect("test database");
    let store = db.store().await;
    // The last renewal recorded 2 rows enqueued; 6 reached the stream, of
    // which row 4 was lost.
    let seq = upload(&store, "acct-int", "interrupted", 2).await;
    let rows: Vec<JudgedRow> = [1, 2, 3, 5, 6]
        .into_iter()
        .map(|r| accept("acct-int", seq, r, &format!("r{r}@example.com")))
        .collect();
    store.apply_batch(&rows).await.expect("batch");
    let accounted = store.accounted_rows("acct-int").await.expect("accounted");
    let enqueued = 2.max(accounted.max());
    let missing = accounted.missing_ranges(enqueued);
    assert_eq!((enqueued, missing.clone()), (6, vec![[4, 4]]));
    assert!(
        store
            .settle_interrupted("acct-int", enqueued, &missing, 1)
            .await
            .expect("settle")
    );
    let rec = record(&store, "acct-int").await;
    assert_eq!(
        rec.status,
        UploadStatus::Interrupted,
        "the file was not read to its end"
    );
    assert_eq!(rec.counts.enqueued, 6);
    assert_eq!((rec.counts.missing, rec.missing_rows), (1, vec![[4, 4]]));
    assert_eq!(
        rec.counts.processed + rec.counts.missing,
        rec.counts.enqueued
    );
    // Never lowered.
    assert!(
        store
            .settle_interrupted("acct-int", 3, &[], 0)
            .await
            .expect("settle")
    );
    let rec = record(&store, "acct-int").await;
    assert_eq!((rec.counts.enqueued, rec.counts.missing), (6, 0));
    db.drop_db().await;
}

rowpipe_testkit::on_databases!(an_interrupted_upload_is_settled_to_what_the_ledgers_show: Sqlite, Postgres, MySql);
