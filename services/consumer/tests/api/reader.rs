//! The consumer's own `XREADGROUP` connection (`stream::reader`) against the
//! real Redis: it authenticates as an ACL user, selects its database, reads
//! entries with their fields in stream order, and reports a missing group
//! and a wrong password as such.

use std::time::Duration;

use redis::{ConnectionAddr, IntoConnectionInfo};
use rowpipe_core::stream::{self, RedisTarget, reader::GroupReader, reader::ReadGroup};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_read_connection_authenticates_selects_its_database_and_reads_in_order() {
    let base = rowpipe_testkit::redis_url();
    let info = base
        .as_str()
        .into_connection_info()
        .expect("REDIS_URL parses");
    let ConnectionAddr::Tcp(host, port) = info.addr().clone() else {
        panic!("this test needs REDIS_URL over TCP, got {base}");
    };
    let admin = redis::Client::open(base.as_str()).expect("client");
    let mut admin = admin
        .get_multiplexed_async_connection()
        .await
        .expect("admin connection");
    let id = uuid::Uuid::new_v4().simple().to_string();
    let (user, pass) = (format!("rowpipe-test-{id}"), format!("pw-{id}"));
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg(&user)
        .arg("on")
        .arg(format!(">{pass}"))
        .arg("~*")
        .arg("&*")
        .arg("+@all")
        .query_async(&mut admin)
        .await
        .expect("ACL SETUSER");
    let url = format!("redis://{user}:{pass}@{host}:{port}/5");
    let key = rowpipe_testkit::fresh_stream();

    let mut writer = RedisTarget::single(&url)
        .connect()
        .await
        .expect("writer in db 5");
    stream::ensure_group(&mut writer, &key, "g")
        .await
        .expect("group");
    let fields = [("upload_id", "u"), ("row_number", "1"), ("näme", "x\r\ny")];
    let _: String = redis::cmd("XADD")
        .arg(&key)
        .arg("*")
        .arg(&fields[..])
        .query_async(&mut writer)
        .await
        .expect("XADD");

    let mut reader = GroupReader::connect(&RedisTarget::single(&url), Duration::from_secs(1))
        .await
        .expect("reader connects");
    assert!(
        matches!(reader, GroupReader::Raw(_)),
        "plain TCP uses the own reader"
    );
    let request = ReadGroup {
        stream: &key,
        group: "g",
        consumer: "c",
        count: 10,
        block: Duration::from_millis(100),
    };
    let entries = reader.read(request).await.expect("read");
    assert_eq!(entries.len(), 1);
    let got: Vec<(&str, &str)> = entries[0]
        .1
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(got, fields.to_vec());
    // Nothing new: the block passes and the reply is empty.
    assert!(reader.read(request).await.expect("empty read").is_empty());
    // A group that does not exist is reported as such.
    let missing = reader
        .read(ReadGroup {
            group: "no-such-group",
            ..request
        })
        .await
        .expect_err("no group");
    assert!(missing.is_no_group(), "{missing}");
    // The connection is still usable after an error reply.
    assert!(reader.read(request).await.expect("read again").is_empty());

    let wrong = format!("redis://{user}:wrong@{host}:{port}/5");
    let refused = GroupReader::connect(&RedisTarget::single(&wrong), Duration::from_secs(1)).await;
    let Err(refused) = refused else {
        panic!("a wrong password was accepted");
    };
    assert!(refused.to_string().contains("WRONGPASS"), "{refused}");

    let _: () = redis::cmd("DEL")
        .arg(&key)
        .query_async(&mut writer)
        .await
        .expect("DEL");
    let _: () = redis::cmd("ACL")
        .arg("DELUSER")
        .arg(&user)
        .query_async(&mut admin)
        .await
        .expect("ACL DELUSER");
}
