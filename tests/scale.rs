//! One record holding many live locks (a flash sale): every call stays
//! bounded, so reads of one lock work, an expiry wave is settled in bounded
//! steps, and the books balance afterwards. These tests assert behaviour at
//! scale, never timings; the load tool measures those.

mod common;

use std::time::Duration;

use common::*;
use futures::stream::{self, StreamExt};
use stocklock::pb;
use tonic::Code;

/// How many locks the hot record holds.
const LOCKS: usize = 20_000;

/// Locks `count` single units of `sku` with `ttl`, `concurrency` calls at a time.
async fn lock_many(svc: &TestService, sku: &str, count: usize, ttl: Duration) -> Vec<pb::Lock> {
    stream::iter(0..count)
        .map(|i| {
            let mut client = svc.client.clone();
            let mut request = lock_request(sku, "WH", "1", &format!("{sku}-{i}"));
            request.ttl = millis(ttl.as_millis() as i64);
            async move { client.lock(request).await.unwrap().into_inner().lock.unwrap() }
        })
        .buffer_unordered(64)
        .collect()
        .await
}

/// The lifecycle events of one action in every partition.
async fn count_events(svc: &TestService, action: &str) -> usize {
    let mut conn = svc.redis_conn().await;
    let mut found = 0;
    for partition in 0..svc.keys().partitions() {
        let mut after = "-".to_owned();
        loop {
            let entries: Vec<(String, Vec<String>)> = redis::cmd("XRANGE")
                .arg(svc.keys().events(partition))
                .arg(&after)
                .arg("+")
                .arg("COUNT")
                .arg(500)
                .query_async(&mut conn)
                .await
                .unwrap();
            let Some((last, _)) = entries.last() else { break };
            after = format!("({last}");
            found += entries.iter().filter(|(_, fields)| fields[..2] == ["action", action]).count();
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expiry_wave_on_a_hot_record_is_settled_completely_and_exactly_once() {
    let svc = start_with(&["--min-ttl", "1s", "--sweep-interval", "50ms", "--max-queue-wait", "30s"]).await;
    svc.stock("HOT", "WH", "1000000").await;
    // Every lock lives long enough for all of them to be taken, then they
    // expire together.
    let locks = lock_many(&svc, "HOT", LOCKS, Duration::from_secs(30)).await;
    let record = svc.record("HOT", "WH").await;
    assert_eq!((record.locked.as_str(), record.live_locks), ("20000", LOCKS as u32));

    // One lock reads in O(1) among 20,000.
    let one = &locks[LOCKS / 2];
    let read =
        svc.client.clone().get_lock(pb::GetLockRequest { lock_id: one.lock_id.clone() }).await.unwrap().into_inner();
    assert_eq!(read.lock.unwrap().fencing_token, one.fencing_token);

    // No structure holds the record's locks in one piece: 16 shards of
    // lock hashes and expiry indexes (a big hash or sorted set grows by
    // allocating its whole new table in one call), each about 1/16 of it.
    let mut conn = svc.redis_conn().await;
    for keys in svc.record_keys("HOT", "WH") {
        let (locks, expiries): (usize, usize) =
            redis::pipe().hlen(&keys.locks).zcard(&keys.exp).query_async(&mut conn).await.unwrap();
        assert!(locks == expiries && locks < LOCKS / 8, "{}: {locks} locks, {expiries} expiries", keys.locks);
    }

    // ListLocks pages through every lock exactly once, oldest first (the
    // shards of the lock index merged), a bounded read a page.
    let mut seen = std::collections::HashSet::new();
    let mut last_created = (0, 0);
    let mut page_token = String::new();
    loop {
        let page = svc
            .client
            .clone()
            .list_locks(pb::ListLocksRequest { sku: "HOT".into(), page_size: 1000, page_token, ..Default::default() })
            .await
            .unwrap()
            .into_inner();
        for lock in page.locks {
            assert!(seen.insert(lock.fencing_token), "lock {} listed twice", lock.lock_id);
            let created = lock.created_at.map(|t| (t.seconds, t.nanos)).unwrap();
            assert!(created >= last_created, "lock {} listed out of age order", lock.lock_id);
            last_created = created;
        }
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(seen.len(), LOCKS);
    // The statistics count them from the index, exactly.
    let stats = svc.admin().await.get_lock_stats(pb::GetLockStatsRequest {}).await.unwrap().into_inner();
    assert_eq!(stats.live_locks, LOCKS as u64, "{stats:?}");

    // The wave: every lock settled by the sweeper, in bounded steps, once.
    let swept = eventually(Duration::from_secs(90), || async {
        let mut conn = svc.redis_conn().await;
        let locked: i64 =
            redis::cmd("HGET").arg(svc.stock_key("HOT", "WH")).arg("locked").query_async(&mut conn).await.unwrap();
        locked == 0
    })
    .await;
    assert!(swept, "the expired locks were not all swept");
    assert_eq!(count_events(&svc, "expire").await, LOCKS, "each lock expires exactly once");
    let record = svc.record("HOT", "WH").await;
    assert_eq!((record.available.as_str(), record.locked.as_str(), record.live_locks), ("1000000", "0", 0));
    // An expired lock still says how it ended.
    let gone = svc.client.clone().get_lock(pb::GetLockRequest { lock_id: one.lock_id.clone() }).await.unwrap_err();
    assert_eq!((gone.code(), reason(&gone).as_str()), (Code::FailedPrecondition, "LOCK_EXPIRED"), "{gone:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_during_an_unswept_wave_never_oversells() {
    // No sweeper runs (a very long interval): the wave is settled only by
    // the calls that touch the record, each a bounded step at a time.
    let svc = start_with(&["--min-ttl", "1s", "--sweep-interval", "1h", "--max-queue-wait", "30s"]).await;
    svc.stock("WAVE", "WH", "500").await;
    lock_many(&svc, "WAVE", 500, Duration::from_secs(1)).await;
    let sold_out = svc.lock("WAVE", "WH", "1", "too-early").await.unwrap_err();
    assert_eq!(reason(&sold_out), "INSUFFICIENT_STOCK");
    tokio::time::sleep(Duration::from_millis(1100)).await;

    // Every lock has expired, but more than one call's worth is unswept:
    // locks succeed as steps settle the wave, and never take more than the
    // 500 units there are.
    let mut granted = 0;
    for i in 0..600 {
        match svc.lock("WAVE", "WH", "1", &format!("after-{i}")).await {
            Ok(_) => granted += 1,
            Err(status) => assert_eq!(reason(&status), "INSUFFICIENT_STOCK", "{status:?}"),
        }
    }
    assert_eq!(granted, 500, "every unit is sold once the wave is settled, and no more");
    let record = svc.record("WAVE", "WH").await;
    assert_eq!((record.locked.as_str(), record.available.as_str()), ("500", "0"));
}

/// The auditor's four invariant gauges from one scrape, in the order
/// locked_drift, broken_expiry_index, late_expiry, oversold.
async fn violations(svc: &TestService) -> Vec<f64> {
    let metrics = scrape(svc).await;
    ["locked_drift", "broken_expiry_index", "late_expiry", "oversold"]
        .iter()
        .map(|kind| metrics.get(&format!("stocklock_invariant_violations{{kind=\"{kind}\"}}")).copied().unwrap_or(-1.0))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_auditor_and_a_repair_read_a_hot_record_in_slices() {
    let svc = start_with(&["--invariant-check-interval", "200ms", "--max-queue-wait", "30s"]).await;
    svc.stock("AUDIT", "WH", "1000000").await;
    let locks = lock_many(&svc, "AUDIT", LOCKS, Duration::from_secs(600)).await;

    // Behind the service's back: `locked` drifts by 3, 250 locks lose their
    // expiry entry (they would never expire) and 100 expiries name no lock.
    let shards = svc.record_keys("AUDIT", "WH");
    let mut conn = svc.redis_conn().await;
    let mut broken = redis::pipe();
    broken.cmd("HINCRBY").arg(&shards[0].stock).arg("locked").arg(3).ignore();
    for lock in &locks[..250] {
        broken.cmd("ZREM").arg(&svc.lock_keys(&lock.lock_id).exp).arg(lock.fencing_token.to_string()).ignore();
    }
    for orphan in 0..100 {
        let exp = &shards[orphan % shards.len()].exp;
        broken.cmd("ZADD").arg(exp).arg(i64::MAX / 2).arg(format!("{}", 10_000_000 + orphan)).ignore();
    }
    let () = broken.query_async(&mut conn).await.unwrap();

    // The auditor sums 20,000 locks slice by slice and finds both faults.
    let found = eventually(Duration::from_secs(30), || async { violations(&svc).await == [1.0, 1.0, 0.0, 0.0] }).await;
    assert!(found, "the auditor reports drift and a broken index: {:?}", violations(&svc).await);

    // The repair mends them in slices too, and sets the figure from the sum.
    let mut admin = svc.admin().await;
    let request = pb::RepairRecordRequest {
        sku: "AUDIT".into(),
        warehouse_id: "WH".into(),
        reason: "scale test".into(),
        request_id: "repair-1".into(),
        operator: "alice".into(),
    };
    let mended = admin.repair_record(request).await.unwrap().into_inner();
    assert_eq!(
        (mended.locked_before.as_str(), mended.locked_after.as_str(), mended.fixed_expiries, mended.dropped_expiries),
        ("20003", "20000", 250, 100)
    );
    let record = svc.record("AUDIT", "WH").await;
    assert_eq!((record.locked.as_str(), record.live_locks), ("20000", LOCKS as u32));
    let fixed: Option<f64> = redis::cmd("ZSCORE")
        .arg(&svc.lock_keys(&locks[0].lock_id).exp)
        .arg(locks[0].fencing_token.to_string())
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(fixed.is_some(), "a lock that lost its expiry has one again");
    assert!(eventually(Duration::from_secs(30), || async { violations(&svc).await == [0.0; 4] }).await);
}
