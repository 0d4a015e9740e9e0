//! Overload protection: past the concurrency limit and the queue, calls are
//! shed at once with RESOURCE_EXHAUSTED / OVERLOADED and a retry hint; a call
//! whose deadline passes while it waits is not started; probes still answer.

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures::future::join_all;
use tonic::Code;
use tonic_types::StatusExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_past_the_limit_and_the_queue_are_shed_at_once_and_not_started() {
    let svc = start_with(&[
        "--max-in-flight",
        "2",
        "--max-queued",
        "2",
        "--max-queue-wait",
        "200ms",
        "--store-timeout",
        "1s",
    ])
    .await;
    svc.stock("SKU-O", "WH-A", "100").await;
    // A stalled Redis holds every admitted call for the store timeout.
    let pid = svc.redis.as_ref().unwrap().pid().unwrap();
    signal(pid, "-STOP");
    let calls = (0..10).map(|i| {
        let mut client = svc.client.clone();
        async move {
            let started = Instant::now();
            let result = client.lock(lock_request("SKU-O", "WH-A", "1", &format!("o{i}"))).await;
            (result, started.elapsed())
        }
    });
    let probe = async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let channel = svc.channel().await;
        let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
        health.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await
    };
    let (results, probe) = tokio::join!(join_all(calls), probe);
    signal(pid, "-CONT");
    assert!(probe.is_ok(), "health answers under overload: {probe:?}");

    let mut shed_at_once = 0;
    let mut shed_after_wait = 0;
    let mut timed_out = 0;
    for (result, took) in &results {
        let status = result.as_ref().expect_err("nothing completes while Redis is stopped");
        match (status.code(), reason(status).as_str()) {
            (Code::ResourceExhausted, "OVERLOADED") => {
                assert!(status.get_details_retry_info().is_some(), "a retry hint: {status:?}");
                if *took < Duration::from_millis(150) {
                    shed_at_once += 1;
                } else {
                    shed_after_wait += 1;
                }
            }
            (Code::DeadlineExceeded, "INV_LOCK_TIMEOUT") => timed_out += 1,
            other => panic!("unexpected {other:?}: {status:?}"),
        }
    }
    assert_eq!((timed_out, shed_after_wait, shed_at_once), (2, 2, 6), "{results:?}");

    // Shed calls were never started: only the two admitted ones can have run.
    let record = svc.record("SKU-O", "WH-A").await;
    assert!(record.live_locks <= 2, "{record:?}");
    let metrics = scrape(&svc).await;
    assert_eq!(metrics["stocklock_shed_calls_total{reason=\"queue_full\"}"], 6.0);
    assert_eq!(metrics["stocklock_shed_calls_total{reason=\"queue_wait\"}"], 2.0);
    // Every shed Lock is a failed lock attempt of its warehouse, in the
    // metrics and in the hourly counts of the health rule: an overload
    // lowers the success rate.
    assert_eq!(metrics["stocklock_lock_outcomes_total{warehouse=\"WH-A\",reason=\"OVERLOADED\"}"], 8.0);
    assert!(hourly_counts_reach(&svc, &[("WH-A|OVERLOADED", 8)]).await, "the hourly counts never showed the sheds");
    // And the service is at once back to normal.
    svc.lock("SKU-O", "WH-A", "1", "after").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_whose_deadline_passes_in_the_queue_is_not_started() {
    let svc = start_with(&["--max-in-flight", "1", "--max-queue-wait", "2s", "--store-timeout", "600ms"]).await;
    svc.stock("SKU-Q", "WH-A", "100").await;
    let pid = svc.redis.as_ref().unwrap().pid().unwrap();
    signal(pid, "-STOP");
    let mut holder = svc.client.clone();
    let hold = tokio::spawn(async move { holder.lock(lock_request("SKU-Q", "WH-A", "1", "holder")).await });
    tokio::time::sleep(Duration::from_millis(50)).await;

    // The deadline as a caller's gRPC library sends it; this client waits for
    // the server's answer instead of giving up on its own at the same instant.
    let mut request = tonic::Request::new(lock_request("SKU-Q", "WH-A", "5", "late"));
    request.metadata_mut().insert("grpc-timeout", "100m".parse().unwrap());
    let started = Instant::now();
    let status = svc.client.clone().lock(request).await.expect_err("its deadline passes in the queue");
    assert!(started.elapsed() < Duration::from_millis(400), "answered after {:?}", started.elapsed());
    assert_eq!((status.code(), reason(&status).as_str()), (Code::DeadlineExceeded, "DEADLINE_PASSED"), "{status:?}");
    signal(pid, "-CONT");
    let _ = hold.await.unwrap();

    // It never ran: five units were never locked under request "late".
    let record = svc.record("SKU-Q", "WH-A").await;
    let locked: i64 = record.locked.parse().unwrap();
    assert!(locked <= 1, "{record:?}");
    let metrics = scrape(&svc).await;
    assert_eq!(metrics.get("stocklock_shed_calls_total{reason=\"deadline\"}").copied(), Some(1.0), "{status:?}");
    let outcome = "stocklock_lock_outcomes_total{warehouse=\"WH-A\",reason=\"DEADLINE_PASSED\"}";
    assert_eq!(metrics.get(outcome).copied(), Some(1.0));
    assert!(hourly_counts_reach(&svc, &[("WH-A|DEADLINE_PASSED", 1)]).await, "the hourly counts never showed it");
}
