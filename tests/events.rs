//! The lifecycle event stream: one event per change, written by the change,
//! and watchers that resume without gaps.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use futures::StreamExt;
use stocklock::pb;
use stocklock::pb::AvailabilityAction as Action;

/// The fields every event has, in this order (a fixed schema: a stream
/// stores the names once per node).
const SCHEMA: [&str; 16] = [
    "action",
    "record",
    "unit_scale",
    "physical",
    "reserved",
    "in_transit",
    "locked",
    "version",
    "available_before",
    "token",
    "nonce",
    "quantity",
    "holder",
    "order_id",
    "batch_id",
    "detail",
];

/// Every event in the streams, as (id, fields) with the derived figures
/// watchers see (sku, warehouse_id, available, lock_id, decimals): oldest
/// first within a partition; partitions merged by time (the same ms in two
/// partitions has no order).
async fn events(svc: &TestService) -> Vec<(String, HashMap<String, String>)> {
    let mut conn = svc.redis_conn().await;
    let mut all = Vec::new();
    for partition in 0..svc.keys().partitions() {
        let entries: Vec<(String, Vec<String>)> = redis::cmd("XRANGE")
            .arg(svc.keys().events(partition))
            .arg("-")
            .arg("+")
            .query_async(&mut conn)
            .await
            .unwrap();
        for (id, flat) in entries {
            let names: Vec<&str> = flat.iter().step_by(2).map(String::as_str).collect();
            assert_eq!(names, SCHEMA, "every event has the fixed schema");
            let event = stocklock::domain::LifecycleEvent {
                partition,
                id: stocklock::domain::EventId::parse(&id).unwrap(),
                fields: flat.chunks(2).map(|kv| (kv[0].clone(), kv[1].clone())).collect(),
            };
            let mut view: HashMap<String, String> = event.fields.clone().into_iter().collect();
            let (sku, warehouse) = event.record();
            view.insert("sku".into(), sku.into());
            view.insert("warehouse_id".into(), warehouse.into());
            view.insert("available".into(), event.available());
            view.insert("lock_id".into(), event.lock_id());
            for figure in ["physical", "reserved", "in_transit", "locked", "available_before", "quantity"] {
                view.insert(figure.into(), event.decimal(figure));
            }
            all.push((id, view));
        }
    }
    all.sort_by_key(|(id, _): &(String, HashMap<String, String>)| {
        id.split('-').next().unwrap().parse::<u64>().unwrap()
    });
    all
}

fn actions(events: &[(String, HashMap<String, String>)]) -> Vec<String> {
    events.iter().map(|(_, f)| f["action"].clone()).collect()
}

