//! Lock, Commit, Release and the figures they move.

mod common;

use common::*;
use stocklock::pb;
use tonic::Code;

#[tokio::test]
async fn lock_holds_stock_and_release_gives_it_back() {
    let svc = start().await;
    svc.stock("SKU-1", "WH-A", "10").await;

    let locked = svc.lock("SKU-1", "WH-A", "3", "r1").await.unwrap();
    let lock = locked.lock.unwrap();
    assert_eq!(locked.available, "7");
    assert_eq!(lock.quantity, "3");
    assert_eq!(lock.sku, "SKU-1");
    assert_eq!(lock.holder, "order-service");
    assert_eq!(lock.order_id, "order-r1");
    assert!(lock.fencing_token >= 1);
    let record = svc.record("SKU-1", "WH-A").await;
    assert_eq!((record.available.as_str(), record.locked.as_str(), record.live_locks), ("7", "3", 1));

    let released = svc.release(&lock.lock_id, "rel-1").await.unwrap();
    assert_eq!(released.results[0].outcome(), pb::ReleaseOutcome::Released);
    assert_eq!(released.results[0].quantity, "3");
    let record = svc.record("SKU-1", "WH-A").await;
    assert_eq!((record.available.as_str(), record.locked.as_str(), record.live_locks), ("10", "0", 0));

    // A second release with a new request_id says so and changes nothing.
    let again = svc.release(&lock.lock_id, "rel-2").await.unwrap();
    assert_eq!(again.results[0].outcome(), pb::ReleaseOutcome::AlreadyReleased);
    assert_eq!(svc.available("SKU-1", "WH-A").await, "10");
}

#[tokio::test]
async fn expires_at_comes_from_redis_time() {
    let svc = start().await;
    svc.stock("SKU-1", "WH-A", "10").await;
    let mut conn = svc.redis_conn().await;
    let (secs, _): (i64, i64) = redis::cmd("TIME").query_async(&mut conn).await.unwrap();
    let lock = svc.lock("SKU-1", "WH-A", "1", "r1").await.unwrap().lock.unwrap();
    let expires = lock.expires_at.unwrap().seconds;
    assert!((expires - (secs + 60)).abs() <= 1, "expires {expires}, redis now {secs}");
    assert_eq!(lock.ttl.unwrap().seconds, 60);
    assert_eq!(lock.max_expires_at.unwrap().seconds - lock.created_at.unwrap().seconds, 24 * 3600);
}

#[tokio::test]
async fn fencing_tokens_strictly_increase_per_record() {
    let svc = start().await;
    svc.stock("SKU-1", "WH-A", "100").await;
    let mut last = 0;
    for i in 0..5 {
        let lock = svc.lock("SKU-1", "WH-A", "1", &format!("r{i}")).await.unwrap().lock.unwrap();
        assert!(lock.fencing_token > last);
        last = lock.fencing_token;
        svc.release(&lock.lock_id, &format!("rel{i}")).await.unwrap();
    }
}

#[tokio::test]
async fn insufficient_stock_names_requested_and_available() {
    let svc = start().await;
    svc.stock("SKU-1", "WH-A", "5").await;
    svc.lock("SKU-1", "WH-A", "4", "r1").await.unwrap();
    let status =
        expect_error(svc.lock("SKU-1", "WH-A", "2", "r2").await, Code::FailedPrecondition, "INSUFFICIENT_STOCK");
    let info = tonic_types::StatusExt::get_details_error_info(&status).unwrap();
    assert_eq!(info.metadata["requested"], "2");
    assert_eq!(info.metadata["available"], "1");
    assert_eq!(info.metadata["sku"], "SKU-1");
    assert_eq!(svc.available("SKU-1", "WH-A").await, "1");
}

