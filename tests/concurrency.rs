//! Many callers on one record over several connections: never over-locked,
//! and `locked` always equals the sum of the live locks.

mod common;

use common::*;
use futures::future::join_all;
use stocklock::pb;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_callers_on_a_hundred_units() {
    // Every call queues for a slot instead of being shed: this is about
    // oversell under contention, not overload (see tests/overload.rs).
    let svc = start_with(&["--max-queue-wait", "10s"]).await;
    svc.stock("HOT", "WH-A", "100").await;
    // Eight HTTP/2 connections, 500 calls in flight at once.
    let mut clients = Vec::new();
    for _ in 0..8 {
        clients.push(connect(svc.addr).await);
    }
    let calls = (0..500).map(|i| {
        let mut client = clients[i % clients.len()].clone();
        async move { client.lock(lock_request("HOT", "WH-A", "1", &format!("r{i}"))).await }
    });
    let results = join_all(calls).await;
    let mut lock_ids = Vec::new();
    for result in results {
        match result {
            Ok(response) => lock_ids.push(response.into_inner().lock.unwrap().lock_id),
            Err(status) => {
                assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
                assert_eq!(reason(&status), "INSUFFICIENT_STOCK");
            }
        }
    }
    assert_eq!(lock_ids.len(), 100);
    let record = svc.record("HOT", "WH-A").await;
    assert_eq!((record.available.as_str(), record.locked.as_str(), record.live_locks), ("0", "100", 100));
    assert_sum_of_locks_is_locked(&svc, "HOT", "WH-A").await;

    let releases = lock_ids.iter().enumerate().map(|(i, id)| {
        let mut client = clients[i % clients.len()].clone();
        let request = pb::ReleaseRequest { lock_id: id.clone(), request_id: format!("rel{i}"), ..Default::default() };
        async move { client.release(request).await }
    });
    for result in join_all(releases).await {
        assert_eq!(result.unwrap().into_inner().results[0].outcome(), pb::ReleaseOutcome::Released);
    }
    let record = svc.record("HOT", "WH-A").await;
    assert_eq!((record.available.as_str(), record.locked.as_str(), record.live_locks), ("100", "0", 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_concurrent_operations_keep_the_books_balanced() {
    let svc = start_with(&["--max-queue-wait", "10s"]).await;
    svc.stock("MIX", "WH-A", "50").await;
    let calls = (0..200).map(|i| {
        let mut client = svc.client.clone();
        async move {
            let lock =
                client.lock(lock_request("MIX", "WH-A", "1", &format!("r{i}"))).await?.into_inner().lock.unwrap();
            match i % 3 {
                0 => {
                    client
                        .commit(pb::CommitRequest {
                            lock_id: lock.lock_id,
                            request_id: format!("c{i}"),
                            ..Default::default()
                        })
                        .await?;
                    Ok::<_, tonic::Status>(1)
                }
                1 => {
                    client
                        .release(pb::ReleaseRequest {
                            lock_id: lock.lock_id,
                            request_id: format!("rel{i}"),
                            ..Default::default()
                        })
                        .await?;
                    Ok(0)
                }
                _ => Ok(0),
            }
        }
    });
    let committed: i64 = join_all(calls).await.into_iter().filter_map(Result::ok).sum();
    let record = svc.record("MIX", "WH-A").await;
    let physical: i64 = record.physical.parse().unwrap();
    let locked: i64 = record.locked.parse().unwrap();
    let available: i64 = record.available.parse().unwrap();
    assert_eq!(physical, 50 - committed);
    assert_eq!(available + locked, physical, "{record:?}");
    assert_sum_of_locks_is_locked(&svc, "MIX", "WH-A").await;
}

/// Reads the record's lock hash directly and checks the invariant.
async fn assert_sum_of_locks_is_locked(svc: &TestService, sku: &str, warehouse: &str) {
    let mut conn = svc.redis_conn().await;
    let stock_key = svc.stock_key(sku, warehouse);
    let locks = svc.packed_locks(sku, warehouse).await;
    let sum: i64 = locks.iter().map(|v| v.split('|').next().unwrap().parse::<i64>().unwrap()).sum();
    let locked: i64 = redis::cmd("HGET").arg(stock_key).arg("locked").query_async(&mut conn).await.unwrap();
    assert_eq!(sum, locked);
}
