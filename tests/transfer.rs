//! The transfer system's locks: a line that names candidate warehouses
//! (PRIORITY or MOST_AVAILABLE, split or not), and BatchLock policies for
//! short lines (ALL_OR_NOTHING, PER_LINE, PARTIAL).

mod common;

use common::*;
use stocklock::pb;
use tonic::Code;
use tonic_types::StatusExt;

const PRIORITY: pb::AllocationStrategy = pb::AllocationStrategy::Priority;
const MOST_AVAILABLE: pb::AllocationStrategy = pb::AllocationStrategy::MostAvailable;

fn candidates(warehouses: &[&str], strategy: pb::AllocationStrategy, allow_split: bool) -> Option<pb::Candidates> {
    Some(pb::Candidates {
        warehouse_ids: warehouses.iter().map(|w| (*w).to_owned()).collect(),
        strategy: strategy as i32,
        allow_split,
    })
}

/// A Lock of `quantity` of `sku` from `from`.
fn lock_from(sku: &str, from: Option<pb::Candidates>, quantity: &str, request_id: &str) -> pb::LockRequest {
    pb::LockRequest { warehouse_id: String::new(), candidates: from, ..lock_request(sku, "", quantity, request_id) }
}

fn line_from(sku: &str, from: Option<pb::Candidates>, quantity: &str) -> pb::BatchLockLine {
    pb::BatchLockLine { warehouse_id: String::new(), candidates: from, ..batch_line(sku, "", quantity) }
}

/// A BatchLock that must be granted, and its answer.
async fn batch_locked(svc: &TestService, request: pb::BatchLockRequest) -> pb::BatchLockResponse {
    svc.client.clone().batch_lock(request).await.expect("the batch is granted").into_inner()
}

fn policy_batch(lines: Vec<pb::BatchLockLine>, policy: pb::BatchLockPolicy, request_id: &str) -> pb::BatchLockRequest {
    pb::BatchLockRequest { policy: policy as i32, ..batch(lines, request_id) }
}

/// (warehouse, quantity) of each lock.
fn allocation(locks: &[pb::Lock]) -> Vec<(String, String)> {
    locks.iter().map(|l| (l.warehouse_id.clone(), l.quantity.clone())).collect()
}

fn pairs(expected: &[(&str, &str)]) -> Vec<(String, String)> {
    expected.iter().map(|(w, q)| ((*w).to_owned(), (*q).to_owned())).collect()
}

/// Stocks SKU "T" in W1 (2), W2 (5) and W3 (10).
async fn three_warehouses() -> TestService {
    let svc = start().await;
    for (warehouse, physical) in [("W1", "2"), ("W2", "5"), ("W3", "10")] {
        svc.stock("T", warehouse, physical).await;
    }
    svc
}

async fn availability(svc: &TestService, sku: &str, warehouses: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    for w in warehouses {
        out.push(svc.available(sku, w).await);
    }
    out
}

#[tokio::test]
async fn priority_locks_in_the_first_candidate_that_has_it_all() {
    let svc = three_warehouses().await;
    let from = candidates(&["W1", "W2", "W3"], PRIORITY, false);
    let response = svc.client.clone().lock(lock_from("T", from, "4", "r1")).await.unwrap().into_inner();
    assert_eq!(allocation(&response.locks), pairs(&[("W2", "4")]));
    let lock = response.lock.unwrap();
    assert_eq!((lock.warehouse_id.as_str(), response.available.as_str()), ("W2", "1"));
    assert_eq!(availability(&svc, "T", &["W1", "W2", "W3"]).await, ["2", "1", "10"]);
}

#[tokio::test]
async fn most_available_locks_where_most_is_left() {
    let svc = three_warehouses().await;
    let from = candidates(&["W1", "W2", "W3"], MOST_AVAILABLE, false);
    let response = svc.client.clone().lock(lock_from("T", from, "4", "r1")).await.unwrap().into_inner();
    assert_eq!(allocation(&response.locks), pairs(&[("W3", "4")]));
    assert_eq!(availability(&svc, "T", &["W1", "W2", "W3"]).await, ["2", "5", "6"]);
}

