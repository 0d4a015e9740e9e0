//! Ingestion of stock changes from a Redis Stream: duplicates, disorder,
//! malformed entries and a crashed consumer, with nothing lost or doubled.

mod common;

use std::time::Duration;

use common::*;
use stocklock::pb;

const STREAM: &str = "sl:ingest";

async fn physical(svc: &TestService, sku: &str) -> Option<String> {
    let (status, body, _) = http_get(svc.http_addr, &format!("/stock/available?sku={sku}&warehouse=W"), None).await;
    (status == 200).then(|| body["results"][0]["records"][0]["physical"].as_str().unwrap().to_owned())
}

#[tokio::test]
async fn a_pushed_snapshot_shows_up_over_http_within_a_second() {
    let svc = start().await;
    xadd(
        &svc,
        STREAM,
        &[("type", "snapshot"), ("sku", "S"), ("warehouse_id", "W"), ("physical", "12"), ("source_version", "1")],
    )
    .await;
    assert!(eventually(Duration::from_secs(1), || async { physical(&svc, "S").await.as_deref() == Some("12") }).await);
}

#[tokio::test]
async fn duplicate_and_out_of_order_snapshots_are_ignored() {
    let svc = start().await;
    let snapshot = |physical: &'static str, version: &'static str| {
        [("type", "snapshot"), ("sku", "S"), ("warehouse_id", "W"), ("physical", physical), ("source_version", version)]
    };
    xadd(&svc, STREAM, &snapshot("10", "5")).await;
    xadd(&svc, STREAM, &snapshot("99", "4")).await;
    xadd(&svc, STREAM, &snapshot("98", "5")).await;
    xadd(
        &svc,
        STREAM,
        &[("type", "snapshot"), ("sku", "DONE"), ("warehouse_id", "W"), ("physical", "1"), ("source_version", "1")],
    )
    .await;
    assert!(eventually(Duration::from_secs(2), || async { physical(&svc, "DONE").await.is_some() }).await);
    assert_eq!(physical(&svc, "S").await.as_deref(), Some("10"));
    assert!(dead_letters(&svc).await.is_empty());
}

#[tokio::test]
async fn a_delta_delivered_twice_applies_once() {
    let svc = start().await;
    svc.stock("S", "W", "10").await;
    let delta = [
        ("type", "delta"),
        ("sku", "S"),
        ("warehouse_id", "W"),
        ("event_id", "ev-1"),
        ("physical_delta", "5"),
        ("reason", "inbound"),
    ];
    xadd(&svc, STREAM, &delta).await;
    xadd(&svc, STREAM, &delta).await;
    // The same event id with other content is a producer bug: dead-lettered.
    xadd(
        &svc,
        STREAM,
        &[("type", "delta"), ("sku", "S"), ("warehouse_id", "W"), ("event_id", "ev-1"), ("physical_delta", "7")],
    )
    .await;
    assert!(eventually(Duration::from_secs(2), || async { dead_letters(&svc).await.len() == 1 }).await);
    assert_eq!(physical(&svc, "S").await.as_deref(), Some("15"));
    assert_eq!(dead_letters(&svc).await[0]["dead.reason"], "IDEMPOTENCY_KEY_REUSED");
}

