//! Forced unlocks under the two-person rule, stale locks, and the audit trail.

mod common;

use std::time::Duration;

use common::*;
use stocklock::pb;
use tonic::Code;

fn by_lock(lock_id: &str) -> Option<pb::LockSelector> {
    Some(pb::LockSelector { target: Some(pb::lock_selector::Target::LockId(lock_id.into())) })
}

fn request(selector: Option<pb::LockSelector>, request_id: &str) -> pb::RequestForceUnlockRequest {
    pb::RequestForceUnlockRequest {
        selector,
        reason: "order service crashed".into(),
        request_id: request_id.into(),
        operator: String::new(),
    }
}

fn approve(id: &str, request_id: &str) -> pb::ApproveForceUnlockRequest {
    pb::ApproveForceUnlockRequest {
        id: id.into(),
        comment: "checked with the shop".into(),
        request_id: request_id.into(),
        operator: String::new(),
    }
}

#[tokio::test]
async fn a_forced_unlock_needs_a_second_operator_and_fences_the_holder() {
    let svc = start_authed(&[]).await;
    let mut root = svc.inventory_as(Some("root-token-0123456789")).await;
    stock_as_root(&mut root, "S", "W", "10").await;
    let mut checkout = svc.inventory_as(Some("checkout-token-0123456789")).await;
    let lock = checkout.lock(lock_request("S", "W", "4", "r1")).await.unwrap().into_inner().lock.unwrap();
    assert_eq!(lock.holder, "checkout", "the holder is the authenticated principal");

    let mut alice = svc.admin_as(Some("alice-token-0123456789")).await;
    let mut bob = svc.admin_as(Some("bob-token-0123456789")).await;
    let pending = alice
        .request_force_unlock(request(by_lock(&lock.lock_id), "fu-1"))
        .await
        .unwrap()
        .into_inner()
        .request
        .unwrap();
    assert_eq!(pending.state(), pb::ForceUnlockState::Pending);
    assert_eq!(pending.requester, "alice");
    assert_eq!(pending.items.len(), 1);
    assert_eq!((pending.items[0].quantity.as_str(), pending.items[0].holder.as_str()), ("4", "checkout"));
    let record = |mut client: stocklock::pb::inventory_service_client::InventoryServiceClient<AuthedChannel>| async move {
        let request = pb::GetAvailabilityRequest { sku: "S".into(), warehouse_id: "W".into() };
        client.get_availability(request).await.unwrap().into_inner().records.remove(0)
    };
    // Nothing is released before the approval.
    assert_eq!(record(root.clone()).await.locked, "4");

    // The requester cannot approve their own request.
    let own = alice.approve_force_unlock(approve(&pending.id, "ap-1")).await;
    expect_error(own, Code::PermissionDenied, "TWO_PERSON_RULE");

    let done = bob.approve_force_unlock(approve(&pending.id, "ap-2")).await.unwrap().into_inner().request.unwrap();
    assert_eq!(done.state(), pb::ForceUnlockState::Executed);
    assert_eq!(done.decided_by, "bob");
    assert_eq!(done.released_lock_ids, std::slice::from_ref(&lock.lock_id));
    let after = record(root.clone()).await;
    assert_eq!((after.locked.as_str(), after.available.as_str()), ("0", "10"));

    // The old holder is fenced out, and told why.
    let renew =
        pb::RenewRequest { lock_ids: vec![lock.lock_id.clone()], request_id: "rn".into(), ..Default::default() };
    let status = expect_error(checkout.renew(renew).await, Code::NotFound, "LOCK_FORCE_RELEASED");
    assert!(status.message().contains("force-released"), "{status:?}");
    let commit = pb::CommitRequest { lock_id: lock.lock_id.clone(), request_id: "c".into(), ..Default::default() };
    expect_error(checkout.commit(commit).await, Code::NotFound, "LOCK_FORCE_RELEASED");
    let release = pb::ReleaseRequest { lock_id: lock.lock_id.clone(), request_id: "rel".into(), ..Default::default() };
    let released = checkout.release(release).await.unwrap().into_inner();
    assert_eq!(released.results[0].outcome(), pb::ReleaseOutcome::ForceReleased);
    assert_eq!(record(root.clone()).await.physical, "10");

    // A decided request cannot be decided again.
    let again = bob.approve_force_unlock(approve(&pending.id, "ap-3")).await;
    expect_error(again, Code::FailedPrecondition, "FORCE_UNLOCK_NOT_PENDING");

    // The audit trail has who, what and why.
    let events = alice
        .list_audit_events(pb::ListAuditEventsRequest { sku: String::new(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .events;
    let actions: Vec<_> = events.iter().map(|e| (e.action.as_str(), e.actor.as_str())).collect();
    assert_eq!(actions, [("stock.set", "root"), ("force_unlock.requested", "alice"), ("force_unlock.approved", "bob")]);
    assert_eq!(events[1].reason, "order service crashed");
    assert_eq!(events[1].request_id, "fu-1");
    assert_eq!(events[2].lock_ids, std::slice::from_ref(&lock.lock_id));
    assert_eq!(events[2].details["force_unlock_id"], pending.id);
}

#[tokio::test]
async fn a_request_can_be_rejected_and_expires_undecided() {
    let svc = start_with(&["--force-unlock-ttl", "300ms"]).await;
    svc.stock("S", "W", "10").await;
    let lock = svc.lock("S", "W", "1", "r1").await.unwrap().lock.unwrap();
    let mut admin = svc.admin().await;
    let as_op = |mut r: pb::RequestForceUnlockRequest, op: &str| {
        r.operator = op.into();
        r
    };

    // Authentication off: operators name themselves.
    let missing = admin.request_force_unlock(request(by_lock(&lock.lock_id), "fu-0")).await;
    let status = expect_error(missing, Code::InvalidArgument, "INVALID_ARGUMENT");
    assert_eq!(bad_fields(&status), ["operator"]);

    let first = admin
        .request_force_unlock(as_op(request(by_lock(&lock.lock_id), "fu-1"), "alice"))
        .await
        .unwrap()
        .into_inner()
        .request
        .unwrap();
    let rejected = admin
        .reject_force_unlock(pb::RejectForceUnlockRequest {
            id: first.id.clone(),
            reason: "wrong lock".into(),
            request_id: "rj".into(),
            operator: "bob".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .request
        .unwrap();
    assert_eq!((rejected.state(), rejected.decided_by.as_str()), (pb::ForceUnlockState::Rejected, "bob"));
    let late = admin
        .approve_force_unlock(pb::ApproveForceUnlockRequest { operator: "carol".into(), ..approve(&first.id, "ap-1") })
        .await;
    expect_error(late, Code::FailedPrecondition, "FORCE_UNLOCK_NOT_PENDING");

    let second = admin
        .request_force_unlock(as_op(request(by_lock(&lock.lock_id), "fu-2"), "alice"))
        .await
        .unwrap()
        .into_inner()
        .request
        .unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let expired = admin
        .approve_force_unlock(pb::ApproveForceUnlockRequest { operator: "bob".into(), ..approve(&second.id, "ap-2") })
        .await;
    expect_error(expired, Code::FailedPrecondition, "FORCE_UNLOCK_EXPIRED");
    assert_eq!(svc.record("S", "W").await.locked, "1", "nothing was released");

    let list =
        |state: pb::ForceUnlockState| pb::ListForceUnlockRequestsRequest { state: state.into(), ..Default::default() };
    let expired =
        admin.list_force_unlock_requests(list(pb::ForceUnlockState::Expired)).await.unwrap().into_inner().requests;
    assert_eq!(expired.iter().map(|r| r.id.clone()).collect::<Vec<_>>(), std::slice::from_ref(&second.id));
    let all =
        admin.list_force_unlock_requests(list(pb::ForceUnlockState::Unspecified)).await.unwrap().into_inner().requests;
    assert_eq!(all.iter().map(|r| r.id.clone()).collect::<Vec<_>>(), [second.id, first.id], "newest first");
    let bad =
        admin.list_force_unlock_requests(pb::ListForceUnlockRequestsRequest { state: 42, ..Default::default() }).await;
    let status = expect_error(bad, Code::InvalidArgument, "INVALID_ARGUMENT");
    assert_eq!(bad_fields(&status), ["state"]);
}

#[tokio::test]
async fn a_filter_selects_locks_and_an_empty_selection_is_refused() {
    let svc = start().await;
    svc.stock("S", "W", "10").await;
    svc.stock("T", "W", "10").await;
    for (sku, request_id) in [("S", "a"), ("T", "b")] {
        let mut request = lock_request(sku, "W", "1", request_id);
        request.order_id = "order-7".into();
        svc.client.clone().lock(request).await.unwrap();
    }
    svc.lock("S", "W", "1", "other").await.unwrap();
    let mut admin = svc.admin().await;
    let filter = |order_id: &str| {
        Some(pb::LockSelector {
            target: Some(pb::lock_selector::Target::Filter(pb::ListLocksRequest {
                order_id: order_id.into(),
                ..Default::default()
            })),
        })
    };
    let mut r = request(filter("order-7"), "fu-1");
    r.operator = "alice".into();
    let pending = admin.request_force_unlock(r).await.unwrap().into_inner().request.unwrap();
    let mut skus: Vec<_> = pending.items.iter().map(|i| i.sku.clone()).collect();
    skus.sort();
    assert_eq!(skus, ["S", "T"]);
    let mut none = request(filter("order-nope"), "fu-2");
    none.operator = "alice".into();
    expect_error(admin.request_force_unlock(none).await, Code::FailedPrecondition, "NO_LOCKS_MATCHED");
    let mut reason_missing = request(filter("order-7"), "fu-3");
    reason_missing.operator = "alice".into();
    reason_missing.reason = " ".into();
    let status =
        expect_error(admin.request_force_unlock(reason_missing).await, Code::InvalidArgument, "INVALID_ARGUMENT");
    assert_eq!(bad_fields(&status), ["reason"]);
}

/// Issue 15: a forced unlock whose last lock lost its expiry entry (the
/// drift the auditor reports) after the request releases every lock, marks
/// the request executed and audits it; it does not stop half way. (Fixed
/// before this test: find_lock falls back to the lock's maximum hold.)
#[tokio::test]
async fn a_forced_unlock_over_a_lock_without_expiry_entry_completes() {
    let svc = start().await;
    svc.stock("S", "W", "10").await;
    let mut locks = Vec::new();
    for request_id in ["a", "b", "c"] {
        let mut request = lock_request("S", "W", "1", request_id);
        request.order_id = "order-9".into();
        locks.push(svc.client.clone().lock(request).await.unwrap().into_inner().lock.unwrap());
    }
    let mut admin = svc.admin().await;
    let selector = Some(pb::LockSelector {
        target: Some(pb::lock_selector::Target::Filter(pb::ListLocksRequest {
            order_id: "order-9".into(),
            ..Default::default()
        })),
    });
    let mut r = request(selector, "fu-1");
    r.operator = "alice".into();
    let pending = admin.request_force_unlock(r).await.unwrap().into_inner().request.unwrap();
    assert_eq!(pending.items.len(), 3);
    // Between the request and its approval, the lock it releases last loses
    // its expiry entry.
    let last = &pending.items.last().unwrap().lock_id;
    let drifted = locks.iter().find(|l| &l.lock_id == last).unwrap();
    let mut conn = svc.redis_conn().await;
    let exp = svc.lock_keys(&drifted.lock_id).exp;
    let removed: i64 =
        redis::cmd("ZREM").arg(&exp).arg(drifted.fencing_token.to_string()).query_async(&mut conn).await.unwrap();
    assert_eq!(removed, 1);

    let mut a = approve(&pending.id, "ap-1");
    a.operator = "bob".into();
    let done = admin.approve_force_unlock(a).await.unwrap().into_inner().request.unwrap();
    assert_eq!(done.state(), pb::ForceUnlockState::Executed);
    let mut released = done.released_lock_ids.clone();
    released.sort();
    let mut expected: Vec<_> = locks.iter().map(|l| l.lock_id.clone()).collect();
    expected.sort();
    assert_eq!(released, expected);
    let record = svc.record("S", "W").await;
    assert_eq!((record.locked.as_str(), record.available.as_str()), ("0", "10"));
    let events = admin.list_audit_events(pb::ListAuditEventsRequest::default()).await.unwrap().into_inner().events;
    assert!(events.iter().any(|e| e.action == "force_unlock.approved"), "{events:?}");
}

#[tokio::test]
async fn stale_locks_are_listed_counted_and_may_be_released_in_one_step() {
    let svc = start_with(&["--stale-threshold", "300ms", "--single-step-stale-unlock"]).await;
    svc.stock("S", "W", "10").await;
    let old = svc.lock("S", "W", "2", "old").await.unwrap().lock.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let fresh = svc.lock("S", "W", "3", "fresh").await.unwrap().lock.unwrap();

    let stale = svc
        .client
        .clone()
        .list_locks(pb::ListLocksRequest { stale: true, ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .locks;
    assert_eq!(stale.iter().map(|l| l.lock_id.clone()).collect::<Vec<_>>(), std::slice::from_ref(&old.lock_id));
    let mut admin = svc.admin().await;
    let stats = admin.get_lock_stats(pb::GetLockStatsRequest {}).await.unwrap().into_inner();
    assert_eq!((stats.live_locks, stats.stale_locks), (2, 1));
    assert_eq!(stats.oldest_created_at, old.created_at);

    // A fresh lock still needs a second operator, even under the policy.
    let mut r = request(by_lock(&fresh.lock_id), "fu-1");
    r.operator = "alice".into();
    let pending = admin.request_force_unlock(r).await.unwrap().into_inner().request.unwrap();
    assert_eq!(pending.state(), pb::ForceUnlockState::Pending);

    // Stale locks only: released at once, by the policy, and audited.
    let mut r = request(by_lock(&old.lock_id), "fu-2");
    r.operator = "alice".into();
    let done = admin.request_force_unlock(r).await.unwrap().into_inner().request.unwrap();
    assert_eq!(done.state(), pb::ForceUnlockState::Executed);
    assert!(done.single_step);
    assert_eq!(svc.record("S", "W").await.locked, "3");
    let events = admin
        .list_audit_events(pb::ListAuditEventsRequest {
            action: "force_unlock.policy_executed".into(),
            ..Default::default()
        })
        .await;
    let events = events.unwrap().into_inner().events;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].details["requester"], "alice");
}

#[tokio::test]
async fn the_audit_trail_pages_and_filters() {
    let svc = start().await;
    for i in 0..5 {
        svc.stock(&format!("S{i}"), "W", "10").await;
    }
    let mut client = svc.client.clone();
    client
        .adjust_stock(pb::AdjustStockRequest {
            sku: "S1".into(),
            warehouse_id: "W".into(),
            physical_delta: "-2.0".into(),
            request_id: "adj".into(),
            reason: "damaged in storage".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut admin = svc.admin().await;
    let mut token = String::new();
    let mut seen = Vec::new();
    loop {
        let page = admin
            .list_audit_events(pb::ListAuditEventsRequest {
                page_size: 2,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.events.len() <= 2);
        seen.extend(page.events);
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen.len(), 6);
    let at = |e: &pb::AuditEvent| e.at.map(|t| (t.seconds, t.nanos));
    assert!(seen.windows(2).all(|w| at(&w[0]) <= at(&w[1])));
    let adjust = seen.last().unwrap();
    assert_eq!(
        (adjust.action.as_str(), adjust.sku.as_str(), adjust.actor.as_str()),
        ("stock.adjust", "S1", "anonymous")
    );
    assert_eq!(adjust.details["physical"], "10 -> 8");
    assert_eq!(adjust.reason, "damaged in storage");

    let s1 = admin
        .list_audit_events(pb::ListAuditEventsRequest { sku: "S1".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .events;
    assert_eq!(s1.iter().map(|e| e.action.as_str()).collect::<Vec<_>>(), ["stock.set", "stock.adjust"]);
    let later = pb::ListAuditEventsRequest { since: adjust.at, ..Default::default() };
    let later = admin.list_audit_events(later).await.unwrap().into_inner().events;
    assert!(later.iter().all(|e| at(e) >= at(adjust)) && later.iter().any(|e| e.id == adjust.id));
    let bad =
        admin.list_audit_events(pb::ListAuditEventsRequest { page_token: "x".into(), ..Default::default() }).await;
    expect_error(bad, Code::InvalidArgument, "INVALID_ARGUMENT");
}

/// Issue 15: a forced unlock over several partitions whose steps were cut
/// short (the request recorded in one partition only, then the approval
/// executed in one partition only) completes when each step is retried:
/// the retry records the missing part under the same id, and the retried
/// approval skips the executed part and executes the rest.
#[tokio::test]
async fn a_forced_unlock_across_partitions_completes_when_its_steps_are_retried() {
    let svc = start_with(&["--redis-partitions", "4"]).await;
    let keys = stocklock::store::redis::Keys::new("sl", 4);
    let partition = |sku: &str| keys.partition_of(&stocklock::domain::Sku::parse(sku, "sku").unwrap());
    let first = "S-0".to_owned();
    let second = (1..100).map(|i| format!("S-{i}")).find(|s| partition(s) != partition(&first)).unwrap();
    for sku in [&first, &second] {
        svc.stock(sku, "W", "10").await;
        let mut lock = lock_request(sku, "W", "1", &format!("lock-{sku}"));
        lock.order_id = "order-5".into();
        svc.client.clone().lock(lock).await.unwrap();
    }
    let selector = Some(pb::LockSelector {
        target: Some(pb::lock_selector::Target::Filter(pb::ListLocksRequest {
            order_id: "order-5".into(),
            ..Default::default()
        })),
    });
    let mut admin = svc.admin().await;
    let mut r = request(selector, "fu-x");
    r.operator = "alice".into();
    let pending = admin.request_force_unlock(r.clone()).await.unwrap().into_inner().request.unwrap();
    // As if the first attempt had stopped before the second partition: its
    // part and idempotency record there are gone.
    let request_id = stocklock::domain::RequestId::parse("fu-x", "request_id").unwrap();
    let mut conn = svc.redis_conn().await;
    for key in [
        keys.force_unlock(partition(&second), &pending.id),
        keys.idempotency(partition(&second), "request_force_unlock", &request_id),
    ] {
        let deleted: u64 = redis::cmd("DEL").arg(&key).query_async(&mut conn).await.unwrap();
        assert_eq!(deleted, 1, "{key}");
    }
    let retried = admin.request_force_unlock(r).await.unwrap().into_inner().request.unwrap();
    assert_eq!(retried.id, pending.id);
    assert_eq!(retried.items.len(), 2, "both parts under one id");

    // The approval executes the first part, then fails on the second (its
    // idempotency key unreadable for a moment: a script error before any
    // write); a new approval run completes.
    // Parts are decided in partition order.
    let (done_first, fails) =
        if partition(&first) < partition(&second) { (&first, &second) } else { (&second, &first) };
    let approval = stocklock::domain::RequestId::parse("ap-1", "request_id").unwrap();
    let blocker = keys.idempotency(partition(fails), "approve_force_unlock", &approval);
    let _: () = redis::cmd("HSET").arg(&blocker).arg("not").arg("a string").query_async(&mut conn).await.unwrap();
    let mut a = approve(&pending.id, "ap-1");
    a.operator = "bob".into();
    assert!(admin.approve_force_unlock(a).await.is_err());
    assert_eq!(svc.record(done_first, "W").await.live_locks, 0, "the first part was executed");
    assert_eq!(svc.record(fails, "W").await.live_locks, 1, "the second part was not");
    let _: () = redis::cmd("DEL").arg(&blocker).query_async(&mut conn).await.unwrap();
    let mut a = approve(&pending.id, "ap-2");
    a.operator = "bob".into();
    let done = admin.approve_force_unlock(a).await.unwrap().into_inner().request.unwrap();
    assert_eq!(done.state, pb::ForceUnlockState::Executed as i32);
    for sku in [&first, &second] {
        assert_eq!(svc.record(sku, "W").await.live_locks, 0, "{sku}");
    }
}

/// A request_id reused after its idempotency record expired (24 h) while
/// the forced unlock it made is kept (30 days) does not overwrite that
/// request: it is refused, and the executed request stays as it was.
#[tokio::test]
async fn a_request_id_reused_after_its_record_expired_does_not_overwrite_the_request() {
    let svc = start().await;
    svc.stock("S", "W", "10").await;
    let lock = svc.lock("S", "W", "1", "l1").await.unwrap().lock.unwrap();
    let mut admin = svc.admin().await;
    let selector = || Some(pb::LockSelector { target: Some(pb::lock_selector::Target::LockId(lock.lock_id.clone())) });
    let mut r = request(selector(), "fu-old");
    r.operator = "alice".into();
    let pending = admin.request_force_unlock(r.clone()).await.unwrap().into_inner().request.unwrap();
    let mut a = approve(&pending.id, "ap-1");
    a.operator = "bob".into();
    admin.approve_force_unlock(a).await.unwrap();
    // A day later the idempotency record is gone; the request is not.
    let request_id = stocklock::domain::RequestId::parse("fu-old", "request_id").unwrap();
    let mut conn = svc.redis_conn().await;
    let idem = svc.keys().idempotency(svc.partition("S"), "request_force_unlock", &request_id);
    let deleted: u64 = redis::cmd("DEL").arg(&idem).query_async(&mut conn).await.unwrap();
    assert_eq!(deleted, 1);
    let other = svc.lock("S", "W", "1", "l2").await.unwrap().lock.unwrap();
    r.selector = Some(pb::LockSelector { target: Some(pb::lock_selector::Target::LockId(other.lock_id.clone())) });
    expect_error(admin.request_force_unlock(r).await, Code::AlreadyExists, "IDEMPOTENCY_KEY_REUSED");
    let listed = admin
        .list_force_unlock_requests(pb::ListForceUnlockRequestsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .requests;
    let kept = listed.iter().find(|q| q.id == pending.id).expect("the request is still listed");
    assert_eq!(kept.state, pb::ForceUnlockState::Executed as i32);
    assert_eq!(svc.record("S", "W").await.live_locks, 1, "the other lock is untouched");
}

/// A forced unlock over two partitions recorded in one of them only (the
/// first attempt stopped), and one of its locks released before the retry:
/// the retry records the rest of the first attempt's request under the
/// same id, not a request of what the selector finds now, and one approval
/// completes it.
#[tokio::test]
async fn a_retried_forced_unlock_keeps_the_first_attempts_locks() {
    let svc = start_with(&["--redis-partitions", "4"]).await;
    let keys = stocklock::store::redis::Keys::new("sl", 4);
    let partition = |sku: &str| keys.partition_of(&stocklock::domain::Sku::parse(sku, "sku").unwrap());
    let first = "S-0".to_owned();
    let second = (1..100).map(|i| format!("S-{i}")).find(|s| partition(s) != partition(&first)).unwrap();
    let mut lock_ids = Vec::new();
    for sku in [&first, &second] {
        svc.stock(sku, "W", "10").await;
        let mut lock = lock_request(sku, "W", "1", &format!("lock-{sku}"));
        lock.order_id = "order-6".into();
        lock_ids.push(svc.client.clone().lock(lock).await.unwrap().into_inner().lock.unwrap().lock_id);
    }
    let selector = Some(pb::LockSelector {
        target: Some(pb::lock_selector::Target::Filter(pb::ListLocksRequest {
            order_id: "order-6".into(),
            ..Default::default()
        })),
    });
    let mut admin = svc.admin().await;
    let mut r = request(selector, "fu-y");
    r.operator = "alice".into();
    let pending = admin.request_force_unlock(r.clone()).await.unwrap().into_inner().request.unwrap();
    // As if the first attempt had stopped before the second partition.
    let request_id = stocklock::domain::RequestId::parse("fu-y", "request_id").unwrap();
    let mut conn = svc.redis_conn().await;
    for key in [
        keys.force_unlock(partition(&second), &pending.id),
        keys.idempotency(partition(&second), "request_force_unlock", &request_id),
    ] {
        let _: u64 = redis::cmd("DEL").arg(&key).query_async(&mut conn).await.unwrap();
    }
    // The order service releases the first lock meanwhile.
    svc.release(&lock_ids[0], "rel").await.unwrap();
    let retried = admin.request_force_unlock(r).await.unwrap().into_inner().request.unwrap();
    assert_eq!(retried.id, pending.id, "the retry is the same request");
    let mut a = approve(&pending.id, "ap-1");
    a.operator = "bob".into();
    let done = admin.approve_force_unlock(a).await.unwrap().into_inner().request.unwrap();
    assert_eq!(done.state, pb::ForceUnlockState::Executed as i32);
    assert_eq!(svc.record(&second, "W").await.live_locks, 0, "the second lock was released");
    assert_eq!(svc.record(&first, "W").await.available, "10");
}
