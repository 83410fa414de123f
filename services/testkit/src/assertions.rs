//! Checks and waits the tests share: the ledger's accounting rule, the
//! group's acknowledgements, and waiting for a condition with a deadline.

use std::time::{Duration, Instant};

use rowpipe_core::stream::Connection;
use serde_json::Value;

/// Assert that an upload's status accounts for each of its `rows` exactly
/// once: `inserted + duplicates + rejected = rows`.
#[track_caller]
pub fn assert_every_row_counted_once(status: &Value, rows: i64) {
    let c = &status["counts"];
    let n = |k: &str| c[k].as_i64().unwrap_or(0);
    assert_eq!(
        n("inserted") + n("duplicates") + n("rejected"),
        rows,
        "every row counted once (inserted + duplicates + rejected): {status}"
    );
}

/// Acknowledged entries of a group so far (delivered minus pending).
pub async fn acknowledged(con: &mut Connection, stream: &str, group: &str) -> u64 {
    use redis::AsyncTypedCommands;
    let groups = con.xinfo_groups(stream).await.expect("XINFO GROUPS").groups;
    let g = groups.into_iter().find(|g| g.name == group).expect("group");
    (g.entries_read.unwrap_or(0) as u64).saturating_sub(g.pending as u64)
}

/// Wait until `check` returns true (or fail after `timeout`).
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while !check().await {
        if started.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