#[tokio::test]
async fn a_split_line_takes_from_each_candidate_in_turn_with_a_lock_each() {
    let svc = three_warehouses().await;
    let from = candidates(&["W1", "W2", "W3"], PRIORITY, true);
    let response = svc.client.clone().lock(lock_from("T", from, "8", "r1")).await.unwrap().into_inner();
    assert_eq!(allocation(&response.locks), pairs(&[("W1", "2"), ("W2", "5"), ("W3", "1")]));
    assert_eq!(availability(&svc, "T", &["W1", "W2", "W3"]).await, ["0", "0", "9"]);
    // Each is a lock of its own, released on its own.
    let ids: Vec<String> = response.locks.iter().map(|l| l.lock_id.clone()).collect();
    for lock in &response.locks {
        let stored = svc.client.clone().get_lock(pb::GetLockRequest { lock_id: lock.lock_id.clone() }).await.unwrap();
        let stored = stored.into_inner().lock.unwrap();
        assert_eq!((&stored.warehouse_id, &stored.quantity), (&lock.warehouse_id, &lock.quantity));
    }
    for (n, lock_id) in ids.into_iter().enumerate() {
        let release = pb::ReleaseRequest {
            lock_id,
            holder: "order-service".into(),
            request_id: format!("rel-{n}"),
            ..Default::default()
        };
        svc.client.clone().release(release).await.unwrap();
    }
    assert_eq!(availability(&svc, "T", &["W1", "W2", "W3"]).await, ["2", "5", "10"]);

    let from = candidates(&["W1", "W2", "W3"], MOST_AVAILABLE, true);
    let response = svc.client.clone().lock(lock_from("T", from, "12", "r2")).await.unwrap().into_inner();
    assert_eq!(allocation(&response.locks), pairs(&[("W3", "10"), ("W2", "2")]));
}

#[tokio::test]
async fn a_shortage_names_what_every_candidate_had_and_changes_nothing() {
    let svc = three_warehouses().await;
    let from = candidates(&["W1", "W2", "W3", "W9"], PRIORITY, true);
    let result = svc.client.clone().lock(lock_from("T", from, "20", "r1")).await;
    let status = expect_error(result, Code::FailedPrecondition, "INSUFFICIENT_STOCK");
    let violations = status.get_details_precondition_failure().unwrap().violations;
    let described: Vec<_> = violations.iter().map(|v| (v.subject.as_str(), v.description.as_str())).collect();
    assert_eq!(
        described,
        [
            ("lines[0]", "sku T in warehouse W1: requested 20, available 2"),
            ("lines[0]", "sku T in warehouse W2: requested 20, available 5"),
            ("lines[0]", "sku T in warehouse W3: requested 20, available 10"),
            ("lines[0]", "sku T in warehouse W9: requested 20, available 0 (no record)"),
        ]
    );
    assert_eq!(status.get_details_error_info().unwrap().metadata["short_lines"], "0");
    // Without a split, 6 is short too: no one warehouse has it.
    let from = candidates(&["W1", "W2"], MOST_AVAILABLE, false);
    expect_error(
        svc.client.clone().lock(lock_from("T", from, "6", "r2")).await,
        Code::FailedPrecondition,
        "INSUFFICIENT_STOCK",
    );
    for w in ["W1", "W2", "W3"] {
        assert_eq!(svc.record("T", w).await.live_locks, 0, "{w}");
    }
}

/// A SKU in another partition than `sku` when there are several (on Redis
/// Cluster), so a batch of the two runs a script in each.
fn elsewhere(svc: &TestService, sku: &str) -> String {
    (0..100).map(|i| format!("U{i}")).find(|u| svc.partition(u) != svc.partition(sku)).unwrap_or_else(|| "U".into())
}

#[tokio::test]
async fn per_line_locks_the_lines_that_can_be_filled_and_reports_the_others() {
    let svc = three_warehouses().await;
    // Across partitions, the short line's partition gets nothing and the
    // batch goes on with the other.
    let other = &elsewhere(&svc, "T");
    svc.stock(other, "W1", "1").await;
    let lines = vec![line_from("T", candidates(&["W1", "W2"], PRIORITY, true), "6"), batch_line(other, "W1", "2")];
    let response = batch_locked(&svc, policy_batch(lines, pb::BatchLockPolicy::PerLine, "b1")).await;
    assert_eq!(allocation(&response.locks), pairs(&[("W1", "2"), ("W2", "4")]));
    let [t, u] = &response.lines[..] else { panic!("{:?}", response.lines) };
    assert_eq!((t.requested.as_str(), t.locked.as_str(), t.short.as_str()), ("6", "6", "0"));
    assert_eq!(allocation(&t.locks), pairs(&[("W1", "2"), ("W2", "4")]));
    assert!(t.candidates.is_empty());
    assert_eq!((u.line, u.requested.as_str(), u.locked.as_str(), u.short.as_str()), (1, "2", "0", "2"));
    assert!(u.locks.is_empty());
    let had: Vec<_> = u.candidates.iter().map(|c| (c.warehouse_id.as_str(), c.available.as_str(), c.exists)).collect();
    assert_eq!(had, [("W1", "1", true)]);
    assert_eq!(svc.available(other, "W1").await, "1");
    assert!(response.locks.iter().all(|l| l.batch_id == response.batch_id));
}

