//! BatchLock: all lines or none, and batch-wide Renew and Release.

mod common;

use common::*;
use stocklock::pb;
use tonic::Code;
use tonic_types::StatusExt;

fn line(sku: &str, warehouse: &str, quantity: &str) -> pb::BatchLockLine {
    batch_line(sku, warehouse, quantity)
}

#[tokio::test]
async fn a_batch_locks_every_line() {
    let svc = start().await;
    svc.stock("A", "W1", "5").await;
    svc.stock("B", "W1", "5").await;
    svc.stock("A", "W2", "5").await;
    let response = svc
        .client
        .clone()
        .batch_lock(batch(vec![line("A", "W1", "1"), line("B", "W1", "2"), line("A", "W2", "3")], "b1"))
        .await
        .unwrap()
        .into_inner();
    assert!(!response.batch_id.is_empty());
    let got: Vec<_> =
        response.locks.iter().map(|l| (l.sku.as_str(), l.warehouse_id.as_str(), l.quantity.as_str())).collect();
    assert_eq!(got, [("A", "W1", "1"), ("B", "W1", "2"), ("A", "W2", "3")]);
    assert!(response.locks.iter().all(|l| l.batch_id == response.batch_id));
    assert_eq!(svc.available("A", "W1").await, "4");
    assert_eq!(svc.available("B", "W1").await, "3");
    assert_eq!(svc.available("A", "W2").await, "2");
}

#[tokio::test]
async fn one_short_line_locks_nothing_and_every_short_line_is_named() {
    let svc = start().await;
    svc.stock("A", "W1", "5").await;
    svc.stock("B", "W1", "1").await;
    svc.stock("C", "W1", "0").await;
    let result = svc
        .client
        .clone()
        .batch_lock(batch(vec![line("A", "W1", "5"), line("B", "W1", "2"), line("C", "W1", "1")], "b1"))
        .await;
    let status = expect_error(result, Code::FailedPrecondition, "INSUFFICIENT_STOCK");
    let violations = status.get_details_precondition_failure().unwrap().violations;
    let subjects: Vec<_> = violations.iter().map(|v| v.subject.as_str()).collect();
    assert_eq!(subjects, ["lines[1]", "lines[2]"]);
    assert!(violations[0].description.contains("requested 2, available 1"), "{:?}", violations[0]);
    assert_eq!(status.get_details_error_info().unwrap().metadata["short_lines"], "1,2");
    for sku in ["A", "B", "C"] {
        let record = svc.record(sku, "W1").await;
        assert_eq!((record.locked.as_str(), record.live_locks), ("0", 0), "{sku}");
    }
}

#[tokio::test]
async fn a_missing_record_fails_the_batch_naming_its_line() {
    let svc = start().await;
    svc.stock("A", "W1", "5").await;
    let result = svc.client.clone().batch_lock(batch(vec![line("A", "W1", "1"), line("Z", "W1", "1")], "b1")).await;
    let status = expect_error(result, Code::NotFound, "SKU_NOT_AVAILABLE_IN_WAREHOUSE");
    assert_eq!(status.get_details_error_info().unwrap().metadata["line"], "1");
    assert_eq!(svc.record("A", "W1").await.locked, "0");
}