#[tokio::test]
async fn every_change_appends_exactly_one_event_with_its_figures() {
    let svc = start_with(&["--min-ttl", "100ms", "--sweep-interval", "50ms"]).await;
    svc.stock("S", "W", "10").await;
    let mut client = svc.client.clone();
    let a = svc.lock("S", "W", "3", "r1").await.unwrap().lock.unwrap();
    client
        .renew(pb::RenewRequest {
            lock_ids: vec![a.lock_id.clone()],
            holder: "order-service".into(),
            request_id: "rn".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    client
        .commit(pb::CommitRequest {
            lock_id: a.lock_id.clone(),
            quantity: "2".into(),
            request_id: "c".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let b = svc.lock("S", "W", "4", "r2").await.unwrap().lock.unwrap();
    svc.release(&b.lock_id, "rel").await.unwrap();
    // Long enough that the adjustment below lands before it expires.
    let mut short = lock_request("S", "W", "1", "r3");
    short.ttl = millis(1500);
    let c = client.lock(short).await.unwrap().into_inner().lock.unwrap();
    client
        .adjust_stock(pb::AdjustStockRequest {
            sku: "S".into(),
            warehouse_id: "W".into(),
            reserved_delta: "1".into(),
            request_id: "adj".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    // Failed and replayed calls add nothing.
    svc.lock("S", "W", "100", "r4").await.unwrap_err();
    svc.lock("S", "W", "3", "r1").await.unwrap();
    // The last event is the sweeper's: wait for it, not for a fixed time.
    assert!(
        eventually(Duration::from_secs(10), || async { events(&svc).await.len() >= 9 }).await,
        "the sweeper did not expire the short lock"
    );

    let all = events(&svc).await;
    assert_eq!(
        actions(&all),
        ["stock.set", "lock", "renew", "commit", "lock", "release", "lock", "stock.adjust", "expire"],
        "{all:#?}"
    );
    let field = |i: usize, name: &str| all[i].1[name].clone();
    assert_eq!(
        (field(1, "lock_id"), field(1, "available_before"), field(1, "available")),
        (a.lock_id.clone(), "10".into(), "7".into())
    );
    assert_eq!(
        (field(1, "holder"), field(1, "order_id"), field(1, "quantity")),
        ("order-service".into(), "order-r1".into(), "3".into())
    );
    assert_eq!(field(1, "token"), a.fencing_token.to_string());
    // A commit's detail is what it committed; the rest of the lock was released.
    assert_eq!(
        (field(3, "detail"), field(3, "quantity"), field(3, "physical"), field(3, "available")),
        ("2".into(), "3".into(), "8".into(), "8".into())
    );
    assert_eq!((field(5, "lock_id"), field(5, "available")), (b.lock_id.clone(), "8".into()));
    assert_eq!((field(7, "reserved"), field(7, "available")), ("1".into(), "6".into()));
    assert_eq!(
        (field(8, "lock_id"), field(8, "available_before"), field(8, "available")),
        (c.lock_id, "6".into(), "7".into())
    );
    // Versions of one record increase along the stream with every change of
    // its figures (a renewal moves an expiry, not a figure).
    let versions: Vec<(String, u64)> =
        all.iter().map(|(_, f)| (f["action"].clone(), f["version"].parse().unwrap())).collect();
    for w in versions.windows(2) {
        if w[1].0 == "renew" {
            assert_eq!(w[0].1, w[1].1, "{versions:?}");
        } else {
            assert!(w[0].1 < w[1].1, "{versions:?}");
        }
    }
}

#[tokio::test]
async fn a_forced_unlock_and_a_batch_append_one_event_per_lock() {
    let svc = start().await;
    svc.stock("A", "W", "5").await;
    svc.stock("B", "W", "5").await;
    let batch = pb::BatchLockRequest {
        policy: 0,
        lines: vec![
            pb::BatchLockLine { candidates: None, sku: "A".into(), warehouse_id: "W".into(), quantity: "1".into() },
            pb::BatchLockLine { candidates: None, sku: "B".into(), warehouse_id: "W".into(), quantity: "2".into() },
        ],
        ttl: secs(60),
        order_id: "o".into(),
        request_id: "b".into(),
        holder: "h".into(),
        session_id: String::new(),
    };
    let locks = svc.client.clone().batch_lock(batch).await.unwrap().into_inner();
    force_unlock(&svc, pb::lock_selector::Target::BatchId(locks.batch_id.clone())).await;
    let all = events(&svc).await;
    // In order per record; two records may share a partition or not.
    for sku in ["A", "B"] {
        let mine: Vec<_> = all.iter().filter(|(_, f)| f["sku"] == sku).cloned().collect();
        assert_eq!(actions(&mine), ["stock.set", "lock", "force_release"], "{sku}");
        assert_eq!(mine[1].1["batch_id"], locks.batch_id);
        assert_eq!(
            mine[2].1["detail"], "bob\ntest",
            "a forced release's detail: its approver, and the request's reason"
        );
    }
}

#[tokio::test]
async fn a_watcher_resumes_after_a_disconnect_without_missing_a_change() {
    let svc = start().await;
    svc.stock("S", "W", "10").await;
    svc.stock("OTHER", "W", "10").await;
    let keys = vec![pb::StockKey { sku: "S".into(), warehouse_id: "W".into() }];
    let mut stream = svc
        .client
        .clone()
        .watch_availability(pb::WatchAvailabilityRequest { keys: keys.clone(), after_event_id: String::new() })
        .await
        .unwrap()
        .into_inner();
    let snapshot = stream.next().await.unwrap().unwrap().event.unwrap();
    assert_eq!((snapshot.action(), snapshot.available.as_str()), (Action::Snapshot, "10"));

    svc.lock("OTHER", "W", "1", "x").await.unwrap();
    let lock = svc.lock("S", "W", "3", "r1").await.unwrap().lock.unwrap();
    let event = tokio::time::timeout(Duration::from_secs(5), stream.next()).await.unwrap().unwrap().unwrap();
    let event = event.event.unwrap();
    assert_eq!(
        (event.action(), event.lock_id.as_str(), event.available.as_str()),
        (Action::Lock, lock.lock_id.as_str(), "7")
    );
    drop(stream);

    // Changes while disconnected.
    svc.release(&lock.lock_id, "rel").await.unwrap();
    svc.lock("S", "W", "5", "r2").await.unwrap();
    let mut resumed = svc
        .client
        .clone()
        .watch_availability(pb::WatchAvailabilityRequest { keys, after_event_id: event.event_id.clone() })
        .await
        .unwrap()
        .into_inner();
    let mut seen = Vec::new();
    for _ in 0..2 {
        let e = tokio::time::timeout(Duration::from_secs(5), resumed.next()).await.unwrap().unwrap().unwrap();
        let e = e.event.unwrap();
        seen.push((e.action(), e.available));
    }
    assert_eq!(seen, [(Action::Release, "10".to_owned()), (Action::Lock, "5".to_owned())]);
    // And then live again.
    svc.stock("S", "W", "20").await;
    let e = tokio::time::timeout(Duration::from_secs(5), resumed.next()).await.unwrap().unwrap().unwrap();
    let e = e.event.unwrap();
    assert_eq!((e.action(), e.available.as_str()), (Action::StockSet, "15"));
}

#[tokio::test]
async fn a_resume_point_that_was_trimmed_is_refused() {
    let svc = start_with(&["--events-max-len", "1"]).await;
    svc.stock("S", "W", "10").await;
    let mut conn = svc.redis_conn().await;
    let stream = svc.keys().events(svc.partition("S"));
    let first: Vec<(String, Vec<String>)> =
        redis::cmd("XRANGE").arg(&stream).arg("-").arg("+").query_async(&mut conn).await.unwrap();
    let first_id = first[0].0.clone();
    for i in 0..3 {
        let lock = svc.lock("S", "W", "1", &format!("q{i}")).await.unwrap().lock.unwrap();
        svc.release(&lock.lock_id, &format!("rel{i}")).await.unwrap();
    }
    let _: i64 = redis::cmd("XTRIM").arg(&stream).arg("MAXLEN").arg(1).query_async(&mut conn).await.unwrap();
    let keys = vec![pb::StockKey { sku: "S".into(), warehouse_id: "W".into() }];
    // The resume point of a watch of S: its partition's position.
    let after_event_id =
        if svc.keys().partitions() == 1 { first_id } else { format!("{}/{first_id}", svc.partition("S")) };
    let result = svc.client.clone().watch_availability(pb::WatchAvailabilityRequest { keys, after_event_id }).await;
    let status = expect_error(result, tonic::Code::InvalidArgument, "INVALID_ARGUMENT");
    assert_eq!(bad_fields(&status), ["after_event_id"]);
}

#[tokio::test]
async fn shutdown_ends_watch_streams_instead_of_waiting_for_them() {
    let svc = start().await;
    svc.stock("S", "W", "10").await;
    let keys = vec![pb::StockKey { sku: "S".into(), warehouse_id: "W".into() }];
    let mut stream = svc
        .client
        .clone()
        .watch_availability(pb::WatchAvailabilityRequest { keys, after_event_id: String::new() })
        .await
        .unwrap()
        .into_inner();
    stream.next().await.unwrap().unwrap();
    let started = std::time::Instant::now();
    svc.stop().await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(5), "shutdown waited {:?} for the watcher", started.elapsed());
    let end = stream.next().await;
    assert!(matches!(end, Some(Err(ref s)) if s.code() == tonic::Code::Unavailable) || end.is_none(), "{end:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_kept_for_the_retention_not_by_count() {
    let svc = start_with(&["--events-retention", "1s"]).await;
    svc.stock("S", "W", "1000000").await;
    // 300 events fill three stream nodes (100 entries each); trimming by age
    // drops whole nodes once every entry in them is older than the retention.
    for i in 0..300 {
        svc.lock("S", "W", "1", &format!("old-{i}")).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    svc.lock("S", "W", "1", "new").await.unwrap();
    let trimmed = eventually(Duration::from_secs(10), || async { events(&svc).await.len() < 100 }).await;
    let left = events(&svc).await;
    assert!(trimmed, "{} events left", left.len());
    assert_eq!(left.last().unwrap().1["order_id"], "order-new", "the newest event stays");
}

/// How many XRANGE calls Redis (every node of a cluster) has served, from
/// its command statistics.
async fn xrange_calls(svc: &TestService) -> u64 {
    let ports: Vec<u16> = match (&svc.redis, &svc.cluster) {
        (Some(redis), _) => vec![redis.port()],
        (None, Some(cluster)) => cluster.nodes.iter().map(|node| node.port()).collect(),
        (None, None) => panic!("no Redis"),
    };
    let mut calls = 0;
    for port in ports {
        let info = node_command(port, redis::cmd("INFO").arg("commandstats")).await.unwrap();
        let info: String = redis::from_redis_value(info).unwrap();
        calls += info
            .lines()
            .find_map(|line| line.strip_prefix("cmdstat_xrange:calls="))
            .and_then(|rest| rest.split(',').next())
            .map_or(0, |calls| calls.parse::<u64>().unwrap());
    }
    calls
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_watchers_read_nothing_from_redis() {
    // Twenty watchers of a quiet record. Once the partition's tailer runs,
    // the hub brings every event, so a quiet watcher has no reason to read
    // Redis (it used to, every 250 ms: 80 XRANGE a second here, 64,000 for
    // a thousand watchers of sixteen partitions). They still get the next
    // change.
    let svc = start().await;
    svc.stock("S", "W", "10").await;
    let keys = vec![pb::StockKey { sku: "S".into(), warehouse_id: "W".into() }];
    let mut streams = Vec::new();
    for _ in 0..20 {
        let request = pb::WatchAvailabilityRequest { keys: keys.clone(), after_event_id: String::new() };
        let mut stream = svc.client.clone().watch_availability(request).await.unwrap().into_inner();
        assert_eq!(stream.next().await.unwrap().unwrap().event.unwrap().action(), Action::Snapshot);
        streams.push(stream);
    }
    // Settled: the count stops moving for a whole second (four quiet periods).
    let before = std::sync::atomic::AtomicU64::new(xrange_calls(&svc).await);
    let settled = eventually(Duration::from_secs(10), || async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = xrange_calls(&svc).await;
        before.swap(now, std::sync::atomic::Ordering::Relaxed) == now
    })
    .await;
    let calls = before.into_inner();
    assert!(settled, "idle watchers kept reading Redis: {calls} XRANGE calls and counting");
    svc.lock("S", "W", "3", "r1").await.unwrap();
    for stream in &mut streams {
        let event = tokio::time::timeout(Duration::from_secs(5), stream.next()).await.unwrap().unwrap().unwrap();
        let event = event.event.unwrap();
        assert_eq!((event.action(), event.available.as_str()), (Action::Lock, "7"));
    }
}
