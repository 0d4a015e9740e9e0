//! Retries with the same request_id return the original outcome and change
//! nothing; the same request_id with other content is refused.

mod common;

use common::*;
use stocklock::pb;
use tonic::Code;

#[tokio::test]
async fn a_retried_lock_returns_the_same_lock_once() {
    let svc = start().await;
    svc.stock("SKU-1", "WH-A", "10").await;
    let first = svc.lock("SKU-1", "WH-A", "3", "r1").await.unwrap();
    let retry = svc.lock("SKU-1", "WH-A", "3", "r1").await.unwrap();
    assert!(!first.replayed && retry.replayed);
    assert_eq!(first.lock, retry.lock);
    assert_eq!(first.available, retry.available);
    let record = svc.record("SKU-1", "WH-A").await;
    assert_eq!((record.locked.as_str(), record.live_locks), ("3", 1));
}

#[tokio::test]
async fn a_reused_request_id_with_other_content_is_refused() {
    let svc = start().await;
    svc.stock("SKU-1", "WH-A", "10").await;
    svc.stock("SKU-2", "WH-A", "10").await;
    svc.lock("SKU-1", "WH-A", "3", "r1").await.unwrap();
    expect_error(svc.lock("SKU-1", "WH-A", "4", "r1").await, Code::AlreadyExists, "IDEMPOTENCY_KEY_REUSED");
    expect_error(svc.lock("SKU-2", "WH-A", "3", "r1").await, Code::AlreadyExists, "IDEMPOTENCY_KEY_REUSED");
    let mut other_holder = lock_request("SKU-1", "WH-A", "3", "r1");
    other_holder.holder = "someone-else".into();
    expect_error(svc.client.clone().lock(other_holder).await, Code::AlreadyExists, "IDEMPOTENCY_KEY_REUSED");
    assert_eq!(svc.record("SKU-1", "WH-A").await.locked, "3");
    assert_eq!(svc.record("SKU-2", "WH-A").await.locked, "0");
    // request ids are scoped per method: the same id may name a release.
    let lock = svc.lock("SKU-2", "WH-A", "1", "r2").await.unwrap().lock.unwrap();
    svc.release(&lock.lock_id, "r2").await.unwrap();
}

#[tokio::test]
async fn a_failed_call_leaves_no_idempotency_record() {
    let svc = start().await;
    svc.stock("SKU-1", "WH-A", "2").await;
    expect_error(svc.lock("SKU-1", "WH-A", "3", "r1").await, Code::FailedPrecondition, "INSUFFICIENT_STOCK");
    svc.stock("SKU-1", "WH-A", "5").await;
    let retry = svc.lock("SKU-1", "WH-A", "3", "r1").await.unwrap();
    assert!(!retry.replayed);
    assert_eq!(retry.available, "2");
}

#[tokio::test]
async fn a_retried_batch_returns_the_same_batch() {
    let svc = start().await;
    svc.stock("A", "W1", "5").await;
    svc.stock("B", "W1", "5").await;
    let request = pb::BatchLockRequest {
        policy: 0,
        lines: vec![
            pb::BatchLockLine { candidates: None, sku: "A".into(), warehouse_id: "W1".into(), quantity: "1".into() },
            pb::BatchLockLine { candidates: None, sku: "B".into(), warehouse_id: "W1".into(), quantity: "2".into() },
        ],
        ttl: secs(60),
        order_id: "o".into(),
        request_id: "b1".into(),
        holder: "h".into(),
        session_id: String::new(),
    };
    let mut client = svc.client.clone();
    let first = client.batch_lock(request.clone()).await.unwrap().into_inner();
    let retry = client.batch_lock(request.clone()).await.unwrap().into_inner();
    assert!(retry.replayed);
    assert_eq!((first.batch_id, first.locks), (retry.batch_id, retry.locks));
    assert_eq!(svc.record("B", "W1").await.locked, "2");
    let mut changed = request;
    changed.lines[1].quantity = "3".into();
    expect_error(client.batch_lock(changed).await, Code::AlreadyExists, "IDEMPOTENCY_KEY_REUSED");
}

