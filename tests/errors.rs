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
        (
            "quantity",
            Box::new(|r| r.quantity = "99999999999999999999".into()),
        ),
        ("quantity", Box::new(|r| r.quantity = "0.5".into())),
        ("ttl", Box::new(|r| r.ttl = millis(10))),
        ("ttl", Box::new(|r| r.ttl = secs(7200))),
        (
            "ttl",
            Box::new(|r| {
                r.ttl = Some(prost_types::Duration {
                    seconds: -5,
                    nanos: 0,
                })
            }),
        ),
    ];
    for (field, mutate) in cases {
        let mut request = lock_request("SKU-1", "WH-A", "1", "r1");
        mutate(&mut request);
        let status = expect_error(
            svc.client.clone().lock(request.clone()).await,
            Code::InvalidArgument,
            "INVALID_ARGUMENT",
        );
        assert_eq!(bad_fields(&status), [field], "{request:?}: {status:?}");
        assert!(
            status.message().starts_with(field),
            "message names the field: {status:?}"
        );
    }
    let record = svc.record("SKU-1", "WH-A").await;
    assert_eq!(
        (record.locked.as_str(), record.live_locks, record.version),
        ("0", 0, 1)
    );
    let mut conn = svc.redis_conn().await;
    let idem: Vec<String> = redis::cmd("KEYS")
        .arg("sl:idem:*")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(idem.is_empty(), "{idem:?}");
}

#[tokio::test]
async fn bad_ids_in_other_calls_are_refused() {
    let svc = start().await;
    let mut client = svc.client.clone();
    let status = expect_error(
        client
            .renew(pb::RenewRequest {
                holder: "h".into(),
                request_id: "r".into(),
                ..Default::default()
            })
            .await,
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
        client
            .commit(pb::CommitRequest {
                lock_id: "SKU|WH|1-ab".into(),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    assert_eq!(bad_fields(&status), ["request_id"]);
    let status = expect_error(
        client
            .get_lock(pb::GetLockRequest {
                lock_id: "SKU|WH".into(),
            })
            .await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    assert_eq!(bad_fields(&status), ["lock_id"]);
    // Well formed but never issued.
    expect_error(
        client
            .get_lock(pb::GetLockRequest {
                lock_id: "SKU|WH|7-ab".into(),
            })
            .await,
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
                keys: vec![pb::StockKey {
                    sku: "S".into(),
                    warehouse_id: "".into(),
                }],
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
    let lock = svc
        .lock("SKU-1", "WH-A", "1", "r1")
        .await
        .unwrap()
        .lock
        .unwrap();
    // Same record and token, another nonce: not this lock.
    let (prefix, _) = lock.lock_id.rsplit_once('-').unwrap();
    let forged = format!("{prefix}-deadbeef");
    expect_error(
        svc.release(&forged, "rel").await,
        Code::NotFound,
        "LOCK_NOT_FOUND",
    );
    assert_eq!(svc.record("SKU-1", "WH-A").await.locked, "1");
}