#[tokio::test]
async fn partial_locks_what_there_is_up_to_each_line() {
    let svc = three_warehouses().await;
    svc.stock("U", "W1", "1").await;
    svc.stock("V", "W1", "9").await;
    let lines = vec![
        line_from("T", candidates(&["W1", "W2"], PRIORITY, true), "10"),
        batch_line("U", "W1", "3"),
        batch_line("V", "W1", "4"),
    ];
    let response = batch_locked(&svc, policy_batch(lines, pb::BatchLockPolicy::Partial, "b1")).await;
    let figures: Vec<_> =
        response.lines.iter().map(|l| (l.locked.as_str(), l.short.as_str(), l.candidates.len())).collect();
    assert_eq!(figures, [("7", "3", 2), ("1", "2", 1), ("4", "0", 0)]);
    assert_eq!(allocation(&response.lines[0].locks), pairs(&[("W1", "2"), ("W2", "5")]));
    assert_eq!(availability(&svc, "T", &["W1", "W2"]).await, ["0", "0"]);
    assert_eq!(svc.available("U", "W1").await, "0");
    assert_eq!(svc.available("V", "W1").await, "5");

    // Without a split, a partial line takes the most any one candidate has.
    svc.stock("X", "W1", "3").await;
    svc.stock("X", "W2", "4").await;
    let lines = vec![line_from("X", candidates(&["W1", "W2"], PRIORITY, false), "6")];
    let response = batch_locked(&svc, policy_batch(lines, pb::BatchLockPolicy::Partial, "b2")).await;
    assert_eq!(allocation(&response.locks), pairs(&[("W2", "4")]));
}

#[tokio::test]
async fn a_batch_that_gets_nothing_under_any_policy_is_refused() {
    let svc = three_warehouses().await;
    svc.stock("U", "W1", "0").await;
    for policy in [pb::BatchLockPolicy::PerLine, pb::BatchLockPolicy::Partial] {
        let lines = vec![batch_line("U", "W1", "1")];
        let result = svc.client.clone().batch_lock(policy_batch(lines, policy, &format!("b-{policy:?}"))).await;
        expect_error(result, Code::FailedPrecondition, "INSUFFICIENT_STOCK");
    }
    assert_eq!(svc.record("U", "W1").await.live_locks, 0);
}

#[tokio::test]
async fn a_retry_replays_the_allocation() {
    let svc = three_warehouses().await;
    let from = candidates(&["W1", "W2", "W3"], MOST_AVAILABLE, true);
    let first = svc.client.clone().lock(lock_from("T", from.clone(), "12", "r1")).await.unwrap().into_inner();
    let again = svc.client.clone().lock(lock_from("T", from.clone(), "12", "r1")).await.unwrap().into_inner();
    assert!(again.replayed);
    assert_eq!(first.locks, again.locks);
    assert_eq!(first.available, again.available);
    // The same request_id with other candidates is another request.
    let other = candidates(&["W3", "W2"], MOST_AVAILABLE, true);
    expect_error(
        svc.client.clone().lock(lock_from("T", other, "12", "r1")).await,
        Code::AlreadyExists,
        "IDEMPOTENCY_KEY_REUSED",
    );

    svc.stock("U", "W1", "1").await;
    let lines = || vec![line_from("T", candidates(&["W1", "W2"], PRIORITY, true), "2"), batch_line("U", "W1", "3")];
    let partial = pb::BatchLockPolicy::Partial;
    let first = batch_locked(&svc, policy_batch(lines(), partial, "b1")).await;
    let again = batch_locked(&svc, policy_batch(lines(), partial, "b1")).await;
    assert!(again.replayed);
    assert_eq!((first.batch_id.as_str(), &first.lines), (again.batch_id.as_str(), &again.lines));
    // A plain batch under another policy is another request too.
    expect_error(
        svc.client.clone().batch_lock(policy_batch(lines(), pb::BatchLockPolicy::PerLine, "b1")).await,
        Code::AlreadyExists,
        "IDEMPOTENCY_KEY_REUSED",
    );
}

