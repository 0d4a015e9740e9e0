//! Heartbeat expiry on the real clock of a real Redis.

mod common;

use std::time::{Duration, Instant};

use common::*;
use stocklock::pb;
use tonic::Code;
use tonic_types::StatusExt;

fn renew(lock_ids: Vec<String>, request_id: &str) -> pb::RenewRequest {
    pb::RenewRequest { lock_ids, holder: "order-service".into(), request_id: request_id.into(), ..Default::default() }
}

#[tokio::test]
async fn an_unrenewed_lock_returns_its_stock_within_ttl_plus_sweep() {
    let svc = start_with(&["--min-ttl", "100ms", "--sweep-interval", "100ms"]).await;
    svc.stock("SKU-1", "WH-A", "10").await;
    let mut request = lock_request("SKU-1", "WH-A", "4", "r1");
    request.ttl = millis(500);
    let started = Instant::now();
    let lock = svc.client.clone().lock(request).await.unwrap().into_inner().lock.unwrap();
    assert_eq!(svc.record("SKU-1", "WH-A").await.locked, "4");

    // The sweeper, not a read, must bring `locked` back: watch the raw hash.
    let mut conn = svc.redis_conn().await;
    let stock_key = svc.stock_key("SKU-1", "WH-A");
    loop {
        let locked: i64 = redis::cmd("HGET").arg(&stock_key).arg("locked").query_async(&mut conn).await.unwrap();
        if locked == 0 {
            break;
        }
        // The promise: back within 1 s of expiry.
        assert!(started.elapsed() < Duration::from_millis(500 + 1000), "not swept after {:?}", started.elapsed());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(started.elapsed() >= Duration::from_millis(450), "swept too early: {:?}", started.elapsed());
    let record = svc.record("SKU-1", "WH-A").await;
    assert_eq!((record.available.as_str(), record.live_locks), ("10", 0));

    // Never resurrected: renew and commit say it expired, release says so and changes nothing.
    expect_error(
        svc.client.clone().renew(renew(vec![lock.lock_id.clone()], "rn")).await,
        Code::FailedPrecondition,
        "LOCK_EXPIRED",
    );
    let commit = pb::CommitRequest { lock_id: lock.lock_id.clone(), request_id: "c".into(), ..Default::default() };
    expect_error(svc.client.clone().commit(commit).await, Code::FailedPrecondition, "LOCK_EXPIRED");
    let released = svc.release(&lock.lock_id, "rel").await.unwrap();
    assert_eq!(released.results[0].outcome(), pb::ReleaseOutcome::AlreadyExpired);
    let get = svc.client.clone().get_lock(pb::GetLockRequest { lock_id: lock.lock_id }).await;
    let status = expect_error(get, Code::FailedPrecondition, "LOCK_EXPIRED");
    assert_eq!(status.get_details_error_info().unwrap().metadata["state"], "EXPIRED");
    assert_eq!(svc.available("SKU-1", "WH-A").await, "10");
}

#[tokio::test]
async fn an_expired_lock_never_counts_even_before_the_sweep() {
    // A sweeper that practically never runs: only the scripts' own checks act.
    let svc = start_with(&["--min-ttl", "100ms", "--sweep-interval", "1h"]).await;
    svc.stock("SKU-1", "WH-A", "5").await;
    let mut request = lock_request("SKU-1", "WH-A", "5", "r1");
    request.ttl = millis(200);
    svc.client.clone().lock(request).await.unwrap();
    expect_error(svc.lock("SKU-1", "WH-A", "1", "r2").await, Code::FailedPrecondition, "INSUFFICIENT_STOCK");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(svc.available("SKU-1", "WH-A").await, "5");
    let lock = svc.lock("SKU-1", "WH-A", "5", "r3").await.unwrap();
    assert_eq!(lock.available, "0");
    let record = svc.record("SKU-1", "WH-A").await;
    assert_eq!((record.locked.as_str(), record.live_locks), ("5", 1));
}

#[tokio::test]
async fn a_lock_settles_expired_locks_of_every_shard_before_it_is_refused() {
    // The sweeper practically never runs. Sixteen locks land in random lock
    // shards and expire; a Lock sees only its own shard's at first, is short,
    // and is called again with the whole record, which settles them all.
    let svc = start_with(&["--min-ttl", "100ms", "--sweep-interval", "1h"]).await;
    svc.stock("SKU-1", "WH-A", "16").await;
    for i in 0..16 {
        let mut request = lock_request("SKU-1", "WH-A", "1", &format!("r{i}"));
        request.ttl = millis(200);
        svc.client.clone().lock(request).await.unwrap();
    }
    expect_error(svc.lock("SKU-1", "WH-A", "1", "early").await, Code::FailedPrecondition, "INSUFFICIENT_STOCK");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let lock = svc.lock("SKU-1", "WH-A", "16", "all").await.unwrap();
    assert_eq!(lock.available, "0");
    let record = svc.record("SKU-1", "WH-A").await;
    assert_eq!((record.locked.as_str(), record.live_locks), ("16", 1));
}

#[tokio::test]
async fn renewing_keeps_a_lock_alive() {
    let svc = start_with(&["--min-ttl", "100ms", "--sweep-interval", "50ms"]).await;
    svc.stock("SKU-1", "WH-A", "10").await;
    let mut request = lock_request("SKU-1", "WH-A", "2", "r1");
    request.ttl = millis(300);
    let lock = svc.client.clone().lock(request).await.unwrap().into_inner().lock.unwrap();
    let mut last_expiry = lock.expires_at.unwrap();
    for i in 0..6 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        let response =
            svc.client.clone().renew(renew(vec![lock.lock_id.clone()], &format!("rn{i}"))).await.unwrap().into_inner();
        let result = &response.results[0];
        assert!(result.renewed, "{result:?}");
        let expiry = result.expires_at.unwrap();
        assert!((expiry.seconds, expiry.nanos) > (last_expiry.seconds, last_expiry.nanos));
        last_expiry = expiry;
    }
    // 900 ms after taking a 300 ms lock, it is still held.
    assert_eq!(svc.record("SKU-1", "WH-A").await.locked, "2");
}