#[tokio::test]
async fn malformed_entries_are_dead_lettered_and_never_block_the_stream() {
    let svc = start().await;
    svc.stock("S", "W", "10").await;
    let bad: [&[(&str, &str)]; 5] = [
        &[("type", "teleport"), ("sku", "S"), ("warehouse_id", "W")],
        &[("type", "snapshot"), ("sku", "S"), ("warehouse_id", "W"), ("source_version", "9")],
        &[("type", "snapshot"), ("sku", "S"), ("warehouse_id", "W"), ("physical", "ten"), ("source_version", "9")],
        &[
            ("type", "snapshot"),
            ("sku", "S"),
            ("warehouse_id", "W"),
            ("physical", "1"),
            ("unit_scale", "12"),
            ("source_version", "9"),
        ],
        &[("type", "delta"), ("sku", "NOPE"), ("warehouse_id", "W"), ("event_id", "e"), ("physical_delta", "1")],
    ];
    let mut ids = Vec::new();
    for entry in bad {
        ids.push(xadd(&svc, STREAM, entry).await);
    }
    xadd(
        &svc,
        STREAM,
        &[("type", "delta"), ("sku", "S"), ("warehouse_id", "W"), ("event_id", "good"), ("physical_delta", "-1")],
    )
    .await;
    assert!(eventually(Duration::from_secs(2), || async { physical(&svc, "S").await.as_deref() == Some("9") }).await);
    let dead = dead_letters(&svc).await;
    let reasons: Vec<(&str, &str)> =
        dead.iter().map(|d| (d["dead.reason"].as_str(), d["dead.entry_id"].as_str())).collect();
    assert_eq!(
        reasons,
        [
            ("INVALID_ARGUMENT", ids[0].as_str()),
            ("INVALID_ARGUMENT", ids[1].as_str()),
            ("INVALID_ARGUMENT", ids[2].as_str()),
            ("INVALID_ARGUMENT", ids[3].as_str()),
            ("SKU_NOT_AVAILABLE_IN_WAREHOUSE", ids[4].as_str()),
        ]
    );
    // The original payload travels with the reason.
    assert_eq!((dead[0]["type"].as_str(), dead[2]["physical"].as_str()), ("teleport", "ten"));
    assert!(dead[1]["dead.error"].contains("physical"), "{:?}", dead[1]);
    // Operators read them through ListDeadLetters: newest first, in pages.
    let mut admin = svc.admin().await;
    let list = |page_size, page_token: &str| pb::ListDeadLettersRequest { page_size, page_token: page_token.into() };
    let first = admin.list_dead_letters(list(3, "")).await.unwrap().into_inner();
    let rest = admin.list_dead_letters(list(3, &first.next_page_token)).await.unwrap().into_inner();
    assert!(rest.next_page_token.is_empty(), "two entries were left: {rest:?}");
    let listed: Vec<(pb::ErrorReason, String)> =
        first.letters.iter().chain(&rest.letters).map(|l| (l.reason(), l.fields["dead.entry_id"].clone())).collect();
    let mut expected: Vec<(pb::ErrorReason, String)> = dead
        .iter()
        .map(|d| (pb::ErrorReason::from_str_name(&d["dead.reason"]).unwrap(), d["dead.entry_id"].clone()))
        .collect();
    expected.reverse();
    assert_eq!(listed, expected);
    let newest = &first.letters[0];
    assert_eq!((newest.fields["sku"].as_str(), newest.error.is_empty()), ("NOPE", false));
    assert!(newest.at.is_some_and(|at| at.seconds > 0), "{newest:?}");
    let bad = admin.list_dead_letters(list(3, "not-a-token")).await;
    assert_eq!(bad_fields(&expect_error(bad, tonic::Code::InvalidArgument, "INVALID_ARGUMENT")), ["page_token"]);
    let (status, stats, _) = http_get(svc.http_addr, "/ingest/stats", None).await;
    assert_eq!(status, 200);
    assert_eq!(
        (stats["dead_letters"].as_u64(), stats["pending"].as_u64(), stats["lag"].as_u64()),
        (Some(5), Some(0), Some(0))
    );
}