#[tokio::test]
async fn bad_candidates_are_refused_naming_the_field() {
    let svc = three_warehouses().await;
    let mut client = svc.client.clone();
    let both = pb::LockRequest {
        warehouse_id: "W1".into(),
        candidates: candidates(&["W2"], PRIORITY, false),
        ..lock_request("T", "W1", "1", "r1")
    };
    let cases: Vec<(pb::LockRequest, &str)> = vec![
        (both, "warehouse_id"),
        (lock_from("T", candidates(&[], PRIORITY, false), "1", "r2"), "candidates.warehouse_ids"),
        (lock_from("T", candidates(&["W1", "W2", "W1"], PRIORITY, false), "1", "r3"), "candidates.warehouse_ids[2]"),
        (lock_from("T", candidates(&["W1", "bad id"], PRIORITY, false), "1", "r4"), "candidates.warehouse_ids[1]"),
        (
            lock_from(
                "T",
                Some(pb::Candidates { warehouse_ids: vec!["W1".into()], strategy: 9, allow_split: false }),
                "1",
                "r5",
            ),
            "candidates.strategy",
        ),
        (
            lock_from(
                "T",
                candidates(
                    &(0..17)
                        .map(|i| format!("W{i}"))
                        .collect::<Vec<_>>()
                        .iter()
                        .map(String::as_str)
                        .collect::<Vec<_>>(),
                    PRIORITY,
                    false,
                ),
                "1",
                "r6",
            ),
            "candidates.warehouse_ids",
        ),
    ];
    for (request, field) in cases {
        let status = expect_error(client.lock(request).await, Code::InvalidArgument, "INVALID_ARGUMENT");
        assert_eq!(bad_fields(&status), [field], "{status:?}");
    }
    // Two lines may not share a warehouse of a SKU.
    let lines = vec![
        line_from("T", candidates(&["W1", "W2"], PRIORITY, true), "1"),
        line_from("T", candidates(&["W3", "W2"], PRIORITY, true), "1"),
    ];
    let status = expect_error(client.batch_lock(batch(lines, "b1")).await, Code::InvalidArgument, "INVALID_ARGUMENT");
    assert_eq!(bad_fields(&status), ["lines[1]"]);
    let status = expect_error(
        client.batch_lock(pb::BatchLockRequest { policy: 7, ..batch(vec![batch_line("T", "W1", "1")], "b2") }).await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    assert_eq!(bad_fields(&status), ["policy"]);
    for w in ["W1", "W2", "W3"] {
        assert_eq!(svc.record("T", w).await.live_locks, 0, "{w}");
    }
}

#[tokio::test]
async fn a_batch_names_at_most_max_batch_lines_warehouses_counting_candidates() {
    let svc = start_with(&["--max-batch-lines", "3"]).await;
    let lines = vec![
        line_from("T", candidates(&["W1", "W2"], PRIORITY, true), "1"),
        batch_line("U", "W1", "1"),
        batch_line("V", "W1", "1"),
    ];
    let status = expect_error(
        svc.client.clone().batch_lock(batch(lines, "b1")).await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    assert_eq!(bad_fields(&status), ["lines"]);
}

/// Buyers race for the last units of a SKU across two warehouses, each
/// locking one unit with a split over both, while partial batches take
/// what they can: every unit is locked exactly once, and no lock is leaked.
#[tokio::test]
async fn concurrent_transfers_for_the_last_units_never_oversell() {
    let svc = start().await;
    svc.stock("T", "W1", "7").await;
    svc.stock("T", "W2", "5").await;
    let mut tasks = Vec::new();
    for i in 0..24 {
        let mut client = svc.client.clone();
        tasks.push(tokio::spawn(async move {
            if i % 3 == 0 {
                let lines = vec![line_from("T", candidates(&["W2", "W1"], MOST_AVAILABLE, true), "2")];
                let request = policy_batch(lines, pb::BatchLockPolicy::Partial, &format!("b{i}"));
                match client.batch_lock(request).await {
                    Ok(r) => r.into_inner().locks,
                    Err(status) => {
                        assert_eq!(reason(&status), "INSUFFICIENT_STOCK", "{status:?}");
                        Vec::new()
                    }
                }
            } else {
                let from = candidates(&["W1", "W2"], PRIORITY, true);
                match client.lock(lock_from("T", from, "1", &format!("r{i}"))).await {
                    Ok(r) => r.into_inner().locks,
                    Err(status) => {
                        assert_eq!(reason(&status), "INSUFFICIENT_STOCK", "{status:?}");
                        Vec::new()
                    }
                }
            }
        }));
    }
    let mut locked = 0;
    let mut ids = std::collections::HashSet::new();
    for task in tasks {
        for lock in task.await.unwrap() {
            locked += lock.quantity.parse::<u32>().unwrap();
            assert!(ids.insert(lock.lock_id.clone()));
        }
    }
    assert_eq!(locked, 12, "every unit locked once");
    let (w1, w2) = (svc.record("T", "W1").await, svc.record("T", "W2").await);
    assert_eq!((w1.available.as_str(), w2.available.as_str()), ("0", "0"));
    assert_eq!((w1.locked.as_str(), w2.locked.as_str()), ("7", "5"));
    assert_eq!(w1.live_locks + w2.live_locks, ids.len() as u32);
}

fn transfer(lock_id: &str, to: &str, quantity: &str, request_id: &str) -> pb::TransferLockRequest {
    pb::TransferLockRequest {
        lock_id: lock_id.into(),
        to_warehouse_id: to.into(),
        quantity: quantity.into(),
        holder: "order-service".into(),
        request_id: request_id.into(),
    }
}

/// Stocks "T" in W1 (5) and W2 (4), and locks 3 in W1.
async fn a_lock_in_w1() -> (TestService, pb::Lock) {
    let svc = start().await;
    svc.stock("T", "W1", "5").await;
    svc.stock("T", "W2", "4").await;
    let lock = svc.lock("T", "W1", "3", "l1").await.unwrap().lock.unwrap();
    (svc, lock)
}

#[tokio::test]
async fn a_lock_moved_whole_lives_on_in_the_other_warehouse_under_a_new_token() {
    let (svc, lock) = a_lock_in_w1().await;
    let mut client = svc.client.clone();
    let response = client.transfer_lock(transfer(&lock.lock_id, "W2", "", "t1")).await.unwrap().into_inner();
    let moved = response.moved.unwrap();
    assert!(response.remaining.is_none());
    assert_eq!((moved.warehouse_id.as_str(), moved.quantity.as_str()), ("W2", "3"));
    assert_ne!(moved.lock_id, lock.lock_id);
    // The holder, order, creation and expiry carry over.
    assert_eq!((&moved.holder, &moved.order_id), (&lock.holder, &lock.order_id));
    assert_eq!(
        (moved.expires_at, moved.created_at, moved.max_expires_at),
        (lock.expires_at, lock.created_at, lock.max_expires_at)
    );
    assert_eq!((response.source_available.as_str(), response.destination_available.as_str()), ("5", "1"));
    assert_eq!((svc.available("T", "W1").await, svc.available("T", "W2").await), ("5".into(), "1".into()));
    assert_eq!(svc.record("T", "W1").await.live_locks, 0);

    // The old id says where its hold went; releasing it is refused, not "done".
    // Each call on the old id names the moved lock (review: it did not, so
    // a holder that missed the move had no way to reach its hold).
    let gone = client.get_lock(pb::GetLockRequest { lock_id: lock.lock_id.clone() }).await;
    let status = expect_error(gone, Code::NotFound, "LOCK_NOT_FOUND");
    let metadata = status.get_details_error_info().unwrap().metadata;
    assert_eq!((metadata["state"].as_str(), metadata["moved_to"].as_str()), ("MOVED", moved.lock_id.as_str()));
    let release =
        pb::ReleaseRequest { lock_id: lock.lock_id.clone(), request_id: "rel-old".into(), ..Default::default() };
    let status = expect_error(client.release(release).await, Code::NotFound, "LOCK_NOT_FOUND");
    let metadata = status.get_details_error_info().unwrap().metadata;
    assert_eq!((metadata["state"].as_str(), metadata["moved_to"].as_str()), ("MOVED", moved.lock_id.as_str()));
    let commit_old = pb::CommitRequest { lock_id: lock.lock_id.clone(), request_id: "c0".into(), ..Default::default() };
    let status = expect_error(client.commit(commit_old).await, Code::NotFound, "LOCK_NOT_FOUND");
    assert_eq!(status.get_details_error_info().unwrap().metadata["moved_to"], moved.lock_id);
    let again = expect_error(
        client.transfer_lock(transfer(&lock.lock_id, "W2", "", "t-again")).await,
        Code::NotFound,
        "LOCK_NOT_FOUND",
    );
    assert_eq!(again.get_details_error_info().unwrap().metadata["moved_to"], moved.lock_id);
    assert_eq!(svc.available("T", "W2").await, "1");

    // The moved lock is an ordinary lock: commit it.
    let commit = pb::CommitRequest { lock_id: moved.lock_id.clone(), request_id: "c1".into(), ..Default::default() };
    client.commit(commit).await.unwrap();
    let w2 = svc.record("T", "W2").await;
    assert_eq!((w2.physical.as_str(), w2.locked.as_str(), w2.available.as_str()), ("1", "0", "1"));
}

#[tokio::test]
async fn part_of_a_lock_moves_and_the_rest_stays_under_its_id() {
    let (svc, lock) = a_lock_in_w1().await;
    let response =
        svc.client.clone().transfer_lock(transfer(&lock.lock_id, "W2", "2", "t1")).await.unwrap().into_inner();
    let (moved, rest) = (response.moved.unwrap(), response.remaining.unwrap());
    assert_eq!((moved.warehouse_id.as_str(), moved.quantity.as_str()), ("W2", "2"));
    assert_eq!((rest.lock_id.as_str(), rest.quantity.as_str()), (lock.lock_id.as_str(), "1"));
    assert!(moved.fencing_token > 0);
    assert_eq!((svc.available("T", "W1").await, svc.available("T", "W2").await), ("4".into(), "2".into()));
    let kept = svc.client.clone().get_lock(pb::GetLockRequest { lock_id: lock.lock_id.clone() }).await.unwrap();
    assert_eq!(kept.into_inner().lock.unwrap().quantity, "1");
    // Both are released on their own; all stock comes back.
    for (n, id) in [lock.lock_id, moved.lock_id].into_iter().enumerate() {
        let release = pb::ReleaseRequest { lock_id: id, request_id: format!("rel-{n}"), ..Default::default() };
        svc.client.clone().release(release).await.unwrap();
    }
    assert_eq!((svc.available("T", "W1").await, svc.available("T", "W2").await), ("5".into(), "4".into()));
}

#[tokio::test]
async fn a_refused_transfer_changes_nothing_and_says_why() {
    let (svc, lock) = a_lock_in_w1().await;
    svc.stock("T", "W3", "1").await;
    let mut client = svc.client.clone();
    let cases = [
        (transfer(&lock.lock_id, "W3", "", "t1"), Code::FailedPrecondition, "INSUFFICIENT_STOCK"),
        (transfer(&lock.lock_id, "W9", "", "t2"), Code::NotFound, "SKU_NOT_AVAILABLE_IN_WAREHOUSE"),
        (transfer(&lock.lock_id, "W2", "4", "t3"), Code::InvalidArgument, "QUANTITY_EXCEEDS_LOCK"),
        (transfer(&lock.lock_id, "W1", "", "t4"), Code::InvalidArgument, "INVALID_ARGUMENT"),
        (transfer(&lock.lock_id, "W2", "0.5", "t5"), Code::InvalidArgument, "INVALID_ARGUMENT"),
        (
            pb::TransferLockRequest { holder: "someone-else".into(), ..transfer(&lock.lock_id, "W2", "", "t6") },
            Code::PermissionDenied,
            "LOCK_HOLDER_MISMATCH",
        ),
    ];
    for (request, code, reason) in cases {
        expect_error(client.transfer_lock(request).await, code, reason);
    }
    let status = expect_error(
        client.transfer_lock(transfer(&lock.lock_id, "W3", "", "t7")).await,
        Code::FailedPrecondition,
        "INSUFFICIENT_STOCK",
    );
    let violations = status.get_details_precondition_failure().unwrap().violations;
    assert_eq!(violations[0].description, "sku T in warehouse W3: requested the whole lock, available 1");
    let figures = [svc.record("T", "W1").await, svc.record("T", "W2").await, svc.record("T", "W3").await];
    let locked: Vec<_> = figures.iter().map(|r| (r.locked.as_str(), r.live_locks)).collect();
    assert_eq!(locked, [("3", 1), ("0", 0), ("0", 0)]);
}

#[tokio::test]
async fn a_retried_transfer_replays_and_moves_nothing_twice() {
    let (svc, lock) = a_lock_in_w1().await;
    let mut client = svc.client.clone();
    let first = client.transfer_lock(transfer(&lock.lock_id, "W2", "1", "t1")).await.unwrap().into_inner();
    let again = client.transfer_lock(transfer(&lock.lock_id, "W2", "1", "t1")).await.unwrap().into_inner();
    assert!(again.replayed && !first.replayed);
    assert_eq!(first.moved, again.moved);
    assert_eq!((svc.available("T", "W1").await, svc.available("T", "W2").await), ("3".into(), "3".into()));
    expect_error(
        client.transfer_lock(transfer(&lock.lock_id, "W2", "2", "t1")).await,
        Code::AlreadyExists,
        "IDEMPOTENCY_KEY_REUSED",
    );
}

#[tokio::test]
async fn a_batch_keeps_its_moved_locks_and_the_audit_trail_records_the_move() {
    let svc = start().await;
    svc.stock("T", "W1", "5").await;
    svc.stock("T", "W2", "5").await;
    svc.stock("U", "W1", "5").await;
    let response = batch_locked(&svc, batch(vec![batch_line("T", "W1", "2"), batch_line("U", "W1", "1")], "b1")).await;
    let moved = svc
        .client
        .clone()
        .transfer_lock(transfer(&response.locks[0].lock_id, "W2", "", "t1"))
        .await
        .unwrap()
        .into_inner()
        .moved
        .unwrap();
    assert_eq!(moved.batch_id, response.batch_id);
    assert_eq!(svc.available("T", "W2").await, "3");
    // Release by batch finds the moved lock.
    let release =
        pb::ReleaseRequest { batch_id: response.batch_id.clone(), request_id: "rel-b".into(), ..Default::default() };
    svc.client.clone().release(release).await.unwrap();
    let available = [svc.available("T", "W1").await, svc.available("T", "W2").await, svc.available("U", "W1").await];
    assert_eq!(available, ["5", "5", "5"]);

    let admin = &mut svc.admin().await;
    let events = admin.list_audit_events(pb::ListAuditEventsRequest::default()).await.unwrap().into_inner().events;
    let event = events.iter().find(|e| e.action == "lock.transfer").expect("a lock.transfer audit event");
    assert_eq!((event.sku.as_str(), event.warehouse_id.as_str()), ("T", "W1"));
    assert_eq!(event.lock_ids, [response.locks[0].lock_id.clone(), moved.lock_id.clone()]);
    assert_eq!(event.details["to_warehouse_id"], "W2");
}

/// Holders race to move their locks into the last units of a warehouse:
/// exactly as many moves succeed as there are units, and every unit is
/// held exactly once across both warehouses.
#[tokio::test]
async fn concurrent_moves_into_the_last_units_never_oversell() {
    let svc = start_with(&["--invariant-check-interval", "100ms"]).await;
    svc.stock("T", "W1", "10").await;
    svc.stock("T", "W2", "3").await;
    let mut locks = Vec::new();
    for i in 0..10 {
        locks.push(svc.lock("T", "W1", "1", &format!("l{i}")).await.unwrap().lock.unwrap());
    }
    let tasks: Vec<_> = locks
        .iter()
        .enumerate()
        .map(|(i, lock)| {
            let (mut client, request) = (svc.client.clone(), transfer(&lock.lock_id, "W2", "", &format!("t{i}")));
            tokio::spawn(async move { client.transfer_lock(request).await })
        })
        .collect();
    let mut moved = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => moved += 1,
            Err(status) => assert_eq!(reason(&status), "INSUFFICIENT_STOCK", "{status:?}"),
        }
    }
    assert_eq!(moved, 3);
    let (w1, w2) = (svc.record("T", "W1").await, svc.record("T", "W2").await);
    assert_eq!((w1.locked.as_str(), w1.live_locks, w1.available.as_str()), ("7", 7, "3"));
    assert_eq!((w2.locked.as_str(), w2.live_locks, w2.available.as_str()), ("3", 3, "0"));
    // The invariant auditor agrees: each record's locked is the sum of its
    // locks, its live count their number, each lock indexed. (The metrics
    // are the process's: two passes after the moves, none finding drift.)
    let passes = |m: &std::collections::HashMap<String, f64>| m["stocklock_invariant_passes_total"];
    let before = passes(&scrape(&svc).await);
    let clean = eventually(std::time::Duration::from_secs(10), || async {
        let metrics = scrape(&svc).await;
        passes(&metrics) >= before + 2.0
            && metrics.iter().filter(|(k, _)| k.starts_with("stocklock_invariant_violations{")).all(|(_, v)| *v == 0.0)
    })
    .await;
    assert!(clean, "the auditor found drift after the moves: {:?}", scrape(&svc).await);
}