#[tokio::test]
async fn retried_renew_release_and_commit_are_idempotent_by_the_locks_state() {
    // No record of these calls is kept (issue 14: Redis bytes per order): the
    // lock's own state answers a retry.
    let svc = start().await;
    svc.stock("SKU-1", "WH-A", "10").await;
    let a = svc.lock("SKU-1", "WH-A", "2", "r1").await.unwrap().lock.unwrap();
    let b = svc.lock("SKU-1", "WH-A", "3", "r2").await.unwrap().lock.unwrap();
    let mut client = svc.client.clone();

    // A retried renew renews again, from now: the same lock, the same stock.
    let renew = pb::RenewRequest {
        lock_ids: vec![a.lock_id.clone()],
        holder: "order-service".into(),
        request_id: "rn".into(),
        ttl: secs(30),
        ..Default::default()
    };
    let first = client.renew(renew.clone()).await.unwrap().into_inner();
    let retry = client.renew(renew.clone()).await.unwrap().into_inner();
    assert_eq!(first.results.len(), retry.results.len());
    assert!(retry.results.iter().all(|r| r.renewed), "{retry:?}");
    assert_eq!(svc.record("SKU-1", "WH-A").await.locked, "5");

    // A retried commit finds the lock committed: nothing is deducted twice.
    let commit = pb::CommitRequest {
        lock_id: a.lock_id.clone(),
        quantity: "1".into(),
        request_id: "c".into(),
        ..Default::default()
    };
    let first = client.commit(commit.clone()).await.unwrap().into_inner();
    assert!(first.committed_now);
    let retry = client.commit(commit.clone()).await.unwrap().into_inner();
    assert!(!retry.committed_now, "{retry:?}");
    assert_eq!(first.record, retry.record);
    // The retry says what the commit it found did, as the first answer did:
    // a caller that lost that answer must not read "0 committed".
    assert_eq!((first.committed_quantity.as_str(), first.released_quantity.as_str()), ("1", "1"));
    assert_eq!(
        (retry.committed_quantity.as_str(), retry.released_quantity.as_str()),
        (first.committed_quantity.as_str(), first.released_quantity.as_str())
    );
    assert_eq!(svc.record("SKU-1", "WH-A").await.physical, "9");

    // A retried release finds the lock released: nothing is given back twice.
    let first = svc.release(&b.lock_id, "rel").await.unwrap();
    assert_eq!(first.results[0].outcome(), pb::ReleaseOutcome::Released);
    let retry = svc.release(&b.lock_id, "rel").await.unwrap();
    assert_eq!(retry.results[0].outcome(), pb::ReleaseOutcome::AlreadyReleased);
    let record = svc.record("SKU-1", "WH-A").await;
    assert_eq!((record.physical.as_str(), record.locked.as_str(), record.available.as_str()), ("9", "0", "9"));
}

#[tokio::test]
async fn retried_stock_writes_apply_once() {
    let svc = start().await;
    svc.stock("SKU-1", "WH-A", "10").await;
    let mut client = svc.client.clone();
    let adjust = pb::AdjustStockRequest {
        sku: "SKU-1".into(),
        warehouse_id: "WH-A".into(),
        physical_delta: "5".into(),
        request_id: "a1".into(),
        ..Default::default()
    };
    client.adjust_stock(adjust.clone()).await.unwrap();
    let retry = client.adjust_stock(adjust.clone()).await.unwrap().into_inner();
    assert_eq!(retry.record.unwrap().physical, "15");
    let other = pb::AdjustStockRequest { physical_delta: "6".into(), ..adjust };
    expect_error(client.adjust_stock(other).await, Code::AlreadyExists, "IDEMPOTENCY_KEY_REUSED");

    let set = pb::SetStockRequest {
        sku: "SKU-1".into(),
        warehouse_id: "WH-A".into(),
        physical: "20".into(),
        source_version: u32::MAX as u64 * 1_000_000,
        request_id: "s1".into(),
        ..Default::default()
    };
    assert!(client.set_stock(set.clone()).await.unwrap().into_inner().applied);
    // The retry replays "applied" instead of reporting its own snapshot stale.
    assert!(client.set_stock(set).await.unwrap().into_inner().applied);
}