#[tokio::test]
async fn renewal_is_capped_by_the_maximum_hold() {
    let svc = start_with(&["--min-ttl", "100ms", "--max-ttl", "1s", "--default-ttl", "1s", "--max-hold", "1s"]).await;
    svc.stock("SKU-1", "WH-A", "10").await;
    let mut request = lock_request("SKU-1", "WH-A", "2", "r1");
    request.ttl = millis(600);
    let lock = svc.client.clone().lock(request).await.unwrap().into_inner().lock.unwrap();
    let max = lock.max_expires_at.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let result = svc.client.clone().renew(renew(vec![lock.lock_id.clone()], "rn1")).await.unwrap().into_inner().results
        [0]
    .clone();
    assert!(result.renewed && result.max_hold_reached, "{result:?}");
    assert_eq!(result.expires_at.unwrap(), max);
    tokio::time::sleep(Duration::from_millis(700)).await;
    expect_error(
        svc.client.clone().renew(renew(vec![lock.lock_id], "rn2")).await,
        Code::FailedPrecondition,
        "LOCK_EXPIRED",
    );
    assert_eq!(svc.available("SKU-1", "WH-A").await, "10");
}

#[tokio::test]
async fn renew_many_reports_per_lock_and_renew_can_change_the_ttl() {
    let svc = start().await;
    svc.stock("SKU-1", "WH-A", "10").await;
    svc.stock("SKU-2", "WH-A", "10").await;
    let a = svc.lock("SKU-1", "WH-A", "1", "r1").await.unwrap().lock.unwrap();
    let b = svc.lock("SKU-2", "WH-A", "1", "r2").await.unwrap().lock.unwrap();
    svc.release(&b.lock_id, "rel").await.unwrap();
    let mut request = renew(vec![a.lock_id.clone(), b.lock_id.clone()], "rn");
    request.ttl = secs(120);
    let response = svc.client.clone().renew(request).await.unwrap().into_inner();
    assert!(response.results[0].renewed);
    let expiry = response.results[0].expires_at.unwrap().seconds;
    assert!(expiry - a.expires_at.unwrap().seconds >= 59, "ttl 120 s should extend past the 60 s lock");
    assert_eq!((response.results[1].renewed, response.results[1].reason().as_str_name()), (false, "LOCK_NOT_FOUND"));
}

fn late_commit(lock_id: &str, quantity: &str, request_id: &str) -> pb::CommitRequest {
    pb::CommitRequest {
        lock_id: lock_id.into(),
        quantity: quantity.into(),
        request_id: request_id.into(),
        allow_late_commit: true,
        ..Default::default()
    }
}

/// A lock of 3 of SKU-1 in WH-A (of 5), expired by Redis's clock and, with
/// the sweeper off, still stored.
async fn expired_but_stored(svc: &TestService) -> pb::Lock {
    svc.stock("SKU-1", "WH-A", "5").await;
    let mut request = lock_request("SKU-1", "WH-A", "3", "r1");
    request.ttl = millis(200);
    let lock = svc.client.clone().lock(request).await.unwrap().into_inner().lock.unwrap();
    let get = || pb::GetLockRequest { lock_id: lock.lock_id.clone() };
    assert!(
        eventually(Duration::from_secs(5), || async {
            matches!(svc.client.clone().get_lock(get()).await, Err(s) if reason(&s) == "LOCK_EXPIRED")
        })
        .await
    );
    assert_eq!(svc.packed_locks("SKU-1", "WH-A").await.len(), 1, "still stored");
    lock
}

