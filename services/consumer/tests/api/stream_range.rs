//! What loss detection asks Redis about an upload's range of entry ids
//! (`stream::tip`, `stream::holds_range`), against the real Redis: an entry
//! counts as still in the stream while it is undelivered or pending, and a
//! missing stream or group is healed and holds nothing.

use redis::AsyncTypedCommands;
use rowpipe_core::stream;

const GROUP: &str = "rowpipe-test-range";

/// Read up to `count` new entries as consumer `c`; their ids.
async fn read(con: &mut rowpipe_core::stream::Connection, key: &str, count: usize) -> Vec<String> {
    let opts = redis::streams::StreamReadOptions::default()
        .group(GROUP, "c")
        .count(count);
    let reply = con
        .xread_options(&[key], &[">"], &opts)
        .await
        .expect("XREADGROUP");
    reply
        .into_iter()
        .flat_map(|r| r.keys)
        .flat_map(|k| k.ids)
        .map(|e| e.id)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_is_held_while_an_entry_of_it_is_undelivered_or_pending() {
    let mut con = stream::RedisTarget::single(&rowpipe_testkit::redis_url())
        .connect()
        .await
        .expect("connect to redis");
    let key = rowpipe_testkit::fresh_stream();

    assert_eq!(stream::tip(&mut con, &key).await.expect("tip"), "0-0");
    assert!(
        !stream::holds_range(&mut con, &key, GROUP, None, "0-0")
            .await
            .expect("holds_range on a missing stream"),
        "a missing stream holds nothing"
    );
    let groups = con.xinfo_groups(&key).await.expect("the stream exists now");
    assert!(
        groups.groups.iter().any(|g| g.name == GROUP),
        "holds_range created the missing group"
    );

    let mut ids = Vec::new();
    for i in 0..5 {
        let id: Option<String> = con.xadd(&key, "*", &[("n", i)]).await.expect("XADD");
        ids.push(id.expect("an id"));
    }
    let (a, c, d, e) = (&ids[0], &ids[2], &ids[3], &ids[4]);
    assert_eq!(stream::tip(&mut con, &key).await.expect("tip"), *e);
    let holds =
        async |con: &mut rowpipe_core::stream::Connection, first: Option<&str>, last: &str| {
            stream::holds_range(con, &key, GROUP, first, last)
                .await
                .expect("holds_range")
        };

    assert!(holds(&mut con, None, e).await, "all undelivered");
    assert!(holds(&mut con, Some(d), e).await, "the tail undelivered");

    assert_eq!(read(&mut con, &key, 3).await, ids[..3].to_vec());
    assert!(holds(&mut con, Some(a), c).await, "the head is pending");
    assert!(
        holds(&mut con, Some(d), e).await,
        "the tail is still undelivered"
    );

    let acked = con.xack(&key, GROUP, &ids[..3]).await.expect("XACK");
    assert_eq!(acked, 3);
    assert!(!holds(&mut con, Some(a), c).await, "the head is done with");
    assert!(!holds(&mut con, None, c).await, "from the start too");
    assert!(holds(&mut con, Some(a), e).await, "the tail is undelivered");

    assert_eq!(read(&mut con, &key, 10).await, ids[3..].to_vec());
    assert!(holds(&mut con, Some(a), e).await, "the tail is pending");
    con.xack(&key, GROUP, &ids[3..]).await.expect("XACK");
    assert!(
        !holds(&mut con, Some(a), e).await,
        "everything is done with"
    );
    assert!(!holds(&mut con, None, e).await);
    // A range past the tip holds nothing either.
    assert!(!holds(&mut con, Some(e), "99999999999999-0").await);

    // The group lost (entries and stream stay): healed, at 0, so every
    // entry is undelivered to it again.
    let _: bool = con
        .xgroup_destroy(&key, GROUP)
        .await
        .expect("XGROUP DESTROY");
    assert!(
        holds(&mut con, Some(a), e).await,
        "a missing group is recreated at 0, so the entries still in the stream are undelivered to it"
    );
    assert!(
        holds(&mut con, Some(a), e).await,
        "the new group starts at 0"
    );

    let _: usize = con.del(&key).await.expect("DEL");
}