#[tokio::test]
async fn idempotency_records_expire_after_the_retention() {
    let svc = start().await;
    svc.stock("SKU-1", "WH-A", "10").await;
    svc.lock("SKU-1", "WH-A", "1", "r1").await.unwrap();
    // Lock records live in a hash per generation (a retention long), which
    // expires when the generation after it ends: between one and two
    // retentions after the call.
    let mut conn = svc.redis_conn().await;
    let day: u64 = 24 * 3600 * 1000;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    let digest = sha1_smol::Sha1::from("lock\u{1f}r1").digest().to_string();
    let key = svc.keys().lock_idempotency(svc.partition("SKU-1"), now / day, &digest[..16]);
    let ttl: u64 = redis::cmd("PTTL").arg(&key).query_async(&mut conn).await.unwrap();
    assert!(ttl >= day && ttl <= 2 * day + 60_000, "idempotency record kept for {ttl} ms");
    let fields: u64 = redis::cmd("HLEN").arg(&key).query_async(&mut conn).await.unwrap();
    assert_eq!(fields, 1, "one field for the one Lock");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_across_an_idempotency_generation_replays() {
    // Lock records live in a hash per generation of one retention; a retry
    // looks in its own generation and the one before. With a 1 s retention
    // the generations turn every second, so retries 0 to 900 ms after their
    // lock cross a boundary about half the time, and every one must replay.
    let svc =
        start_with(&["--idempotency-retention", "1s", "--max-hold", "1s", "--max-ttl", "1s", "--default-ttl", "1s"])
            .await;
    svc.stock("SKU-1", "WH-A", "1000").await;
    let mut crossed = 0;
    for i in 0..24u64 {
        let request_id = format!("gen-{i}");
        let mut request = lock_request("SKU-1", "WH-A", "1", &request_id);
        request.ttl = millis(1000);
        let mut client = svc.client.clone();
        let first = client.lock(request.clone()).await.unwrap().into_inner();
        let generation = |ms: u128| ms / 1000;
        let at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis();
        tokio::time::sleep(std::time::Duration::from_millis(i * 37 % 900)).await;
        let retry = client.lock(request).await.unwrap().into_inner();
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis();
        crossed += u32::from(generation(now) != generation(at));
        assert!(retry.replayed, "retry {i} locked again");
        // The whole answer, times included: the record keeps them relative
        // to its generation's start, which a retry from the next generation
        // must take from the generation before.
        assert_eq!((retry.lock, retry.available), (first.lock, first.available), "retry {i}");
    }
    assert!(crossed > 0, "no retry crossed a generation");
}

#[tokio::test]
async fn records_written_before_the_compact_layout_still_answer() {
    // Earlier builds kept a Lock's idempotency record with absolute times and
    // decimal tokens, and a tombstone under its whole token. Rewrite both
    // into that form behind the service: a retry must still replay the same
    // answer, and a Renew of the released lock must still learn it was
    // released, for as long as those records live.
    let svc = start().await;
    svc.stock("SKU-1", "WH-A", "10").await;
    let first = svc.lock("SKU-1", "WH-A", "3", "r1").await.unwrap();
    let lock = first.lock.clone().unwrap();
    let mut conn = svc.redis_conn().await;
    let day: u64 = 24 * 3600 * 1000;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    let digest = sha1_smol::Sha1::from("lock\u{1f}r1").digest().to_string();
    let key = svc.keys().lock_idempotency(svc.partition("SKU-1"), now / day, &digest[..16]);
    let stored: String = redis::cmd("HGET").arg(&key).arg(&digest[..16]).query_async(&mut conn).await.unwrap();
    let (fingerprint, compact) = stored.split_once(':').expect("a compact record");
    let f: Vec<&str> = compact.split('|').collect();
    let at = now / day * day + f[0].parse::<u64>().unwrap();
    let token = u64::from_str_radix(f[4], 16).unwrap();
    let old = format!(
        "{fingerprint}{at}|{}|{}|{}|{token}|{}",
        at + f[1].parse::<u64>().unwrap(),
        f[2],
        f[3],
        f[5..].join("|")
    );
    let _: () = redis::cmd("HSET").arg(&key).arg(&digest[..16]).arg(&old).query_async(&mut conn).await.unwrap();

    let retry = svc.lock("SKU-1", "WH-A", "3", "r1").await.unwrap();
    assert!(retry.replayed);
    assert_eq!((retry.lock, retry.available), (first.lock, first.available));

    svc.release(&lock.lock_id, "rel").await.unwrap();
    let ended = svc.lock_keys(&lock.lock_id).ended;
    let mark: String = redis::cmd("HGET").arg(&ended).arg(token % 512).query_async(&mut conn).await.unwrap();
    let _: () = redis::cmd("HDEL").arg(&ended).arg(token % 512).query_async(&mut conn).await.unwrap();
    let _: () = redis::cmd("HSET").arg(&ended).arg(token).arg(&mark).query_async(&mut conn).await.unwrap();
    let renew = pb::RenewRequest {
        lock_ids: vec![lock.lock_id.clone()],
        holder: "order-service".into(),
        request_id: "rn".into(),
        ..Default::default()
    };
    let status = expect_error(svc.client.clone().renew(renew).await, Code::NotFound, "LOCK_NOT_FOUND");
    assert_eq!(tonic_types::StatusExt::get_details_error_info(&status).unwrap().metadata["state"], "RELEASED");
}