#[tokio::test]
async fn a_late_commit_takes_an_expired_lock_again_in_one_step_and_only_once() {
    let svc = start_with(&["--min-ttl", "100ms", "--sweep-interval", "1h"]).await;
    let lock = expired_but_stored(&svc).await;
    let done = svc.client.clone().commit(late_commit(&lock.lock_id, "", "c1")).await.unwrap().into_inner();
    assert_eq!((done.committed_quantity.as_str(), done.committed_now), ("3", true));
    assert!(done.late_fencing_token > lock.fencing_token);
    let record = svc.record("SKU-1", "WH-A").await;
    assert_eq!((record.physical.as_str(), record.locked.as_str(), record.live_locks), ("2", "0", 0));
    assert!(svc.packed_locks("SKU-1", "WH-A").await.is_empty(), "the expired lock is gone with it");

    // A retry deducts nothing more, and answers the same token.
    let again = svc.client.clone().commit(late_commit(&lock.lock_id, "", "c1")).await.unwrap().into_inner();
    assert_eq!((again.committed_now, again.late_fencing_token), (false, done.late_fencing_token));
    assert_eq!(svc.record("SKU-1", "WH-A").await.physical, "2");
    expect_error(svc.release(&lock.lock_id, "rel-old").await, Code::FailedPrecondition, "LOCK_ALREADY_COMMITTED");
    let next = svc.lock("SKU-1", "WH-A", "1", "r3").await.unwrap().lock.unwrap();
    assert!(next.fencing_token > done.late_fencing_token, "tokens never go back");
}

#[tokio::test]
async fn a_commit_not_asked_to_be_late_sweeps_the_expired_lock_and_that_is_all() {
    let svc = start_with(&["--min-ttl", "100ms", "--sweep-interval", "1h"]).await;
    let lock = expired_but_stored(&svc).await;
    let plain = pb::CommitRequest { lock_id: lock.lock_id.clone(), request_id: "c0".into(), ..Default::default() };
    expect_error(svc.client.clone().commit(plain).await, Code::FailedPrecondition, "LOCK_EXPIRED");
    // Its stock is back, and with it swept, a late commit comes too late.
    assert!(svc.packed_locks("SKU-1", "WH-A").await.is_empty());
    let late = svc.client.clone().commit(late_commit(&lock.lock_id, "", "c1")).await;
    expect_error(late, Code::FailedPrecondition, "LOCK_EXPIRED");
    assert_eq!(svc.record("SKU-1", "WH-A").await.physical, "5");
}

#[tokio::test]
async fn a_late_commit_says_what_is_available_when_the_stock_is_gone() {
    let svc = start_with(&["--min-ttl", "100ms", "--sweep-interval", "1h"]).await;
    let lock = expired_but_stored(&svc).await;
    // The warehouse counted two fewer meanwhile: 3 of 5 become 3 of 3, and
    // with the expired lock's 3 back, 3 - 2 = 1... of which the lock wants 3.
    let adjust = pb::AdjustStockRequest {
        sku: "SKU-1".into(),
        warehouse_id: "WH-A".into(),
        physical_delta: "-3".into(),
        request_id: "adj".into(),
        ..Default::default()
    };
    svc.client.clone().adjust_stock(adjust).await.unwrap();
    let status = expect_error(
        svc.client.clone().commit(late_commit(&lock.lock_id, "", "c1")).await,
        Code::FailedPrecondition,
        "LOCK_EXPIRED",
    );
    assert_eq!(status.get_details_error_info().unwrap().metadata["available"], "2");
    let record = svc.record("SKU-1", "WH-A").await;
    assert_eq!((record.physical.as_str(), record.locked.as_str()), ("2", "0"), "nothing deducted");
}

#[tokio::test]
async fn a_swept_or_forged_lock_cannot_be_committed_late() {
    let svc = start_with(&["--min-ttl", "100ms", "--sweep-interval", "100ms"]).await;
    svc.stock("SKU-1", "WH-A", "5").await;
    let mut request = lock_request("SKU-1", "WH-A", "3", "r1");
    request.ttl = millis(200);
    let lock = svc.client.clone().lock(request).await.unwrap().into_inner().lock.unwrap();
    assert!(eventually(Duration::from_secs(5), || async { svc.packed_locks("SKU-1", "WH-A").await.is_empty() }).await);
    // Swept: nothing is left to check the lock id against.
    let late = svc.client.clone().commit(late_commit(&lock.lock_id, "3", "c1")).await;
    expect_error(late, Code::FailedPrecondition, "LOCK_EXPIRED");
    // Nor may anyone name a token of the record with a made-up nonce.
    let forged = format!("SKU-1|WH-A|{}-0badc0de", lock.fencing_token);
    let late = svc.client.clone().commit(late_commit(&forged, "3", "c2")).await;
    expect_error(late, Code::FailedPrecondition, "LOCK_EXPIRED");
    assert_eq!(svc.record("SKU-1", "WH-A").await.physical, "5", "nothing was deducted");
}
