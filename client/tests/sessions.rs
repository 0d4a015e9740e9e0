//! Sessions through the client against the real service on a real
//! redis-server: kept alive across a service restart, losses reported as
//! they happen, guards that release what they were not told to keep.

mod common;

use std::time::{Duration, Instant};

use common::*;
use stocklock::pb::admin_service_client::AdminServiceClient;
use stocklock_client::{RetryPolicy, pb};

fn lock_request(quantity: &str, order: &str) -> pb::LockRequest {
    pb::LockRequest {
        candidates: None,
        sku: "SKU-1".into(),
        warehouse_id: "WH-A".into(),
        quantity: quantity.into(),
        order_id: order.into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_keeps_its_locks_across_a_service_restart() {
    let mut service = start(RetryPolicy::default()).await;
    stock(&service, "10").await;
    // Longer than the outage below: stopping takes about a second (the
    // background loops drain), then half a second away.
    let ttl = Duration::from_secs(3);
    let session = service.client.session("checkout", ttl).await.unwrap();
    let guard = session.lock(lock_request("3", "order-1")).await.unwrap();

    // The service goes away for a while, and comes back on the same
    // address; the session's keep-alive finds it again.
    service.stop().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    service.restart().await;
    // Past the ttl from the last keep-alive before the restart.
    tokio::time::sleep(ttl + Duration::from_secs(1)).await;
    assert_eq!(*session.loss().borrow(), None, "the session was lost");
    assert_eq!(record(&service).await.locked, "3");
    let committed = guard.commit().await.unwrap();
    assert_eq!(committed.committed_quantity, "3");
    assert_eq!(record(&service).await.physical, "7");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_unlock_reaches_the_lock_guard() {
    let service = start(RetryPolicy::default()).await;
    stock(&service, "10").await;
    let session = service.client.session("checkout", Duration::from_secs(10)).await.unwrap();
    let guard = session.lock(lock_request("2", "order-1")).await.unwrap();
    let kept = session.lock(lock_request("1", "order-2")).await.unwrap();

    let mut admin = AdminServiceClient::connect(format!("http://{}", service.addr)).await.unwrap();
    let request = pb::RequestForceUnlockRequest {
        selector: Some(pb::LockSelector {
            target: Some(pb::lock_selector::Target::LockId(guard.lock().lock_id.clone())),
        }),
        reason: "stuck order".into(),
        request_id: "fu-1".into(),
        operator: "alice".into(),
    };
    let pending = admin.request_force_unlock(request).await.unwrap().into_inner().request.unwrap();
    let approve = pb::ApproveForceUnlockRequest {
        id: pending.id,
        request_id: "ap-1".into(),
        operator: "bob".into(),
        ..Default::default()
    };
    let approved_at = Instant::now();
    admin.approve_force_unlock(approve).await.unwrap();
    let lost = tokio::time::timeout(Duration::from_secs(5), guard.lost()).await.expect("the loss was reported");
    eprintln!("forced unlock reported {:?} after its approval was answered", approved_at.elapsed());
    assert_eq!(lost.reason, "FORCE_RELEASED");
    assert!(lost.detail.contains("bob") && lost.detail.contains("stuck order"), "{lost:?}");
    // The other lock of the session, and the session, are untouched.
    assert_eq!(*session.loss().borrow(), None);
    assert!(tokio::time::timeout(Duration::from_millis(200), kept.lost()).await.is_err());
    assert_eq!(record(&service).await.locked, "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_that_can_no_longer_be_kept_alive_is_reported_lost() {
    let mut service = start(RetryPolicy::default()).await;
    stock(&service, "10").await;
    let session = service.client.session("checkout", Duration::from_millis(800)).await.unwrap();
    let guard = session.lock(lock_request("4", "order-1")).await.unwrap();
    service.stop().await;
    let lost = tokio::time::timeout(Duration::from_secs(5), session.lost()).await.expect("the loss was reported");
    assert_eq!(lost.reason, "KEEP_ALIVE_FAILED", "{lost:?}");
    assert_eq!(guard.lost().await, lost, "every lock of the session is lost with it");

    // The service, back, confirms it: the session ended and its stock is back.
    service.restart().await;
    assert!(eventually(Duration::from_secs(5), || async { record(&service).await.locked == "0" }).await);
    // Long after: even a late commit is refused.
    let committed = guard.commit().await.unwrap_err();
    assert_eq!(committed.code(), tonic::Code::FailedPrecondition, "{committed:?}");
    assert_eq!(record(&service).await.physical, "10");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_guard_releases_its_lock_and_a_closed_session_all_of_them() {
    let service = start(RetryPolicy::default()).await;
    stock(&service, "10").await;
    let session = service.client.session("checkout", Duration::from_secs(10)).await.unwrap();
    drop(session.lock(lock_request("2", "order-1")).await.unwrap());
    assert!(eventually(Duration::from_secs(5), || async { record(&service).await.locked == "0" }).await);

    let _kept = session.batch_lock(pb::BatchLockRequest {
        policy: 0,
        lines: vec![pb::BatchLockLine {
            candidates: None,
            sku: "SKU-1".into(),
            warehouse_id: "WH-A".into(),
            quantity: "5".into(),
        }],
        order_id: "order-2".into(),
        ..Default::default()
    });
    let kept = _kept.await.unwrap();
    assert_eq!(record(&service).await.locked, "5");
    let closed = session.close().await.unwrap();
    assert_eq!((closed.released, closed.closed_now), (1, true));
    assert_eq!(kept[0].lost().await.reason, "SESSION_CLOSED");
    assert_eq!(record(&service).await.locked, "0");
}
