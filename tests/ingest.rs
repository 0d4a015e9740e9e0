//! Ingestion of stock changes from a Redis Stream: duplicates, disorder,
//! malformed entries and a crashed consumer, with nothing lost or doubled.

mod common;

use std::time::Duration;

use common::*;

const STREAM: &str = "sl:ingest";

async fn physical(svc: &TestService, sku: &str) -> Option<String> {
    let (status, body, _) = http_get(svc.http_addr, &format!("/stock/available?sku={sku}&warehouse=W"), None).await;
    (status == 200).then(|| body["results"][0]["records"][0]["physical"].as_str().unwrap().to_owned())
}

async fn dead_letters(svc: &TestService) -> Vec<std::collections::HashMap<String, String>> {
    let mut conn = svc.redis_conn().await;
    let entries: Vec<(String, Vec<String>)> =
        redis::cmd("XRANGE").arg("{sl:ingest}:dead").arg("-").arg("+").query_async(&mut conn).await.unwrap();
    entries.into_iter().map(|(_, flat)| flat.chunks(2).map(|kv| (kv[0].clone(), kv[1].clone())).collect()).collect()
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
    let (status, stats, _) = http_get(svc.http_addr, "/ingest/stats", None).await;
    assert_eq!(status, 200);
    assert_eq!(
        (stats["dead_letters"].as_u64(), stats["pending"].as_u64(), stats["lag"].as_u64()),
        (Some(5), Some(0), Some(0))
    );
}

#[tokio::test]
async fn entries_of_a_crashed_consumer_are_claimed_and_applied_once() {
    let redis = stocklock::embedded_redis::EmbeddedRedis::start(std::path::Path::new("redis-server")).await.unwrap();
    let mut conn = redis::Client::open(redis.url()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(STREAM)
        .arg("stocklock")
        .arg("0")
        .arg("MKSTREAM")
        .query_async(&mut conn)
        .await
        .unwrap();
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
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("stocklock")
        .arg("crashed-replica")
        .arg("COUNT")
        .arg(3)
        .arg("STREAMS")
        .arg(STREAM)
        .arg(">")
        .query_async(&mut conn)
        .await
        .unwrap();
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

async fn xadd_raw(conn: &mut redis::aio::MultiplexedConnection, fields: &[(&str, &str)]) {
    let mut cmd = redis::cmd("XADD");
    cmd.arg(STREAM).arg("*");
    for (k, v) in fields {
        cmd.arg(*k).arg(*v);
    }
    let _: String = cmd.query_async(conn).await.unwrap();
}
