//! Bad input: a clear INVALID_ARGUMENT naming the field, and nothing changes.

mod common;

use common::*;
use stocklock::pb;
use tonic::Code;

/// Breaks one field of a good request.
type Mutation = Box<dyn Fn(&mut pb::LockRequest)>;

#[tokio::test]
async fn bad_lock_requests_name_the_field_and_change_nothing() {
    let svc = start().await;
    svc.stock("SKU-1", "WH-A", "10").await;
    let cases: Vec<(&str, Mutation)> = vec![
        ("sku", Box::new(|r| r.sku = String::new())),
        ("sku", Box::new(|r| r.sku = "SKU{1}".into())),
        ("sku", Box::new(|r| r.sku = "SKU\u{7}".into())),
        ("sku", Box::new(|r| r.sku = "SKU 1".into())),
        ("sku", Box::new(|r| r.sku = "SKU|1".into())),
        ("sku", Box::new(move |r| r.sku = "x".repeat(129))),
        ("warehouse_id", Box::new(|r| r.warehouse_id = String::new())),
        ("order_id", Box::new(|r| r.order_id = String::new())),
        ("holder", Box::new(|r| r.holder = String::new())),
        ("request_id", Box::new(|r| r.request_id = String::new())),
        ("request_id", Box::new(|r| r.request_id = "a{b".into())),
        ("quantity", Box::new(|r| r.quantity = String::new())),
        ("quantity", Box::new(|r| r.quantity = "0".into())),
        ("quantity", Box::new(|r| r.quantity = "-1".into())),
        ("quantity", Box::new(|r| r.quantity = "two".into())),
        ("quantity", Box::new(|r| r.quantity = "1e3".into())),
        ("quantity", Box::new(|r| r.quantity = "NaN".into())),
        ("quantity", Box::new(|r| r.quantity = "0.0000001".into())),
        ("quantity", Box::new(|r| r.quantity = "99999999999999999999".into())),
        ("quantity", Box::new(|r| r.quantity = "0.5".into())),
        ("ttl", Box::new(|r| r.ttl = millis(10))),
        ("ttl", Box::new(|r| r.ttl = secs(7200))),
        ("ttl", Box::new(|r| r.ttl = Some(pbjson_types::Duration { seconds: -5, nanos: 0 }))),
    ];
    for (field, mutate) in cases {
        let mut request = lock_request("SKU-1", "WH-A", "1", "r1");
        mutate(&mut request);
        let status =
            expect_error(svc.client.clone().lock(request.clone()).await, Code::InvalidArgument, "INVALID_ARGUMENT");
        assert_eq!(bad_fields(&status), [field], "{request:?}: {status:?}");
        assert!(status.message().starts_with(field), "message names the field: {status:?}");
    }
    let record = svc.record("SKU-1", "WH-A").await;
    assert_eq!((record.locked.as_str(), record.live_locks, record.version), ("0", 0, 1));
    let mut conn = svc.redis_conn().await;
    let idem: Vec<String> = redis::cmd("KEYS").arg("sl:*:idem:*").query_async(&mut conn).await.unwrap();
    assert!(idem.is_empty(), "{idem:?}");
}