#[tokio::test]
async fn unknown_record_is_not_available() {
    let svc = start().await;
    svc.stock("SKU-1", "WH-A", "5").await;
    expect_error(svc.lock("SKU-1", "WH-B", "1", "r1").await, Code::NotFound, "SKU_NOT_AVAILABLE_IN_WAREHOUSE");
    let missing = svc
        .client
        .clone()
        .get_availability(pb::GetAvailabilityRequest { sku: "SKU-1".into(), warehouse_id: "WH-B".into() })
        .await;
    expect_error(missing, Code::NotFound, "SKU_NOT_AVAILABLE_IN_WAREHOUSE");
}

#[tokio::test]
async fn commit_deducts_physical_and_a_partial_commit_releases_the_rest() {
    let svc = start().await;
    svc.stock("SKU-1", "WH-A", "10").await;
    let lock = svc.lock("SKU-1", "WH-A", "4", "r1").await.unwrap().lock.unwrap();
    let mut client = svc.client.clone();
    let commit = |quantity: &str, request_id: &str| pb::CommitRequest {
        lock_id: lock.lock_id.clone(),
        quantity: quantity.into(),
        holder: "order-service".into(),
        request_id: request_id.into(),
        allow_late_commit: false,
    };

    let too_much = client.commit(commit("5", "c0")).await;
    let status = expect_error(too_much, Code::InvalidArgument, "QUANTITY_EXCEEDS_LOCK");
    assert_eq!(bad_fields(&status), ["quantity"]);

    let done = client.commit(commit("3", "c1")).await.unwrap().into_inner();
    assert_eq!((done.committed_quantity.as_str(), done.released_quantity.as_str()), ("3", "1"));
    assert!(done.committed_now);
    let record = done.record.unwrap();
    assert_eq!((record.physical.as_str(), record.locked.as_str(), record.available.as_str()), ("7", "0", "7"));

    // Committing again with a new request_id says it was done, and changes nothing.
    let again = client.commit(commit("", "c2")).await.unwrap().into_inner();
    assert!(!again.committed_now);
    assert_eq!(again.record.unwrap().physical, "7");

    // A committed lock cannot be released or renewed.
    expect_error(svc.release(&lock.lock_id, "rel").await, Code::FailedPrecondition, "LOCK_ALREADY_COMMITTED");
    let renew = client
        .renew(pb::RenewRequest {
            lock_ids: vec![lock.lock_id.clone()],
            holder: "order-service".into(),
            request_id: "rn".into(),
            ..Default::default()
        })
        .await;
    let status = expect_error(renew, Code::NotFound, "LOCK_NOT_FOUND");
    assert_eq!(tonic_types::StatusExt::get_details_error_info(&status).unwrap().metadata["state"], "COMMITTED");
}

#[tokio::test]
async fn commit_of_a_released_lock_is_not_found() {
    let svc = start().await;
    svc.stock("SKU-1", "WH-A", "10").await;
    let lock = svc.lock("SKU-1", "WH-A", "4", "r1").await.unwrap().lock.unwrap();
    svc.release(&lock.lock_id, "rel").await.unwrap();
    let commit = svc
        .client
        .clone()
        .commit(pb::CommitRequest { lock_id: lock.lock_id, request_id: "c".into(), ..Default::default() })
        .await;
    expect_error(commit, Code::NotFound, "LOCK_NOT_FOUND");
    assert_eq!(svc.record("SKU-1", "WH-A").await.physical, "10");
}

#[tokio::test]
async fn only_the_holder_may_renew_release_or_commit() {
    let svc = start().await;
    svc.stock("SKU-1", "WH-A", "10").await;
    let lock = svc.lock("SKU-1", "WH-A", "4", "r1").await.unwrap().lock.unwrap();
    let mut client = svc.client.clone();
    let renew = client
        .renew(pb::RenewRequest {
            lock_ids: vec![lock.lock_id.clone()],
            holder: "intruder".into(),
            request_id: "rn".into(),
            ..Default::default()
        })
        .await;
    expect_error(renew, Code::PermissionDenied, "LOCK_HOLDER_MISMATCH");
    let release = client
        .release(pb::ReleaseRequest {
            lock_id: lock.lock_id.clone(),
            holder: "intruder".into(),
            request_id: "rel".into(),
            ..Default::default()
        })
        .await;
    expect_error(release, Code::PermissionDenied, "LOCK_HOLDER_MISMATCH");
    let commit = client
        .commit(pb::CommitRequest {
            lock_id: lock.lock_id.clone(),
            holder: "intruder".into(),
            request_id: "c".into(),
            ..Default::default()
        })
        .await;
    expect_error(commit, Code::PermissionDenied, "LOCK_HOLDER_MISMATCH");
    assert_eq!(svc.record("SKU-1", "WH-A").await.locked, "4");
}