#[tokio::test]
async fn entries_of_a_crashed_consumer_are_claimed_and_applied_once() {
    let (redis, mut conn) = bare_redis().await;
    create_group(&mut conn, "stocklock").await;
    // A first service sets the stock, then five deltas of +1 arrive.
    let svc = serve(&redis.url(), &["--ingest-claim-idle", "300ms"]).await;
    svc.stock("S", "W", "100").await;
    // Stopped, not just dropped: its consumer must not take the new entries.
    svc.stop().await.unwrap();
    for i in 0..5 {
        let event_id = format!("ev-{i}");
        xadd_raw(
            &mut conn,
            &[("type", "delta"), ("sku", "S"), ("warehouse_id", "W"), ("event_id", &event_id), ("physical_delta", "1")],
        )
        .await;
    }
    // A consumer reads three of them and dies before acknowledging.
    read_unacknowledged(&mut conn, "stocklock", "crashed-replica", 3).await;
    // Another replica takes the other two at once and the three after the idle time.
    let svc = serve(&redis.url(), &["--ingest-claim-idle", "300ms"]).await;
    assert!(eventually(Duration::from_secs(5), || async { physical(&svc, "S").await.as_deref() == Some("105") }).await);
    // An entry is acknowledged just after it is applied.
    assert!(eventually(Duration::from_secs(5), || group_settled(conn.clone())).await, "entries left pending");
    // Redelivering everything once more changes nothing: wait until the
    // group has read and acknowledged every entry again.
    let _: () =
        redis::cmd("XGROUP").arg("SETID").arg(STREAM).arg("stocklock").arg("0").query_async(&mut conn).await.unwrap();
    assert!(eventually(Duration::from_secs(10), || group_settled(conn.clone())).await, "not redelivered");
    assert_eq!(physical(&svc, "S").await.as_deref(), Some("105"));
}

/// True when the group has read every entry of the stream (lag 0) and
/// acknowledged every entry it read.
async fn group_settled(mut conn: redis::aio::MultiplexedConnection) -> bool {
    let groups: Vec<std::collections::HashMap<String, redis::Value>> =
        redis::cmd("XINFO").arg("GROUPS").arg(STREAM).query_async(&mut conn).await.unwrap();
    let group = groups.iter().find(|g| g.get("name") == Some(&redis::Value::BulkString(b"stocklock".to_vec())));
    let figure =
        |name: &str| group.and_then(|g| g.get(name)).and_then(|v| redis::from_redis_value::<i64>(v.clone()).ok());
    figure("lag") == Some(0) && figure("pending") == Some(0)
}

/// A fresh redis-server with no service on it yet, and a connection to it.
async fn bare_redis() -> (stocklock::embedded_redis::EmbeddedRedis, redis::aio::MultiplexedConnection) {
    let redis = stocklock::embedded_redis::EmbeddedRedis::start(std::path::Path::new("redis-server")).await.unwrap();
    let conn = redis::Client::open(redis.url()).unwrap().get_multiplexed_async_connection().await.unwrap();
    (redis, conn)
}

/// Creates consumer group `group` of the stream, from its start.
async fn create_group(conn: &mut redis::aio::MultiplexedConnection, group: &str) {
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(STREAM)
        .arg(group)
        .arg("0")
        .arg("MKSTREAM")
        .query_async(conn)
        .await
        .unwrap();
}

/// `consumer` of `group` reads up to `count` new entries and acknowledges
/// none of them (a replica that dies, or a reader that is behind).
async fn read_unacknowledged(conn: &mut redis::aio::MultiplexedConnection, group: &str, consumer: &str, count: usize) {
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(group)
        .arg(consumer)
        .arg("COUNT")
        .arg(count)
        .arg("STREAMS")
        .arg(STREAM)
        .arg(">")
        .query_async(conn)
        .await
        .unwrap();
}

async fn xadd_raw(conn: &mut redis::aio::MultiplexedConnection, fields: &[(&str, &str)]) {
    let mut cmd = redis::cmd("XADD");
    cmd.arg(STREAM).arg("*");
    for (k, v) in fields {
        cmd.arg(*k).arg(*v);
    }
    let _: String = cmd.query_async(conn).await.unwrap();
}

/// A stock record's physical and reserved figures, read over gRPC.
async fn figures(svc: &TestService, sku: &str) -> (String, String) {
    let record = svc.record(sku, "W").await;
    (record.physical, record.reserved)
}