#[tokio::test]
async fn bad_ids_in_other_calls_are_refused() {
    let svc = start().await;
    let mut client = svc.client.clone();
    let status = expect_error(
        client.renew(pb::RenewRequest { holder: "h".into(), request_id: "r".into(), ..Default::default() }).await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    assert_eq!(bad_fields(&status), ["lock_ids"]);
    let status = expect_error(
        client
            .renew(pb::RenewRequest {
                lock_ids: vec!["SKU|WH|1-ab".into(), "forged".into()],
                holder: "h".into(),
                request_id: "r".into(),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    assert_eq!(bad_fields(&status), ["lock_ids[1]"]);
    let status = expect_error(
        client
            .renew(pb::RenewRequest {
                lock_ids: vec!["SKU|WH|1-ab".into(), "SKU|WH|1-ab".into()],
                holder: "h".into(),
                request_id: "r".into(),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    assert_eq!(bad_fields(&status), ["lock_ids[1]"]);
    let status = expect_error(
        client
            .release(pb::ReleaseRequest {
                lock_id: "SKU|WH|1-ab".into(),
                batch_id: "b".into(),
                request_id: "r".into(),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    assert_eq!(bad_fields(&status), ["batch_id"]);
    let status = expect_error(
        client.commit(pb::CommitRequest { lock_id: "SKU|WH|1-ab".into(), ..Default::default() }).await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    assert_eq!(bad_fields(&status), ["request_id"]);
    let status = expect_error(
        client.get_lock(pb::GetLockRequest { lock_id: "SKU|WH".into() }).await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    assert_eq!(bad_fields(&status), ["lock_id"]);
    // Well formed but never issued.
    expect_error(
        client.get_lock(pb::GetLockRequest { lock_id: "SKU|WH|7-ab".into() }).await,
        Code::NotFound,
        "LOCK_NOT_FOUND",
    );
    let status = expect_error(
        client
            .set_stock(pb::SetStockRequest {
                sku: "S".into(),
                warehouse_id: "W".into(),
                physical: "1".into(),
                unit_scale: 7,
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    assert_eq!(bad_fields(&status), ["unit_scale"]);
    let status = expect_error(
        client
            .set_stock(pb::SetStockRequest {
                sku: "S".into(),
                warehouse_id: "W".into(),
                physical: "-1".into(),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    assert_eq!(bad_fields(&status), ["physical"]);
    let status = expect_error(
        client
            .batch_get_availability(pb::BatchGetAvailabilityRequest {
                keys: vec![pb::StockKey { sku: "S".into(), warehouse_id: "".into() }],
            })
            .await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    assert_eq!(bad_fields(&status), ["keys[0].warehouse_id"]);
}

#[tokio::test]
async fn a_lock_id_of_a_recreated_record_does_not_match() {
    let svc = start().await;
    svc.stock("SKU-1", "WH-A", "10").await;
    let lock = svc.lock("SKU-1", "WH-A", "1", "r1").await.unwrap().lock.unwrap();
    // Same record and token, another nonce: not this lock.
    let (prefix, _) = lock.lock_id.rsplit_once('-').unwrap();
    let forged = format!("{prefix}-deadbeef");
    expect_error(svc.release(&forged, "rel").await, Code::NotFound, "LOCK_NOT_FOUND");
    assert_eq!(svc.record("SKU-1", "WH-A").await.locked, "1");
}

#[tokio::test]
async fn quantities_the_record_cannot_hold_are_refused_by_the_scripts() {
    let svc = start().await;
    svc.stock_scaled("S", "W", "10", 6).await;
    let mut client = svc.client.clone();

    // Fits as a decimal, overflows 2^53 once scaled to the record's 6 digits.
    let status = expect_error(svc.lock("S", "W", "9007199255", "r1").await, Code::InvalidArgument, "INVALID_ARGUMENT");
    assert_eq!(bad_fields(&status), ["quantity"]);

    let adjust = |delta: &str| pb::AdjustStockRequest {
        sku: "S".into(),
        warehouse_id: "W".into(),
        in_transit_delta: delta.into(),
        request_id: format!("a-{delta}"),
        ..Default::default()
    };
    let status =
        expect_error(client.adjust_stock(adjust("9007199255")).await, Code::InvalidArgument, "INVALID_ARGUMENT");
    assert_eq!(bad_fields(&status), ["in_transit_delta"]);
    svc.stock("W0", "W", "10").await;
    let whole = pb::AdjustStockRequest { sku: "W0".into(), ..adjust("0.5") };
    let status = expect_error(client.adjust_stock(whole).await, Code::InvalidArgument, "INVALID_ARGUMENT");
    assert_eq!(bad_fields(&status), ["in_transit_delta"]);

    let lock = svc.lock("W0", "W", "2", "r2").await.unwrap().lock.unwrap();
    let commit = pb::CommitRequest {
        lock_id: lock.lock_id,
        quantity: "1.5".into(),
        request_id: "c".into(),
        ..Default::default()
    };
    let status = expect_error(client.commit(commit).await, Code::InvalidArgument, "INVALID_ARGUMENT");
    assert_eq!(bad_fields(&status), ["quantity"]);

    let record = svc.record("S", "W").await;
    assert_eq!((record.in_transit.as_str(), record.locked.as_str()), ("0", "0"));
    let record = svc.record("W0", "W").await;
    assert_eq!((record.physical.as_str(), record.locked.as_str()), ("10", "2"));
}

#[tokio::test]
async fn a_set_stock_request_id_reused_for_another_snapshot_is_refused() {
    let svc = start().await;
    let mut client = svc.client.clone();
    let snapshot = |physical: &str, version: u64| pb::SetStockRequest {
        sku: "S".into(),
        warehouse_id: "W".into(),
        physical: physical.into(),
        source_version: version,
        request_id: "snap-1".into(),
        ..Default::default()
    };
    client.set_stock(snapshot("5", 1)).await.unwrap();
    expect_error(client.set_stock(snapshot("6", 2)).await, Code::AlreadyExists, "IDEMPOTENCY_KEY_REUSED");
    assert_eq!(svc.record("S", "W").await.physical, "5");
    let status = expect_error(
        client.set_stock(pb::SetStockRequest { source_version: 1 << 53, ..snapshot("5", 0) }).await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    assert_eq!(bad_fields(&status), ["source_version"]);
}

#[tokio::test]
async fn stock_whose_physical_and_in_transit_add_past_2_pow_53_is_refused() {
    // Each figure fits, their sum (what a Lock can take) would not: Lua's
    // doubles would round `available` and `locked`, and a Lock could take
    // units that do not exist. Both writes are refused, naming in_transit,
    // and change nothing.
    let svc = start().await;
    let mut client = svc.client.clone();
    let big = "5000000000000000";
    let set = pb::SetStockRequest {
        sku: "S".into(),
        warehouse_id: "W".into(),
        physical: big.into(),
        in_transit: big.into(),
        source_version: 1,
        ..Default::default()
    };
    let status = expect_error(client.set_stock(set).await, Code::InvalidArgument, "INVALID_ARGUMENT");
    assert_eq!(bad_fields(&status), ["in_transit"]);

    svc.stock("S", "W", big).await;
    let adjust = pb::AdjustStockRequest {
        sku: "S".into(),
        warehouse_id: "W".into(),
        in_transit_delta: big.into(),
        request_id: "a-1".into(),
        ..Default::default()
    };
    let status = expect_error(client.adjust_stock(adjust).await, Code::InvalidArgument, "INVALID_ARGUMENT");
    assert_eq!(bad_fields(&status), ["in_transit_delta"]);
    let record = svc.record("S", "W").await;
    assert_eq!((record.physical.as_str(), record.in_transit.as_str()), (big, "0"));
}