#[tokio::test]
async fn decimal_quantities_follow_the_unit_scale() {
    let svc = start().await;
    svc.stock_scaled("CABLE", "WH-A", "10.5", 2).await;
    let locked = svc.lock("CABLE", "WH-A", "2.25", "r1").await.unwrap();
    assert_eq!(locked.available, "8.25");
    assert_eq!(locked.lock.unwrap().quantity, "2.25");

    let status =
        expect_error(svc.lock("CABLE", "WH-A", "0.001", "r2").await, Code::InvalidArgument, "INVALID_ARGUMENT");
    assert_eq!(bad_fields(&status), ["quantity"]);
    // Trailing zeros are not extra digits.
    svc.lock("CABLE", "WH-A", "0.100000", "r3").await.unwrap();
    assert_eq!(svc.available("CABLE", "WH-A").await, "8.15");

    // Whole units: a fraction is refused.
    svc.stock("BOX", "WH-A", "3").await;
    expect_error(svc.lock("BOX", "WH-A", "1.5", "r4").await, Code::InvalidArgument, "INVALID_ARGUMENT");
    // The largest scale.
    svc.stock_scaled("GOLD", "WH-A", "1.000001", 6).await;
    assert_eq!(svc.lock("GOLD", "WH-A", "0.000001", "r5").await.unwrap().available, "1");
}