#[tokio::test]
async fn changes_stuck_with_a_dead_consumer_are_applied_in_stream_order() {
    // A snapshot counts the deltas before it, and a release of a reservation
    // follows the reservation: applied in any other order, the first
    // doubles stock (110, five phantom units sold) and the second refuses
    // the release as negative stock and loses it.
    let (redis, mut conn) = bare_redis().await;
    create_group(&mut conn, "stocklock").await;
    let snapshot = |physical, reserved, version| {
        [
            ("type", "snapshot"),
            ("sku", "S"),
            ("warehouse_id", "W"),
            ("physical", physical),
            ("reserved", reserved),
            ("source_version", version),
        ]
    };
    xadd_raw(&mut conn, &snapshot("100", "0", "1")).await;
    let delta = |event_id, field, by| {
        [("type", "delta"), ("sku", "S"), ("warehouse_id", "W"), ("event_id", event_id), (field, by)]
    };
    xadd_raw(&mut conn, &delta("e1", "physical_delta", "5")).await;
    xadd_raw(&mut conn, &delta("e2", "reserved_delta", "1")).await;
    // A replica reads those three and dies before applying them.
    read_unacknowledged(&mut conn, "stocklock", "crashed-replica", 3).await;
    xadd_raw(&mut conn, &snapshot("105", "1", "2")).await;
    xadd_raw(&mut conn, &delta("e3", "reserved_delta", "-1")).await;

    let svc = serve(&redis.url(), &["--ingest-claim-idle", "300ms"]).await;
    assert!(eventually(Duration::from_secs(10), || group_settled(conn.clone())).await, "entries left pending");
    assert_eq!(figures(&svc, "S").await, ("105".to_owned(), "0".to_owned()));
    assert!(dead_letters(&svc).await.is_empty(), "{:?}", dead_letters(&svc).await);
}

#[tokio::test]
async fn a_new_consumer_group_does_not_apply_deltas_again() {
    // A delta's event_id is remembered for the idempotency retention. A new
    // (or renamed) group must not start before that window, or it applies
    // again every delta whose record is gone.
    let (redis, mut conn) = bare_redis().await;
    let retention = ["--idempotency-retention", "1s", "--max-hold", "1s", "--max-ttl", "1s", "--default-ttl", "1s"];
    let svc = serve(&redis.url(), &retention).await;
    svc.stock("S", "W", "100").await;
    let delta = |event_id| {
        [("type", "delta"), ("sku", "S"), ("warehouse_id", "W"), ("event_id", event_id), ("physical_delta", "1")]
    };
    xadd_raw(&mut conn, &delta("e1")).await;
    assert!(eventually(Duration::from_secs(5), || async { figures(&svc, "S").await.0 == "101" }).await);
    svc.stop().await.unwrap();
    // Past the retention, a replica of a new group joins and a new delta comes.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let svc = serve(&redis.url(), &[&retention[..], &["--ingest-group", "renamed"]].concat()).await;
    xadd_raw(&mut conn, &delta("e2")).await;
    assert!(eventually(Duration::from_secs(5), || async { figures(&svc, "S").await.0 != "101" }).await);
    let settled = || async {
        let groups: Vec<std::collections::HashMap<String, redis::Value>> =
            redis::cmd("XINFO").arg("GROUPS").arg(STREAM).query_async(&mut conn.clone()).await.unwrap();
        groups.iter().any(|g| {
            g.get("name") == Some(&redis::Value::BulkString(b"renamed".to_vec()))
                && g.get("lag").and_then(|v| redis::from_redis_value::<i64>(v.clone()).ok()) == Some(0)
                && g.get("pending").and_then(|v| redis::from_redis_value::<i64>(v.clone()).ok()) == Some(0)
        })
    };
    assert!(eventually(Duration::from_secs(5), settled).await, "the new group did not catch up");
    assert_eq!(figures(&svc, "S").await.0, "102", "e1 applied twice");
}

