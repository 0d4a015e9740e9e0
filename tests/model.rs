//! Model-based property test: random sequences of every inventory operation,
//! bad inputs and retries included, run against the real service and a
//! simple model of what each should do. After every step:
//! - the service answered what the model expected (success, or the error reason);
//! - the record equals the model: physical, locked = the sum of the live
//!   locks, available = physical - locked, never negative (no oversell);
//! - locked + committed + available adds up to what came in;
//! - a failed call left no trace (the record's version did not move);
//! - fencing tokens strictly increase.
//!
//! Locks live 10 minutes, so nothing expires during a case. Each case has
//! its own SKUs on one shared service and Redis.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};

use common::*;
use proptest::prelude::*;
use stocklock::pb;

const RECORDS: usize = 2;

#[derive(Clone, Debug)]
enum Op {
    /// Lock `qty` of record `record`.
    Lock {
        record: usize,
        qty: u32,
    },
    /// The same Lock again with the request_id of an earlier one.
    RetryLock {
        nth: usize,
    },
    /// An earlier request_id with other content.
    ReuseRequestId {
        nth: usize,
        qty: u32,
    },
    /// A malformed quantity.
    BadQuantity {
        record: usize,
        text: &'static str,
    },
    Renew {
        nth: usize,
    },
    Release {
        nth: usize,
    },
    /// Commit all, or `part` of the lock.
    Commit {
        nth: usize,
        part: Option<u32>,
    },
    /// Add (or take, if it stays non-negative) physical stock.
    Adjust {
        record: usize,
        delta: i32,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let record = 0..RECORDS;
    let nth = 0..8usize;
    prop_oneof![
        4 => (record.clone(), 1..5u32).prop_map(|(record, qty)| Op::Lock { record, qty }),
        1 => nth.clone().prop_map(|nth| Op::RetryLock { nth }),
        1 => (nth.clone(), 1..5u32).prop_map(|(nth, qty)| Op::ReuseRequestId { nth, qty }),
        1 => (record.clone(), prop_oneof![Just("0"), Just("-1"), Just("1.5"), Just("x"), Just("")])
            .prop_map(|(record, text)| Op::BadQuantity { record, text }),
        1 => nth.clone().prop_map(|nth| Op::Renew { nth }),
        2 => nth.clone().prop_map(|nth| Op::Release { nth }),
        2 => (nth, proptest::option::of(1..4u32)).prop_map(|(nth, part)| Op::Commit { nth, part }),
        1 => (record, -6..8i32).prop_map(|(record, delta)| Op::Adjust { record, delta }),
    ]
}

/// What the model knows of one lock.
#[derive(Clone, Debug)]
struct ModelLock {
    record: usize,
    qty: i64,
    request_id: String,
    lock_id: String,
    live: bool,
    /// Committed (rather than released), once ended.
    committed: bool,
}

#[derive(Debug, Default)]
struct Model {
    physical: [i64; RECORDS],
    committed: [i64; RECORDS],
    received: [i64; RECORDS],
    locks: Vec<ModelLock>,
    last_token: [u64; RECORDS],
}

impl Model {
    fn locked(&self, record: usize) -> i64 {
        self.locks.iter().filter(|l| l.live && l.record == record).map(|l| l.qty).sum()
    }
    /// What a Lock can still take: never below zero.
    fn available(&self, record: usize) -> i64 {
        (self.physical[record] - self.locked(record)).max(0)
    }
    /// Physical stock taken below what is locked (a warehouse reported a
    /// loss): reported, never hidden, and no new lock gets through.
    fn oversold(&self, record: usize) -> i64 {
        (self.locked(record) - self.physical[record]).max(0)
    }
}

static CASE: AtomicU64 = AtomicU64::new(0);

fn sku(case: u64, record: usize) -> String {
    format!("M{case}-{record}")
}

async fn check_record(svc: &TestService, model: &Model, case: u64, record: usize) -> u64 {
    let r = svc.record(&sku(case, record), "W").await;
    let [physical, locked, available, oversold]: [i64; 4] =
        [&r.physical, &r.locked, &r.available, &r.oversold].map(|v| v.parse().unwrap());
    assert_eq!(physical, model.physical[record], "physical of record {record}: {r:?}");
    assert_eq!(locked, model.locked(record), "locked is the sum of the live locks: {r:?}");
    assert_eq!((available, oversold), (model.available(record), model.oversold(record)), "{r:?}");
    assert!(available >= 0, "{r:?}");
    assert_eq!(
        locked + model.committed[record] + available - oversold,
        model.received[record],
        "the books balance: {r:?}"
    );
    let live = model.locks.iter().filter(|l| l.live && l.record == record).count();
    assert_eq!(r.live_locks as usize, live, "{r:?}");
    r.version
}

async fn run_case(svc: &TestService, ops: Vec<Op>) {
    let case = CASE.fetch_add(1, Ordering::Relaxed);
    let mut model = Model::default();
    for record in 0..RECORDS {
        svc.stock(&sku(case, record), "W", "10").await;
        model.physical[record] = 10;
        model.received[record] = 10;
    }
    let mut client = svc.client.clone();
    let mut next_request = 0;
    for op in ops {
        let versions_before: Vec<u64> = {
            let mut v = Vec::new();
            for record in 0..RECORDS {
                v.push(check_record(svc, &model, case, record).await);
            }
            v
        };
        // The record a failed call must have left untouched.
        let mut touched: Option<usize> = None;
        let mut failed = false;
        match op {
            Op::Lock { record, qty } => {
                next_request += 1;
                let request_id = format!("c{case}-{next_request}");
                let result = client.lock(lock_req(case, record, &qty.to_string(), &request_id)).await;
                touched = Some(record);
                if i64::from(qty) <= model.available(record) {
                    let lock = result.expect("enough stock: the lock succeeds").into_inner().lock.unwrap();
                    assert!(lock.fencing_token > model.last_token[record], "tokens increase");
                    model.last_token[record] = lock.fencing_token;
                    model.locks.push(ModelLock {
                        record,
                        qty: i64::from(qty),
                        request_id,
                        lock_id: lock.lock_id,
                        live: true,
                        committed: false,
                    });
                } else {
                    assert_eq!(reason(&result.expect_err("short: refused")), "INSUFFICIENT_STOCK");
                    failed = true;
                }
            }
            Op::RetryLock { nth } => {
                let Some(lock) = model.locks.get(nth).cloned() else { continue };
                let result = client.lock(lock_req(case, lock.record, &lock.qty.to_string(), &lock.request_id)).await;
                let replay = result.expect("a retry replays the first answer").into_inner();
                assert!(replay.replayed);
                assert_eq!(replay.lock.unwrap().lock_id, lock.lock_id);
                touched = Some(lock.record);
                failed = true; // a replay changes nothing
            }
            Op::ReuseRequestId { nth, qty } => {
                let Some(lock) = model.locks.get(nth).cloned() else { continue };
                if i64::from(qty) == lock.qty {
                    continue;
                }
                let result = client.lock(lock_req(case, lock.record, &qty.to_string(), &lock.request_id)).await;
                assert_eq!(reason(&result.expect_err("other content")), "IDEMPOTENCY_KEY_REUSED");
                touched = Some(lock.record);
                failed = true;
            }
            Op::BadQuantity { record, text } => {
                next_request += 1;
                let result = client.lock(lock_req(case, record, text, &format!("c{case}-{next_request}"))).await;
                let status = result.expect_err("a bad quantity is refused");
                assert_eq!(
                    (reason(&status).as_str(), bad_fields(&status)),
                    ("INVALID_ARGUMENT", vec!["quantity".to_owned()])
                );
                touched = Some(record);
                failed = true;
            }
            Op::Renew { nth } => {
                let Some(lock) = model.locks.get(nth).cloned() else { continue };
                next_request += 1;
                let request = pb::RenewRequest {
                    lock_ids: vec![lock.lock_id.clone()],
                    ttl: secs(600),
                    holder: "order-service".into(),
                    request_id: format!("c{case}-{next_request}"),
                    ..Default::default()
                };
                let result = client.renew(request).await;
                if lock.live {
                    assert!(result.expect("a live lock renews").into_inner().results[0].renewed);
                } else {
                    let status = result.expect_err("an ended lock does not renew");
                    assert_eq!(reason(&status), "LOCK_NOT_FOUND", "{status:?}");
                    touched = Some(lock.record);
                    failed = true;
                }
            }
            Op::Release { nth } => {
                let Some(lock) = model.locks.get(nth).cloned() else { continue };
                next_request += 1;
                let result = svc.release(&lock.lock_id, &format!("c{case}-{next_request}")).await;
                touched = Some(lock.record);
                if lock.live {
                    let released = result.expect("a live lock releases");
                    assert_eq!(released.results[0].outcome(), pb::ReleaseOutcome::Released);
                    model.locks[nth].live = false;
                    touched = None;
                } else if lock.committed {
                    assert_eq!(reason(&result.expect_err("a committed lock")), "LOCK_ALREADY_COMMITTED");
                    failed = true;
                } else {
                    let again = result.expect("releasing twice is answered");
                    assert_eq!(again.results[0].outcome(), pb::ReleaseOutcome::AlreadyReleased);
                    failed = true;
                }
            }
            Op::Commit { nth, part } => {
                let Some(lock) = model.locks.get(nth).cloned() else { continue };
                next_request += 1;
                let quantity = part.map(|p| p.to_string()).unwrap_or_default();
                let request = pb::CommitRequest {
                    lock_id: lock.lock_id.clone(),
                    quantity: quantity.clone(),
                    request_id: format!("c{case}-{next_request}"),
                    ..Default::default()
                };
                let result = client.commit(request).await;
                let part = part.map_or(lock.qty, i64::from);
                touched = Some(lock.record);
                failed = true;
                if lock.live && part <= lock.qty {
                    let committed = result.expect("a live lock commits").into_inner();
                    assert!(committed.committed_now);
                    assert_eq!(committed.committed_quantity, part.to_string());
                    model.locks[nth].live = false;
                    model.locks[nth].committed = true;
                    model.physical[lock.record] -= part;
                    model.committed[lock.record] += part;
                    (touched, failed) = (None, false);
                } else if lock.live {
                    assert_eq!(reason(&result.expect_err("more than locked")), "QUANTITY_EXCEEDS_LOCK");
                } else if lock.committed {
                    // Committed before: said so, and nothing changes.
                    match result {
                        Ok(again) => assert!(!again.into_inner().committed_now),
                        Err(status) => assert_eq!(reason(&status), "QUANTITY_EXCEEDS_LOCK", "{status:?}"),
                    }
                } else {
                    assert_eq!(reason(&result.expect_err("a released lock")), "LOCK_NOT_FOUND");
                }
            }
            Op::Adjust { record, delta } => {
                next_request += 1;
                let request = pb::AdjustStockRequest {
                    sku: sku(case, record),
                    warehouse_id: "W".into(),
                    physical_delta: delta.to_string(),
                    reason: "model".into(),
                    request_id: format!("c{case}-{next_request}"),
                    ..Default::default()
                };
                let result = client.adjust_stock(request).await;
                let after = model.physical[record] + i64::from(delta);
                if delta == 0 {
                    assert_eq!(reason(&result.expect_err("an empty adjustment is refused")), "INVALID_ARGUMENT");
                    touched = Some(record);
                    failed = true;
                } else if after >= 0 {
                    result.expect("the adjustment applies");
                    model.physical[record] = after;
                    model.received[record] += i64::from(delta);
                } else {
                    assert_eq!(reason(&result.expect_err("would go negative")), "NEGATIVE_STOCK");
                    touched = Some(record);
                    failed = true;
                }
            }
        }
        for (record, before) in versions_before.into_iter().enumerate() {
            let version = check_record(svc, &model, case, record).await;
            if failed && touched == Some(record) {
                assert_eq!(version, before, "a failed call left a trace on record {record}");
            }
        }
    }
}

fn lock_req(case: u64, record: usize, quantity: &str, request_id: &str) -> pb::LockRequest {
    let mut request = lock_request(&sku(case, record), "W", quantity, request_id);
    request.ttl = secs(600);
    request
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn every_operation_sequence_keeps_the_books(ops in proptest::collection::vec(op(), 1..40)) {
        let runtime = shared_runtime();
        runtime.block_on(async {
            let svc = service().await;
            run_case(svc, ops).await;
        });
    }
}

/// One runtime and one service for every case: the cases differ by SKU.
fn shared_runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RUNTIME.get_or_init(|| tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap())
}

async fn service() -> &'static TestService {
    static SERVICE: tokio::sync::OnceCell<TestService> = tokio::sync::OnceCell::const_new();
    SERVICE.get_or_init(start).await
}