#[tokio::test]
async fn set_stock_below_locked_reports_oversold_and_keeps_locks() {
    let svc = start().await;
    svc.stock("SKU-1", "WH-A", "10").await;
    let lock = svc.lock("SKU-1", "WH-A", "8", "r1").await.unwrap().lock.unwrap();
    let record = svc.stock("SKU-1", "WH-A", "5").await;
    assert_eq!((record.available.as_str(), record.oversold.as_str(), record.locked.as_str()), ("0", "3", "8"));
    expect_error(svc.lock("SKU-1", "WH-A", "1", "r2").await, Code::FailedPrecondition, "INSUFFICIENT_STOCK");
    // The lock is still valid and can be committed.
    let done = svc
        .client
        .clone()
        .commit(pb::CommitRequest { lock_id: lock.lock_id, request_id: "c".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let record = done.record.unwrap();
    assert_eq!((record.physical.as_str(), record.available.as_str(), record.oversold.as_str()), ("-3", "0", "3"));
}

#[tokio::test]
async fn availability_counts_reserved_and_in_transit() {
    let svc = start().await;
    let mut client = svc.client.clone();
    let set = client
        .set_stock(pb::SetStockRequest {
            sku: "SKU-1".into(),
            warehouse_id: "WH-A".into(),
            physical: "10".into(),
            reserved: "3".into(),
            in_transit: "4".into(),
            source_version: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(set.applied);
    assert_eq!(set.record.unwrap().available, "11");
    svc.lock("SKU-1", "WH-A", "11", "r1").await.unwrap();
    expect_error(svc.lock("SKU-1", "WH-A", "1", "r2").await, Code::FailedPrecondition, "INSUFFICIENT_STOCK");
}

#[tokio::test]
async fn stale_snapshots_are_ignored() {
    let svc = start().await;
    let mut client = svc.client.clone();
    let snapshot = |physical: &str, version: u64| pb::SetStockRequest {
        sku: "SKU-1".into(),
        warehouse_id: "WH-A".into(),
        physical: physical.into(),
        source_version: version,
        ..Default::default()
    };
    assert!(client.set_stock(snapshot("10", 5)).await.unwrap().into_inner().applied);
    let stale = client.set_stock(snapshot("99", 4)).await.unwrap().into_inner();
    assert!(!stale.applied && stale.stale);
    assert_eq!(stale.record.unwrap().physical, "10");
    let same = client.set_stock(snapshot("99", 5)).await.unwrap().into_inner();
    assert!(same.stale);
    let newer = client.set_stock(snapshot("12", 6)).await.unwrap().into_inner();
    assert!(newer.applied);
    assert_eq!(newer.record.unwrap().physical, "12");
}

#[tokio::test]
async fn unit_scale_cannot_change_under_live_locks() {
    let svc = start().await;
    svc.stock("SKU-1", "WH-A", "10").await;
    let lock = svc.lock("SKU-1", "WH-A", "1", "r1").await.unwrap().lock.unwrap();
    let mut client = svc.client.clone();
    let change = pb::SetStockRequest {
        sku: "SKU-1".into(),
        warehouse_id: "WH-A".into(),
        physical: "10.5".into(),
        unit_scale: 1,
        source_version: u32::MAX as u64 * 1_000_000,
        ..Default::default()
    };
    expect_error(client.set_stock(change.clone()).await, Code::FailedPrecondition, "UNIT_SCALE_IN_USE");
    svc.release(&lock.lock_id, "rel").await.unwrap();
    let record = client.set_stock(change).await.unwrap().into_inner().record.unwrap();
    assert_eq!((record.physical.as_str(), record.unit_scale), ("10.5", 1));
}

#[tokio::test]
async fn adjust_stock_applies_signed_deltas() {
    let svc = start().await;
    svc.stock("SKU-1", "WH-A", "10").await;
    let mut client = svc.client.clone();
    let adjust = |physical: &str, reserved: &str, request_id: &str| pb::AdjustStockRequest {
        sku: "SKU-1".into(),
        warehouse_id: "WH-A".into(),
        physical_delta: physical.into(),
        reserved_delta: reserved.into(),
        request_id: request_id.into(),
        reason: "cycle count".into(),
        ..Default::default()
    };
    let record = client.adjust_stock(adjust("-2", "1", "a1")).await.unwrap().into_inner().record.unwrap();
    assert_eq!((record.physical.as_str(), record.reserved.as_str(), record.available.as_str()), ("8", "1", "7"));
    let status =
        expect_error(client.adjust_stock(adjust("0", "-5", "a2")).await, Code::FailedPrecondition, "NEGATIVE_STOCK");
    assert!(status.message().contains("reserved_delta"), "{status:?}");
    expect_error(client.adjust_stock(adjust("", "", "a3")).await, Code::InvalidArgument, "INVALID_ARGUMENT");
    let missing = pb::AdjustStockRequest { sku: "NOPE".into(), ..adjust("1", "", "a4") };
    expect_error(client.adjust_stock(missing).await, Code::NotFound, "SKU_NOT_AVAILABLE_IN_WAREHOUSE");
    assert_eq!(svc.available("SKU-1", "WH-A").await, "7");
}

#[tokio::test]
async fn availability_across_warehouses_and_in_batches() {
    let svc = start().await;
    svc.stock("SKU-1", "WH-A", "10").await;
    svc.stock("SKU-1", "WH-B", "5").await;
    svc.stock("SKU-2", "WH-A", "1").await;
    svc.lock("SKU-1", "WH-B", "2", "r1").await.unwrap();
    let mut client = svc.client.clone();

    let all = client
        .get_availability(pb::GetAvailabilityRequest { sku: "SKU-1".into(), warehouse_id: String::new() })
        .await
        .unwrap()
        .into_inner();
    let warehouses: Vec<_> = all.records.iter().map(|r| (r.warehouse_id.as_str(), r.available.as_str())).collect();
    assert_eq!(warehouses, [("WH-A", "10"), ("WH-B", "3")]);
    assert_eq!(all.total_available, "13");

    let key = |sku: &str, warehouse: &str| pb::StockKey { sku: sku.into(), warehouse_id: warehouse.into() };
    let batch = client
        .batch_get_availability(pb::BatchGetAvailabilityRequest {
            keys: vec![key("SKU-2", "WH-A"), key("SKU-9", "WH-A"), key("SKU-1", "WH-B")],
        })
        .await
        .unwrap()
        .into_inner();
    let found: Vec<_> = batch.records.iter().map(|r| (r.sku.as_str(), r.available.as_str())).collect();
    assert_eq!(found, [("SKU-2", "1"), ("SKU-1", "3")]);
    assert_eq!(batch.missing, [key("SKU-9", "WH-A")]);
}

#[tokio::test]
async fn get_lock_and_list_locks() {
    let svc = start().await;
    svc.stock("SKU-1", "WH-A", "100").await;
    svc.stock("SKU-2", "WH-B", "100").await;
    let mut ids = Vec::new();
    for i in 0..7 {
        let mut request = lock_request("SKU-1", "WH-A", "1", &format!("r{i}"));
        request.order_id = if i % 2 == 0 { "even".into() } else { "odd".into() };
        ids.push(svc.client.clone().lock(request).await.unwrap().into_inner().lock.unwrap().lock_id);
    }
    let mut other = lock_request("SKU-2", "WH-B", "1", "x");
    other.holder = "another-service".into();
    other.order_id = "even".into();
    svc.client.clone().lock(other).await.unwrap();
    let mut client = svc.client.clone();

    let got = client.get_lock(pb::GetLockRequest { lock_id: ids[3].clone() }).await.unwrap().into_inner().lock.unwrap();
    assert_eq!(
        (got.lock_id.as_str(), got.order_id.as_str(), got.state()),
        (ids[3].as_str(), "odd", pb::LockState::Active)
    );

    // One record, paged in token order.
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .list_locks(pb::ListLocksRequest {
                sku: "SKU-1".into(),
                warehouse_id: "WH-A".into(),
                page_size: 3,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.locks.len() <= 3);
        seen.extend(page.locks.into_iter().map(|l| l.lock_id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen, ids);

    // Across records, by order and by holder.
    let list = |filter: pb::ListLocksRequest| {
        let mut client = client.clone();
        async move { client.list_locks(filter).await.unwrap().into_inner().locks }
    };
    let even = list(pb::ListLocksRequest { order_id: "even".into(), ..Default::default() }).await;
    assert_eq!(even.len(), 5);
    let theirs = list(pb::ListLocksRequest { holder: "another-service".into(), ..Default::default() }).await;
    assert_eq!(theirs.len(), 1);
    assert_eq!(theirs[0].sku, "SKU-2");
    let old = list(pb::ListLocksRequest { older_than: secs(3600), ..Default::default() }).await;
    assert!(old.is_empty());
    let by_sku = list(pb::ListLocksRequest { sku: "SKU-2".into(), ..Default::default() }).await;
    assert_eq!(by_sku.len(), 1);

    // A released lock is gone from the list and GetLock says how it ended.
    svc.release(&ids[0], "rel").await.unwrap();
    let gone = client.get_lock(pb::GetLockRequest { lock_id: ids[0].clone() }).await;
    let status = expect_error(gone, tonic::Code::NotFound, "LOCK_NOT_FOUND");
    // `state` names a LockState, as the proto says.
    let state = &tonic_types::StatusExt::get_details_error_info(&status).unwrap().metadata["state"];
    assert_eq!(pb::LockState::from_str_name(&format!("LOCK_STATE_{state}")), Some(pb::LockState::Released));
    let bad = client.list_locks(pb::ListLocksRequest { page_token: "garbage".into(), ..Default::default() }).await;
    expect_error(bad, tonic::Code::InvalidArgument, "INVALID_ARGUMENT");
}
