//! The continuous invariant auditor finds drift injected behind the
//! service's back, and RepairRecord mends it atomically, with an audit entry.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use stocklock::pb;
use tonic::Code;

const INVARIANTS: [&str; 4] = ["locked_drift", "broken_expiry_index", "late_expiry", "oversold"];

async fn violations(svc: &TestService) -> Vec<f64> {
    violations_in(&scrape(svc).await)
}

fn violations_in(metrics: &HashMap<String, f64>) -> Vec<f64> {
    INVARIANTS
        .iter()
        .map(|kind| metrics.get(&format!("stocklock_invariant_violations{{kind=\"{kind}\"}}")).copied().unwrap_or(-1.0))
        .collect()
}

fn repair(sku: &str, request_id: &str) -> pb::RepairRecordRequest {
    pb::RepairRecordRequest {
        sku: sku.into(),
        warehouse_id: "WH-A".into(),
        reason: "INC-42: auditor reported drift".into(),
        request_id: request_id.into(),
        operator: "alice".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_auditor_finds_drift_and_a_repair_mends_it_with_an_audit_entry() {
    let svc = start_with(&["--invariant-check-interval", "100ms"]).await;
    for sku in ["DRIFT", "INDEX", "FINE"] {
        svc.stock(sku, "WH-A", "10").await;
        svc.lock(sku, "WH-A", "1", &format!("{sku}-1")).await.unwrap();
        svc.lock(sku, "WH-A", "2", &format!("{sku}-2")).await.unwrap();
    }
    // A pass over the healthy records finds nothing. The metrics are the
    // process's, shared with this file's other auditors, so what is asserted
    // is read from one scrape.
    let passed = eventually(Duration::from_secs(5), || async {
        let metrics = scrape(&svc).await;
        metrics["stocklock_invariant_passes_total"] >= 1.0
            && metrics["stocklock_invariant_records"] >= 3.0
            && violations_in(&metrics) == [0.0; 4]
    })
    .await;
    assert!(passed, "no clean pass over the healthy records");

    // Behind the service's back: `locked` drifts on one record, and a lock
    // loses its expiry entry on another (it would never expire).
    let mut conn = svc.redis_conn().await;
    let _: () = redis::cmd("HSET")
        .arg(svc.stock_key("DRIFT", "WH-A"))
        .arg("locked")
        .arg(7)
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut shards = svc.record_keys("INDEX", "WH-A").into_iter();
    let (exp, token) = loop {
        let exp = shards.next().expect("a lock in some shard").exp;
        let tokens: Vec<String> = redis::cmd("ZRANGE").arg(&exp).arg(0).arg(0).query_async(&mut conn).await.unwrap();
        if let Some(token) = tokens.into_iter().next() {
            break (exp, token);
        }
    };
    let _: () = redis::cmd("ZREM").arg(&exp).arg(&token).query_async(&mut conn).await.unwrap();
    let found = eventually(Duration::from_secs(5), || async { violations(&svc).await == [1.0, 1.0, 0.0, 0.0] }).await;
    assert!(found, "the auditor reports both: {:?}", violations(&svc).await);
    assert_eq!(svc.available("DRIFT", "WH-A").await, "3", "the drift shows in availability");

    let mut admin = svc.admin().await;
    let mended = admin.repair_record(repair("DRIFT", "fix-1")).await.unwrap().into_inner();
    assert_eq!((mended.locked_before.as_str(), mended.locked_after.as_str()), ("7", "3"));
    assert_eq!(mended.record.unwrap().available, "7");
    let mended = admin.repair_record(repair("INDEX", "fix-2")).await.unwrap().into_inner();
    assert_eq!((mended.fixed_expiries, mended.dropped_expiries, mended.locked_after.as_str()), (1, 0, "3"));
    // A retry replays; the healthy record is left as it was.
    assert!(admin.repair_record(repair("DRIFT", "fix-1")).await.unwrap().into_inner().replayed);
    let fine = admin.repair_record(repair("FINE", "fix-3")).await.unwrap().into_inner();
    assert_eq!((fine.locked_before.as_str(), fine.locked_after.as_str()), ("3", "3"));

    assert!(eventually(Duration::from_secs(5), || async { violations(&svc).await == [0.0; 4] }).await);
    let events = admin
        .list_audit_events(pb::ListAuditEventsRequest { action: "record.repair".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .events;
    assert_eq!(events.len(), 3);
    assert_eq!((events[0].sku.as_str(), events[0].actor.as_str()), ("DRIFT", "alice"));
    assert_eq!(events[0].details["locked"], "7 -> 3");
    assert_eq!(events[0].reason, "INC-42: auditor reported drift");
}

#[tokio::test]
async fn the_auditor_reports_locks_the_sweeper_left_behind_and_oversold_records() {
    // No sweeping to speak of: expired locks stay unswept past the bound.
    let svc = start_with(&[
        "--invariant-check-interval",
        "100ms",
        "--invariant-sweep-bound",
        "200ms",
        "--sweep-interval",
        "1h",
        "--min-ttl",
        "100ms",
    ])
    .await;
    svc.stock("LATE", "WH-A", "10").await;
    let mut request = lock_request("LATE", "WH-A", "1", "late");
    request.ttl = millis(100);
    svc.client.clone().lock(request).await.unwrap();
    svc.stock("OVER", "WH-A", "1").await;
    let mut conn = svc.redis_conn().await;
    let _: () = redis::cmd("HSET")
        .arg(svc.stock_key("OVER", "WH-A"))
        .arg("reserved")
        .arg(3)
        .query_async(&mut conn)
        .await
        .unwrap();
    let found = eventually(Duration::from_secs(5), || async { violations(&svc).await == [0.0, 0.0, 1.0, 1.0] }).await;
    assert!(found, "{:?}", violations(&svc).await);
}

#[tokio::test]
async fn a_repair_needs_a_reason_and_an_existing_record() {
    let svc = start().await;
    let mut admin = svc.admin().await;
    let mut no_reason = repair("S", "r1");
    no_reason.reason.clear();
    let status = admin.repair_record(no_reason).await.unwrap_err();
    assert_eq!((status.code(), bad_fields(&status)), (Code::InvalidArgument, vec!["reason".to_owned()]));
    expect_error(admin.repair_record(repair("NOPE", "r2")).await, Code::NotFound, "SKU_NOT_AVAILABLE_IN_WAREHOUSE");
}

#[tokio::test]
async fn an_expiry_without_a_lock_does_not_break_reads_of_the_record() {
    // Drift behind the service's back, the sweeper held off: an expiry entry
    // that names no lock, already due. Reads count locks, not entries.
    let svc = start_with(&["--sweep-interval", "1h"]).await;
    svc.stock("ORPHAN", "WH-A", "5").await;
    let shards = svc.record_keys("ORPHAN", "WH-A");
    let mut conn = svc.redis_conn().await;
    let () = redis::pipe()
        .zadd(&shards[3].exp, "999", 1)
        .hset(&shards[0].stock, "due", 1)
        .ignore()
        .query_async(&mut conn)
        .await
        .unwrap();
    let record = svc.record("ORPHAN", "WH-A").await;
    assert_eq!((record.available.as_str(), record.live_locks), ("5", 0));
    let lock = svc.lock("ORPHAN", "WH-A", "2", "after-drift").await.unwrap();
    assert_eq!(lock.available, "3");
}

/// When a warehouse starts breaking the lock-health rule (under 99.9% for
/// two complete hours), the auditor checks its records at once: the
/// self-check finds the drift behind the failures without waiting for a
/// pass (the periodic auditor's passes are an hour apart here, and report
/// elsewhere).
#[tokio::test]
async fn a_warehouse_breaking_the_health_rule_gets_a_self_check() {
    let svc = start_with(&["--invariant-check-interval", "1h", "--metrics-refresh", "200ms"]).await;
    svc.stock("SKU-1", "SELF-W", "10").await;
    svc.stock("SKU-2", "SELF-W", "10").await;
    svc.lock("SKU-1", "SELF-W", "1", "r1").await.unwrap();
    let mut conn = svc.redis_conn().await;
    let _: () = redis::cmd("HSET")
        .arg(svc.stock_key("SKU-1", "SELF-W"))
        .arg("locked")
        .arg(7)
        .query_async(&mut conn)
        .await
        .unwrap();
    // Two complete hours at 99% for SELF-W.
    for hours_ago in [1, 2] {
        let _: () = redis::cmd("HSET")
            .arg(format!("sl:{{lockhealth}}:{}", hour_start(hours_ago)))
            .arg("SELF-W|OK")
            .arg(990)
            .arg("SELF-W|INV_LOCK_TIMEOUT")
            .arg(10)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    let series = "stocklock_invariant_self_check_violations{warehouse=\"SELF-W\"}";
    let found = eventually(Duration::from_secs(10), || async { scrape(&svc).await.get(series) == Some(&1.0) }).await;
    assert!(found, "no self-check found the drift: {:?}", scrape(&svc).await.get(series));
}