#[tokio::test]
async fn the_stream_is_trimmed_past_the_retention_behind_every_group() {
    // Entries older than the dedup window that every group has read are
    // trimmed (whole stream nodes of 100 entries at a time); a group that
    // is behind keeps what it has not read yet.
    let (redis, mut conn) = bare_redis().await;
    let retention = ["--idempotency-retention", "1s", "--max-hold", "1s", "--max-ttl", "1s", "--default-ttl", "1s"];
    let svc = serve(&redis.url(), &retention).await;
    svc.stock("S", "W", "0").await;
    for i in 0..250 {
        let event_id = format!("e{i}");
        xadd_raw(
            &mut conn,
            &[("type", "delta"), ("sku", "S"), ("warehouse_id", "W"), ("event_id", &event_id), ("physical_delta", "1")],
        )
        .await;
    }
    assert!(eventually(Duration::from_secs(10), || async { figures(&svc, "S").await.0 == "250" }).await);
    svc.stop().await.unwrap();
    // Another reader of the stream has read 150 entries.
    create_group(&mut conn, "audit").await;
    read_unacknowledged(&mut conn, "audit", "auditor", 150).await;
    let ids: Vec<(String, redis::Value)> =
        redis::cmd("XRANGE").arg(STREAM).arg("-").arg("+").query_async(&mut conn).await.unwrap();
    let ids: Vec<String> = ids.into_iter().map(|(id, _)| id).collect();
    let _: () = redis::cmd("XACK").arg(STREAM).arg("audit").arg(&ids[..150]).query_async(&mut conn).await.unwrap();
    // Past the retention, a new reader trims as it starts.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let _svc = serve(&redis.url(), &retention).await;
    let len = || async { redis::cmd("XLEN").arg(STREAM).query_async::<u64>(&mut conn.clone()).await.unwrap() };
    assert!(eventually(Duration::from_secs(5), || async { len().await < 250 }).await, "nothing trimmed");
    // The first node (entries 0..99) went; the one holding the audit group's
    // next entry stays.
    assert_eq!(len().await, 150);
}

#[tokio::test]
async fn an_entry_a_stale_reader_took_is_applied_in_order_by_the_reader() {
    // A reader that lost its lease while paused can still have a read
    // reach Redis late and take entries the current reader then never
    // sees: here a stale consumer takes a delta the moment it is written
    // (one MULTI, before the blocked reader is served), and the snapshot
    // that counts it comes next. The reader must apply the delta, and
    // before the snapshot, not leave it pending.
    let (redis, mut conn) = bare_redis().await;
    let svc = serve(&redis.url(), &["--ingest-claim-idle", "300ms"]).await;
    let snapshot = |physical, version| {
        [("type", "snapshot"), ("sku", "S"), ("warehouse_id", "W"), ("physical", physical), ("source_version", version)]
    };
    xadd_raw(&mut conn, &snapshot("100", "1")).await;
    assert!(eventually(Duration::from_secs(5), || async { physical(&svc, "S").await.as_deref() == Some("100") }).await);
    let delta = [("type", "delta"), ("sku", "S"), ("warehouse_id", "W"), ("event_id", "e1"), ("physical_delta", "5")];
    let mut stale = redis::pipe();
    stale.atomic();
    let add = stale.cmd("XADD").arg(STREAM).arg("*");
    for (k, v) in delta {
        add.arg(k).arg(v);
    }
    stale.cmd("XREADGROUP").arg("GROUP").arg("stocklock").arg("stale-reader").arg("COUNT").arg(1).arg("STREAMS");
    stale.arg(STREAM).arg(">");
    let _: redis::Value = stale.query_async(&mut conn).await.unwrap();
    xadd_raw(&mut conn, &snapshot("105", "2")).await;
    assert!(eventually(Duration::from_secs(5), || group_settled(conn.clone())).await, "the delta was left pending");
    assert_eq!(figures(&svc, "S").await.0, "105");
}