#[tokio::test]
async fn bad_batches_are_rejected_naming_the_line() {
    let svc = start_with(&["--max-batch-lines", "3"]).await;
    svc.stock("A", "W1", "5").await;
    svc.stock("B", "W1", "5").await;
    let mut client = svc.client.clone();
    let status = expect_error(
        client.batch_lock(batch(vec![line("A", "W1", "1"), line("B", "W1", "1"), line("A", "W1", "2")], "b1")).await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    assert_eq!(bad_fields(&status), ["lines[2]"]);
    assert!(status.message().contains("lines[0]"), "{status:?}");

    let status = expect_error(client.batch_lock(batch(vec![], "b2")).await, Code::InvalidArgument, "INVALID_ARGUMENT");
    assert_eq!(bad_fields(&status), ["lines"]);
    let four = vec![line("A", "W1", "1"), line("B", "W1", "1"), line("C", "W1", "1"), line("D", "W1", "1")];
    expect_error(client.batch_lock(batch(four, "b3")).await, Code::InvalidArgument, "INVALID_ARGUMENT");
    let status = expect_error(
        client.batch_lock(batch(vec![line("A", "W1", "1"), line("B", "W1", "-1")], "b4")).await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    assert_eq!(bad_fields(&status), ["lines[1].quantity"]);
    let status = expect_error(
        client.batch_lock(batch(vec![line("A", "W1", "1"), line("B{x}", "W1", "1")], "b5")).await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    assert_eq!(bad_fields(&status), ["lines[1].sku"]);
    svc.stock_scaled("S", "W1", "5", 1).await;
    let status = expect_error(
        client.batch_lock(batch(vec![line("A", "W1", "1"), line("S", "W1", "0.05")], "b6")).await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    assert_eq!(bad_fields(&status), ["lines[1].quantity"]);
    assert_eq!(svc.record("A", "W1").await.locked, "0");
}

#[tokio::test]
async fn a_batch_is_renewed_and_released_by_its_id() {
    let svc = start().await;
    svc.stock("A", "W1", "5").await;
    svc.stock("B", "W1", "5").await;
    let mut client = svc.client.clone();
    let response =
        client.batch_lock(batch(vec![line("A", "W1", "1"), line("B", "W1", "2")], "b1")).await.unwrap().into_inner();

    let renewed = client
        .renew(pb::RenewRequest {
            batch_id: response.batch_id.clone(),
            holder: "order-service".into(),
            request_id: "rn".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<_> = renewed.results.iter().map(|r| r.lock_id.clone()).collect();
    assert_eq!(ids, response.locks.iter().map(|l| l.lock_id.clone()).collect::<Vec<_>>());
    assert!(renewed.results.iter().all(|r| r.renewed));

    // Commit one line, then releasing the batch refuses: its stock is deducted.
    client
        .commit(pb::CommitRequest { lock_id: ids[0].clone(), request_id: "c".into(), ..Default::default() })
        .await
        .unwrap();
    let release = |request_id: &str| pb::ReleaseRequest {
        batch_id: response.batch_id.clone(),
        request_id: request_id.into(),
        ..Default::default()
    };
    expect_error(client.release(release("rel1")).await, Code::FailedPrecondition, "LOCK_ALREADY_COMMITTED");
    assert_eq!(svc.record("B", "W1").await.locked, "2");

    // Releasing the remaining line of the batch by lock id works.
    svc.release(&ids[1], "rel2").await.unwrap();
    assert_eq!(svc.available("B", "W1").await, "5");
    let unknown = client
        .release(pb::ReleaseRequest { batch_id: "b-nope".into(), request_id: "x".into(), ..Default::default() })
        .await;
    expect_error(unknown, Code::NotFound, "BATCH_NOT_FOUND");
}

#[tokio::test]
async fn releasing_a_whole_batch_returns_every_line() {
    let svc = start().await;
    svc.stock("A", "W1", "5").await;
    svc.stock("B", "W1", "5").await;
    let mut client = svc.client.clone();
    let response =
        client.batch_lock(batch(vec![line("A", "W1", "1"), line("B", "W1", "2")], "b1")).await.unwrap().into_inner();
    let released = client
        .release(pb::ReleaseRequest { batch_id: response.batch_id, request_id: "rel".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let outcomes: Vec<_> = released.results.iter().map(|r| (r.outcome(), r.quantity.as_str())).collect();
    assert_eq!(outcomes, [(pb::ReleaseOutcome::Released, "1"), (pb::ReleaseOutcome::Released, "2")]);
    assert_eq!(svc.available("A", "W1").await, "5");
    assert_eq!(svc.available("B", "W1").await, "5");
}