#[tokio::test]
async fn a_moved_lock_stays_in_its_session_and_ends_with_it() {
    let svc = start().await;
    svc.stock("T", "W1", "5").await;
    svc.stock("T", "W2", "5").await;
    let mut client = svc.client.clone();
    let open = pb::OpenSessionRequest { ttl: secs(30), holder: "order-service".into(), request_id: "s1".into() };
    let session = client.open_session(open).await.unwrap().into_inner().session.unwrap();
    let request =
        pb::LockRequest { ttl: None, session_id: session.session_id.clone(), ..lock_request("T", "W1", "4", "l1") };
    let lock = client.lock(request).await.unwrap().into_inner().lock.unwrap();
    let response = client.transfer_lock(transfer(&lock.lock_id, "W2", "3", "t1")).await.unwrap().into_inner();
    assert_eq!(response.moved.unwrap().session_id, session.session_id);
    assert_eq!((svc.available("T", "W1").await, svc.available("T", "W2").await), ("4".into(), "2".into()));
    let close = pb::CloseSessionRequest { session_id: session.session_id.clone(), holder: "order-service".into() };
    client.close_session(close).await.unwrap();
    let back = eventually(std::time::Duration::from_secs(5), || async {
        svc.available("T", "W1").await == "5" && svc.available("T", "W2").await == "5"
    })
    .await;
    assert!(back, "the session's end did not release the moved lock");
}

