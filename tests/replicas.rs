//! Several `stocklock serve` processes on one Redis: a lock taken through one
//! replica is renewed and ended through another, callers spread over both
//! never over-lock, and both sweepers return expired stock exactly once.

mod common;

use std::time::Duration;

use common::*;
use futures::future::join_all;
use stocklock::pb;
use tonic::Code;

/// Two services on one fresh Redis.
async fn two_replicas(extra: &[&str]) -> (TestService, TestService) {
    let first = start_with(extra).await;
    let second = serve(&first.redis_url, extra).await;
    (first, second)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_taken_on_one_replica_is_renewed_and_committed_on_the_other() {
    let (a, b) = two_replicas(&[]).await;
    a.stock("SKU-R", "WH-A", "10").await;
    let lock = a.lock("SKU-R", "WH-A", "3", "lock-1").await.unwrap().lock.unwrap();

    let renewed = b
        .client
        .clone()
        .renew(pb::RenewRequest {
            lock_ids: vec![lock.lock_id.clone()],
            ttl: secs(120),
            holder: "order-service".into(),
            request_id: "renew-1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(renewed.results[0].renewed, "{renewed:?}");

    // A retry of the same Lock through the other replica is a replay, not a second lock.
    let replay = b.lock("SKU-R", "WH-A", "3", "lock-1").await.unwrap().lock.unwrap();
    assert_eq!(replay.lock_id, lock.lock_id);

    let commit = pb::CommitRequest { lock_id: lock.lock_id.clone(), request_id: "c-1".into(), ..Default::default() };
    b.client.clone().commit(commit).await.unwrap();
    let record = a.record("SKU-R", "WH-A").await;
    assert_eq!((record.physical.as_str(), record.locked.as_str(), record.available.as_str()), ("7", "0", "7"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_spread_over_two_replicas_never_over_lock_and_the_books_balance() {
    // 300 orders at once queue rather than being shed (see tests/overload.rs).
    let (a, b) = two_replicas(&["--max-queue-wait", "10s"]).await;
    a.stock("SPREAD", "WH-A", "60").await;
    let clients = [a.client.clone(), b.client.clone()];
    // 300 orders over both replicas: lock one unit; a third commit, a third release,
    // a third keep their lock. Each step goes to the replica the lock did not come from.
    let calls = (0..300).map(|i| {
        let mut first = clients[i % 2].clone();
        let mut other = clients[(i + 1) % 2].clone();
        async move {
            let lock = match first.lock(lock_request("SPREAD", "WH-A", "1", &format!("r{i}"))).await {
                Ok(response) => response.into_inner().lock.unwrap(),
                Err(status) => {
                    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
                    return (0, 0);
                }
            };
            match i % 3 {
                0 => {
                    let request =
                        pb::CommitRequest { lock_id: lock.lock_id, request_id: format!("c{i}"), ..Default::default() };
                    other.commit(request).await.unwrap();
                    (1, 0)
                }
                1 => {
                    let request =
                        pb::ReleaseRequest { lock_id: lock.lock_id, request_id: format!("x{i}"), ..Default::default() };
                    other.release(request).await.unwrap();
                    (0, 0)
                }
                _ => (0, 1),
            }
        }
    });
    let (committed, held) = join_all(calls).await.into_iter().fold((0i64, 0i64), |(c, h), (dc, dh)| (c + dc, h + dh));
    assert!(committed > 0 && held > 0);

    let record = b.record("SPREAD", "WH-A").await;
    let physical: i64 = record.physical.parse().unwrap();
    let locked: i64 = record.locked.parse().unwrap();
    let available: i64 = record.available.parse().unwrap();
    assert_eq!(physical, 60 - committed, "{record:?}");
    assert_eq!(locked, held, "{record:?}");
    assert_eq!(available + locked, physical, "{record:?}");
    assert!(available >= 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_sweepers_return_expired_stock_exactly_once() {
    let (a, b) = two_replicas(&["--min-ttl", "100ms", "--sweep-interval", "20ms"]).await;
    for sku in ["EXP-1", "EXP-2", "EXP-3"] {
        a.stock(sku, "WH-A", "20").await;
    }
    let locks = (0..45).map(|i| {
        let svc = if i % 2 == 0 { &a } else { &b };
        let sku = ["EXP-1", "EXP-2", "EXP-3"][i % 3];
        let mut request = lock_request(sku, "WH-A", "1", &format!("e{i}"));
        request.ttl = millis(300);
        let mut client = svc.client.clone();
        async move { client.lock(request).await.unwrap() }
    });
    join_all(locks).await;

    // Both sweepers run over the same due index; every lock must come back
    // once. Reads count an expired lock out at once, before a sweeper has
    // settled it, so what is waited for is the sweep itself: its expire
    // events, and a due index with nothing left in it to settle.
    let swept =
        eventually(Duration::from_secs(5), || async { due_records(&a).await == 0 && expire_events(&a).await >= 45 })
            .await;
    assert!(swept, "the sweepers did not settle every lock: {} expire events", expire_events(&a).await);
    assert_eq!(expire_events(&a).await, 45, "each lock expires exactly once");
    for sku in ["EXP-1", "EXP-2", "EXP-3"] {
        let record = a.record(sku, "WH-A").await;
        assert_eq!((record.available.as_str(), record.locked.as_str(), record.live_locks), ("20", "0", 0), "{sku}");
    }
}

/// The expire events in the (only) partition's event stream.
async fn expire_events(svc: &TestService) -> usize {
    let mut conn = svc.redis_conn().await;
    let entries: Vec<(String, Vec<String>)> =
        redis::cmd("XRANGE").arg("sl:{p0.0}:events").arg("-").arg("+").query_async(&mut conn).await.unwrap();
    entries.iter().filter(|(_, fields)| fields[..2] == ["action", "expire"]).count()
}

/// How many records the (only) partition's due index still names.
async fn due_records(svc: &TestService) -> usize {
    let mut conn = svc.redis_conn().await;
    redis::cmd("ZCARD").arg("sl:{p0.0}:due").query_async(&mut conn).await.unwrap()
}

/// Appends 100 inbound deltas of one unit, event ids from `from` on.
async fn inbound(svc: &TestService, from: usize) {
    for i in from..from + 100 {
        let event_id = format!("ev-{i}");
        let fields = [
            ("type", "delta"),
            ("sku", "IN"),
            ("warehouse_id", "W"),
            ("event_id", event_id.as_str()),
            ("physical_delta", "1"),
            ("reason", "inbound"),
        ];
        xadd(svc, "sl:ingest", &fields).await;
    }
}

async fn physical_is(svc: &TestService, physical: &str) -> bool {
    svc.record("IN", "W").await.physical == physical
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replica_reads_the_ingestion_stream_and_another_takes_over_when_it_stops() {
    // One reader at a time keeps the stream's order; when it stops, another
    // replica takes the lease over and applies the rest, nothing twice.
    let base = start_with(&["--no-ingest"]).await;
    base.stock("IN", "W", "0").await;
    let lease = ["--ingest-claim-idle", "300ms"];
    let first = serve(&base.redis_url, &lease).await;
    inbound(&base, 0).await;
    assert!(
        eventually(Duration::from_secs(5), || physical_is(&base, "100")).await,
        "{:?}",
        base.record("IN", "W").await
    );
    let second = serve(&base.redis_url, &lease).await;
    let conn = base.redis_conn().await;
    let consumers = || async {
        let consumers: Vec<Vec<redis::Value>> = redis::cmd("XINFO")
            .arg("CONSUMERS")
            .arg("sl:ingest")
            .arg("stocklock")
            .query_async(&mut conn.clone())
            .await
            .unwrap();
        consumers.len()
    };
    inbound(&base, 100).await;
    assert!(
        eventually(Duration::from_secs(5), || physical_is(&base, "200")).await,
        "{:?}",
        base.record("IN", "W").await
    );
    assert_eq!(consumers().await, 1, "only the lease holder reads");

    first.stop().await.unwrap();
    inbound(&base, 200).await;
    assert!(
        eventually(Duration::from_secs(5), || physical_is(&base, "300")).await,
        "{:?}",
        base.record("IN", "W").await
    );
    assert_eq!(consumers().await, 2, "the second replica took over");
    let settled = eventually(Duration::from_secs(5), || async {
        let groups: Vec<std::collections::HashMap<String, redis::Value>> =
            redis::cmd("XINFO").arg("GROUPS").arg("sl:ingest").query_async(&mut conn.clone()).await.unwrap();
        let figure = |name: &str| groups[0].get(name).and_then(|v| redis::from_redis_value::<i64>(v.clone()).ok());
        figure("lag") == Some(0) && figure("pending") == Some(0)
    })
    .await;
    assert!(settled, "entries left unread or unacknowledged");
    assert_eq!(base.record("IN", "W").await.physical, "300", "nothing applied twice");
    drop(second);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_kept_alive_through_either_replica_ends_once_when_both_stop_keeping_it() {
    let (a, b) = two_replicas(&["--min-ttl", "100ms", "--sweep-interval", "100ms"]).await;
    a.stock("SKU-R", "WH-A", "10").await;
    let open = pb::OpenSessionRequest { ttl: millis(600), holder: "order-service".into(), request_id: "s-1".into() };
    let session = a.client.clone().open_session(open).await.unwrap().into_inner().session.unwrap();
    let in_session = |request_id: &str| pb::LockRequest {
        candidates: None,
        ttl: None,
        session_id: session.session_id.clone(),
        ..lock_request("SKU-R", "WH-A", "2", request_id)
    };
    a.client.clone().lock(in_session("l-a")).await.unwrap();
    b.client.clone().lock(in_session("l-b")).await.unwrap();

    // Kept alive through one replica, then the other, past several ttls.
    let ping = pb::KeepAliveOnceRequest { session_id: session.session_id.clone(), holder: "order-service".into() };
    for i in 0..8 {
        let replica = if i % 2 == 0 { &a } else { &b };
        replica.client.clone().keep_alive_once(ping.clone()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(a.record("SKU-R", "WH-A").await.locked, "4");

    // Left alone, both replicas' sweepers may end it: its stock comes back
    // once, and one expire event a lock.
    assert!(eventually(Duration::from_secs(5), || async { a.available("SKU-R", "WH-A").await == "10" }).await);
    let mut conn = a.redis_conn().await;
    let events: Vec<(String, Vec<String>)> =
        redis::cmd("XRANGE").arg(a.keys().events(0)).arg("-").arg("+").query_async(&mut conn).await.unwrap();
    let count = |action: &str| events.iter().filter(|(_, f)| f.get(1).is_some_and(|a| a == action)).count();
    assert_eq!((count("expire"), count("session.expire")), (2, 1), "{events:?}");
    let record = b.record("SKU-R", "WH-A").await;
    assert_eq!((record.locked.as_str(), record.live_locks, record.physical.as_str()), ("0", 0, "10"));
    expect_error(b.client.clone().keep_alive_once(ping).await, Code::FailedPrecondition, "SESSION_EXPIRED");
}
