//! Faults of Redis: down, paused, restarted, script cache flushed. Each gives
//! a fast, honest error and never loses or doubles stock.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use stocklock::embedded_redis::EmbeddedRedis;
use stocklock::pb;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

async fn health(svc: &TestService) -> ServingStatus {
    let channel =
        tonic::transport::Channel::from_shared(format!("http://{}", svc.addr)).unwrap().connect().await.unwrap();
    let response =
        HealthClient::new(channel).check(HealthCheckRequest { service: "stocklock.v1.InventoryService".into() }).await;
    response.unwrap().into_inner().status()
}

async fn wait_for_health(svc: &TestService, want: ServingStatus) {
    for _ in 0..100 {
        if health(svc).await == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("health never became {want:?}");
}

fn signal(pid: u32, sig: &str) {
    let status = std::process::Command::new("kill").args([sig, &pid.to_string()]).status().unwrap();
    assert!(status.success());
}

#[tokio::test]
async fn redis_down_gives_unavailable_fast_and_a_restart_is_recovered() {
    let mut svc = start().await;
    svc.stock("SKU-1", "WH-A", "10").await;
    let lock = svc.lock("SKU-1", "WH-A", "2", "r1").await.unwrap().lock.unwrap();
    let redis = svc.redis.take().unwrap();
    let port = redis.port();
    redis.stop().await.unwrap();

    let started = Instant::now();
    let result = svc.lock("SKU-1", "WH-A", "1", "r2").await;
    let status = result.expect_err("Redis is down");
    assert!(matches!(status.code(), Code::Unavailable | Code::DeadlineExceeded), "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(2), "answered after {:?}", started.elapsed());
    wait_for_health(&svc, ServingStatus::NotServing).await;

    // A new, empty Redis on the same port: no scripts, no data.
    let redis = EmbeddedRedis::start_on(Path::new("redis-server"), port, &[]).await.unwrap();
    wait_for_health(&svc, ServingStatus::Serving).await;
    svc.stock("SKU-1", "WH-A", "10").await;
    let again = svc.lock("SKU-1", "WH-A", "1", "r3").await.unwrap();
    assert_eq!(again.available, "9");
    // The lock from before the data loss is unknown now, not silently valid.
    expect_error(svc.release(&lock.lock_id, "rel").await, Code::NotFound, "LOCK_NOT_FOUND");
    drop(redis);
}

#[tokio::test]
async fn a_paused_redis_times_out_and_the_retry_applies_once() {
    let svc = start_with(&["--store-timeout", "200ms"]).await;
    svc.stock("SKU-1", "WH-A", "10").await;
    let pid = svc.redis.as_ref().unwrap().pid().unwrap();
    signal(pid, "-STOP");
    let started = Instant::now();
    let result = svc.lock("SKU-1", "WH-A", "3", "r1").await;
    let elapsed = started.elapsed();
    signal(pid, "-CONT");
    expect_error(result, Code::DeadlineExceeded, "INV_LOCK_TIMEOUT");
    assert!(elapsed < Duration::from_secs(2), "answered after {elapsed:?}");

    // The script queued behind the pause may have run; a retry with the same
    // request_id either replays it or applies it, never both.
    let mut retry = None;
    for _ in 0..50 {
        match svc.lock("SKU-1", "WH-A", "3", "r1").await {
            Ok(response) => {
                retry = Some(response);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    retry.expect("the retry succeeds once Redis is back");
    let record = svc.record("SKU-1", "WH-A").await;
    assert_eq!((record.locked.as_str(), record.live_locks, record.available.as_str()), ("3", 1, "7"));
}

#[tokio::test]
async fn a_flushed_script_cache_is_reloaded_transparently() {
    let svc = start().await;
    svc.stock("SKU-1", "WH-A", "10").await;
    let mut conn = svc.redis_conn().await;
    let _: () = redis::cmd("SCRIPT").arg("FLUSH").query_async(&mut conn).await.unwrap();
    let lock = svc.lock("SKU-1", "WH-A", "1", "r1").await.unwrap().lock.unwrap();
    let _: () = redis::cmd("SCRIPT").arg("FLUSH").query_async(&mut conn).await.unwrap();
    let released = svc.release(&lock.lock_id, "rel").await.unwrap();
    assert_eq!(released.results[0].outcome(), pb::ReleaseOutcome::Released);
    assert_eq!(svc.available("SKU-1", "WH-A").await, "10");
}

#[tokio::test]
async fn redis_out_of_memory_is_resource_exhausted_and_changes_nothing() {
    let redis =
        EmbeddedRedis::start_with(Path::new("redis-server"), &["--maxmemory-policy", "noeviction"]).await.unwrap();
    let svc = serve(&redis.url(), &[]).await;
    svc.stock("SKU-1", "WH-A", "10").await;
    let mut conn = svc.redis_conn().await;
    let used: String = redis::cmd("INFO").arg("memory").query_async(&mut conn).await.unwrap();
    let used: u64 = used.lines().find_map(|l| l.strip_prefix("used_memory:")).unwrap().trim().parse().unwrap();
    let _: () = redis::cmd("CONFIG").arg("SET").arg("maxmemory").arg(used / 2).query_async(&mut conn).await.unwrap();
    expect_error(svc.lock("SKU-1", "WH-A", "1", "r1").await, Code::ResourceExhausted, "STORE_OUT_OF_MEMORY");
    // Reads still answer: the transfer system keeps seeing availability.
    assert_eq!(svc.available("SKU-1", "WH-A").await, "10");
    let _: () = redis::cmd("CONFIG").arg("SET").arg("maxmemory").arg(0).query_async(&mut conn).await.unwrap();
    let record = svc.record("SKU-1", "WH-A").await;
    assert_eq!((record.locked.as_str(), record.live_locks), ("0", 0));
}

#[tokio::test]
async fn graceful_shutdown_stops_the_service() {
    let svc = start().await;
    svc.stock("SKU-1", "WH-A", "10").await;
    svc.stop().await.expect("a clean exit");
}