/// Review: on Redis Cluster a PER_LINE batch whose short line sat alone in
/// its partition left that partition no record, so a retry after a restock
/// locked the line afresh: an answer other than the first, and locks the
/// caller never heard of.
#[tokio::test]
async fn a_retried_per_line_batch_replays_its_short_lines_even_after_a_restock() {
    let svc = three_warehouses().await;
    let other = &elsewhere(&svc, "T");
    svc.stock(other, "W1", "1").await;
    let lines = || vec![batch_line("T", "W1", "2"), batch_line(other, "W1", "2")];
    let per_line = pb::BatchLockPolicy::PerLine;
    let first = batch_locked(&svc, policy_batch(lines(), per_line, "b1")).await;
    assert_eq!(first.lines[1].locked, "0");
    svc.stock(other, "W1", "10").await;
    let again = batch_locked(&svc, policy_batch(lines(), per_line, "b1")).await;
    assert!(again.replayed);
    assert_eq!((&first.batch_id, &first.locks, &first.lines), (&again.batch_id, &again.locks, &again.lines));
    assert_eq!(svc.record(other, "W1").await.live_locks, 0);
}

/// Review: expired locks in other shards of a candidate were settled only
/// when the line was short, so PRIORITY passed over the first warehouse.
#[tokio::test]
async fn candidates_are_ranked_after_their_expired_locks_are_settled() {
    let svc = start_with(&["--min-ttl", "100ms", "--sweep-interval", "1h"]).await;
    svc.stock("T", "W1", "16").await;
    svc.stock("T", "W2", "16").await;
    for i in 0..16 {
        let request = pb::LockRequest { ttl: millis(200), ..lock_request("T", "W1", "1", &format!("r{i}")) };
        svc.client.clone().lock(request).await.unwrap();
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let from = candidates(&["W1", "W2"], PRIORITY, false);
    let response = svc.client.clone().lock(lock_from("T", from, "16", "all")).await.unwrap().into_inner();
    assert_eq!(allocation(&response.locks), pairs(&[("W1", "16")]));
}

/// Review: a line whose only candidate has no record failed the whole
/// batch instead of counting as short.
#[tokio::test]
async fn a_single_candidate_without_a_record_is_a_short_line() {
    let svc = three_warehouses().await;
    let lines = vec![line_from("T", candidates(&["W9"], PRIORITY, false), "1"), batch_line("T", "W1", "1")];
    let response = batch_locked(&svc, policy_batch(lines, pb::BatchLockPolicy::PerLine, "b1")).await;
    let had: Vec<_> = response.lines[0]
        .candidates
        .iter()
        .map(|c| (c.warehouse_id.as_str(), c.available.as_str(), c.exists))
        .collect();
    assert_eq!(had, [("W9", "0", false)]);
    assert_eq!(allocation(&response.locks), pairs(&[("W1", "1")]));
}

/// Review: a quantity finer than one candidate's unit scale failed the line
/// instead of passing over that candidate.
#[tokio::test]
async fn a_candidate_whose_unit_scale_cannot_hold_the_quantity_is_passed_over() {
    let svc = start().await;
    svc.stock("T", "W1", "5").await;
    svc.stock_scaled("T", "W2", "5", 1).await;
    let from = candidates(&["W1", "W2"], PRIORITY, false);
    let response = svc.client.clone().lock(lock_from("T", from, "1.5", "r1")).await.unwrap().into_inner();
    assert_eq!(allocation(&response.locks), pairs(&[("W2", "1.5")]));
    // Partial, without a split: the coarse candidate gives whole units only.
    svc.stock_scaled("T", "W2", "0", 1).await;
    let lines = vec![line_from("T", candidates(&["W1", "W2"], PRIORITY, false), "2.5")];
    let response = batch_locked(&svc, policy_batch(lines, pb::BatchLockPolicy::Partial, "b1")).await;
    assert_eq!(allocation(&response.locks), pairs(&[("W1", "2")]));
    // A line of one warehouse is still refused: the request is wrong for it.
    expect_error(svc.lock("T", "W1", "1.5", "r2").await, Code::InvalidArgument, "INVALID_ARGUMENT");
}

/// The hourly lock health counts a transfer lock by the warehouse that gave
/// the stock, and a short line by each candidate that gave nothing.
#[tokio::test]
async fn lock_health_counts_the_warehouses_that_gave_and_the_candidates_that_were_short() {
    let svc = start().await;
    svc.stock("T", "W1", "2").await;
    svc.stock("T", "W2", "0").await;
    svc.stock("T", "W3", "5").await;
    let lines = vec![line_from("T", candidates(&["W1", "W2"], PRIORITY, true), "3")];
    svc.client.clone().batch_lock(policy_batch(lines, pb::BatchLockPolicy::Partial, "b1")).await.unwrap();
    let lock = svc.lock("T", "W3", "1", "l1").await.unwrap().lock.unwrap();
    svc.client.clone().transfer_lock(transfer(&lock.lock_id, "W1", "", "t1")).await.unwrap_err();
    // Counts reach Redis in the next flush (about a second): wait for them.
    let expected = [("W1|OK", 1), ("W2|INSUFFICIENT_STOCK", 1), ("W3|OK", 1), ("W1|INSUFFICIENT_STOCK", 1)];
    let flushed = hourly_counts_reach(&svc, &expected).await;
    assert!(flushed, "the hourly counts never showed {expected:?}");
}
