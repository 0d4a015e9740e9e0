//! Faults of Redis: down, paused, restarted, script cache flushed. Each gives
//! a fast, honest error and never loses or doubles stock.

mod common;

use std::future::Future;
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
    // The lock from before the data loss is not live now and frees nothing:
    // unknown, or, when the new locks' tokens have passed its token (a lock
    // takes the next token of its shard), read as expired.
    match svc.release(&lock.lock_id, "rel").await {
        Ok(released) => assert_eq!(released.results[0].outcome(), pb::ReleaseOutcome::AlreadyExpired),
        Err(status) => assert_eq!(status.code(), Code::NotFound, "{status:?}"),
    }
    assert_eq!(svc.available("SKU-1", "WH-A").await, "9");
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

/// A record's invariants read behind the API: `locked` is the sum of the
/// live locks, and available + locked = physical (no reserved or in transit here).
async fn assert_books_balance(svc: &TestService, sku: &str, warehouse: &str) -> pb::StockRecord {
    let record = svc.record(sku, warehouse).await;
    let locks = svc.packed_locks(sku, warehouse).await;
    let sum: i64 = locks.iter().map(|v| v.split('|').next().unwrap().parse::<i64>().unwrap()).sum();
    let [physical, locked, available]: [i64; 3] =
        [&record.physical, &record.locked, &record.available].map(|v| v.parse().unwrap());
    assert_eq!(sum, locked, "locked is the sum of the live locks: {record:?}");
    assert_eq!(available + locked, physical, "{record:?}");
    assert!(available >= 0, "{record:?}");
    record
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_mid_load_and_restarted_from_its_aof_loses_nothing_acknowledged() {
    let (dir, dir_arg) = data_dir("aof");
    let aof = ["--appendonly", "yes", "--appendfsync", "always", "--dir", dir_arg.as_str()];
    let redis = EmbeddedRedis::start_with(Path::new("redis-server"), &aof).await.unwrap();
    let port = redis.port();
    let svc = serve(&redis.url(), &["--store-timeout", "200ms"]).await;
    svc.stock("SKU-K", "WH-A", "100000").await;

    // Four callers lock and commit one unit at a time; each counts the
    // commits acknowledged to it and the calls whose outcome it cannot know.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let callers: Vec<_> = (0..4)
        .map(|c| {
            let mut client = svc.client.clone();
            let stop = stop_rx.clone();
            tokio::spawn(async move {
                let (mut acked, mut unknown, mut slowest) = (0i64, 0i64, Duration::ZERO);
                let mut i = 0;
                while !*stop.borrow() {
                    i += 1;
                    let started = Instant::now();
                    let lock = client.lock(lock_request("SKU-K", "WH-A", "1", &format!("k{c}-{i}"))).await;
                    let outcome = match lock {
                        Ok(lock) => {
                            let lock_id = lock.into_inner().lock.unwrap().lock_id;
                            let commit =
                                pb::CommitRequest { lock_id, request_id: format!("c{c}-{i}"), ..Default::default() };
                            client.commit(commit).await.map(drop)
                        }
                        Err(status) => Err(status),
                    };
                    slowest = slowest.max(started.elapsed());
                    match outcome {
                        Ok(()) => acked += 1,
                        Err(status) => {
                            assert!(matches!(status.code(), Code::Unavailable | Code::DeadlineExceeded), "{status:?}");
                            unknown += 1;
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                }
                (acked, unknown, slowest)
            })
        })
        .collect();

    tokio::time::sleep(Duration::from_millis(400)).await;
    signal(redis.pid().unwrap(), "-KILL");
    wait_for_health(&svc, ServingStatus::NotServing).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The same data directory, so the AOF is replayed; the script cache is empty.
    let restarted = EmbeddedRedis::start_on(Path::new("redis-server"), port, &aof).await.unwrap();
    wait_for_health(&svc, ServingStatus::Serving).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    stop_tx.send(true).unwrap();

    let (mut acked, mut unknown, mut slowest) = (0, 0, Duration::ZERO);
    for caller in callers {
        let (a, u, s) = caller.await.unwrap();
        (acked, unknown, slowest) = (acked + a, unknown + u, slowest.max(s));
    }
    assert!(acked > 0 && unknown > 0, "traffic ran across the kill: {acked} acked, {unknown} unknown");
    // Two calls per order, each bounded by the store timeout (plus a reconnect).
    assert!(slowest < Duration::from_secs(2), "a call took {slowest:?}");
    let record = assert_books_balance(&svc, "SKU-K", "WH-A").await;
    let committed = 100_000 - record.physical.parse::<i64>().unwrap();
    // Every acknowledged commit survived; an unanswered one may or may not have applied.
    assert!(
        committed >= acked && committed <= acked + unknown,
        "{committed} committed, {acked} acked, {unknown} unknown"
    );
    drop(restarted);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Takes `n` locks of one unit on SKU-E in WH-A through `svc`, retrying
/// while the service finds Redis again; their fencing tokens.
async fn tokens(svc: &TestService, tag: &str, n: usize) -> Vec<u64> {
    let mut tokens = Vec::with_capacity(n);
    for i in 0..n {
        let request_id = format!("{tag}-{i}");
        let lock = eventually_ok(|| svc.lock("SKU-E", "WH-A", "1", &request_id)).await;
        tokens.push(lock.lock.unwrap().fencing_token);
    }
    tokens
}

/// Issue 15: a Redis swapped for another behind the same address (a proxy,
/// a virtual IP) whose script cache still holds this service's scripts:
/// the other one had served the service before, with an older epoch. The
/// scripts are named for the dataset's identity (its replication id), so
/// the swapped-in Redis answers NOSCRIPT and the epochs rise there before
/// the next lock; with scripts named for their text only it ran them, and
/// its tokens went back below the first Redis's.
#[tokio::test]
async fn a_redis_swapped_behind_the_same_address_issues_no_smaller_token() {
    let first = EmbeddedRedis::start(Path::new("redis-server")).await.unwrap();
    let other = EmbeddedRedis::start(Path::new("redis-server")).await.unwrap();
    // The other Redis served a service first: its epoch is the older one.
    let earlier = serve(&other.url(), &[]).await;
    earlier.stock("SKU-E", "WH-A", "1000").await;
    tokens(&earlier, "o", 1).await;
    earlier.stop().await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;

    let proxy = SwitchingProxy::start(first.port()).await;
    let svc = serve(&proxy.url(), &["--store-timeout", "300ms"]).await;
    svc.stock("SKU-E", "WH-A", "1000").await;
    let before = tokens(&svc, "a", 3).await;
    proxy.switch(other.port());
    let after = tokens(&svc, "b", 3).await;
    let highest = *before.iter().max().unwrap();
    assert!(after.iter().all(|t| *t > highest), "tokens went back after the swap: {before:?} then {after:?}");
}

/// `call` until it succeeds, for up to 10 s (Redis restarting).
async fn eventually_ok<T, F: Future<Output = Result<T, tonic::Status>>>(call: impl Fn() -> F) -> T {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match call().await {
            Ok(value) => return value,
            Err(status) if Instant::now() < deadline => {
                assert!(matches!(status.code(), Code::Unavailable | Code::DeadlineExceeded), "{status:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(status) => panic!("Redis did not come back: {status:?}"),
        }
    }
}

/// Issue 15: Redis restarted in place from an older snapshot (its last
/// writes, with the record's fence, lost), then restarted empty. Two
/// service replicas stay up throughout; whichever locks first after the
/// restart, every token issued afterwards is above every token issued
/// before.
#[tokio::test]
async fn fencing_tokens_never_go_back_when_redis_loses_writes_in_place() {
    let (dir, dir_arg) = data_dir("fence");
    let rdb = ["--save", "", "--appendonly", "no", "--dir", dir_arg.as_str()];
    let redis = EmbeddedRedis::start_with(Path::new("redis-server"), &rdb).await.unwrap();
    let port = redis.port();
    let first = serve(&redis.url(), &["--store-timeout", "200ms"]).await;
    let second = serve(&redis.url(), &["--store-timeout", "200ms"]).await;
    first.stock("SKU-E", "WH-A", "1000").await;

    // A snapshot after one lock, then twenty more locks the snapshot lacks:
    // more than a lock shard's stride (16) of tokens past its fence.
    let mut before = tokens(&first, "a", 1).await;
    node_command(port, &redis::cmd("SAVE")).await.unwrap();
    before.extend(tokens(&second, "b", 20).await);
    redis.stop().await.unwrap();
    let restarted = EmbeddedRedis::start_on(Path::new("redis-server"), port, &rdb).await.unwrap();
    let availability = pb::GetAvailabilityRequest { sku: "SKU-E".into(), warehouse_id: "WH-A".into() };
    let record = eventually_ok(|| {
        let mut client = first.client.clone();
        let request = availability.clone();
        async move { client.get_availability(request).await }
    })
    .await;
    assert_eq!(record.into_inner().records[0].locked, "1", "the snapshot holds the first lock only");
    let highest = *before.iter().max().unwrap();
    // The replica that did not see NOSCRIPT first locks first.
    let after = [tokens(&second, "c", 3).await, tokens(&first, "d", 3).await].concat();
    assert!(after.iter().all(|t| *t > highest), "tokens went back after the restart: {before:?} then {after:?}");

    // The same Redis restarted empty: the stock is written again.
    restarted.stop().await.unwrap();
    let empty = EmbeddedRedis::start_on(Path::new("redis-server"), port, &[]).await.unwrap();
    let stock = pb::SetStockRequest {
        sku: "SKU-E".into(),
        warehouse_id: "WH-A".into(),
        physical: "1000".into(),
        source_version: 1,
        ..Default::default()
    };
    eventually_ok(|| {
        let mut client = first.client.clone();
        let request = stock.clone();
        async move { client.set_stock(request).await }
    })
    .await;
    let highest = *after.iter().max().unwrap();
    let again = [tokens(&first, "e", 3).await, tokens(&second, "f", 3).await].concat();
    assert!(again.iter().all(|t| *t > highest), "tokens went back after an empty restart: {after:?} then {again:?}");
    drop(empty);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_client_paused_past_its_ttl_cannot_renew_or_commit_and_the_next_holder_is_unaffected() {
    let svc = start_with(&["--min-ttl", "100ms", "--sweep-interval", "50ms"]).await;
    svc.stock("SKU-P", "WH-A", "1").await;
    let mut request = lock_request("SKU-P", "WH-A", "1", "paused");
    request.ttl = millis(300);
    let paused = svc.client.clone().lock(request).await.unwrap().into_inner().lock.unwrap();
    // The holder stalls (a GC pause, a stuck payment call) past its TTL...
    tokio::time::sleep(Duration::from_millis(500)).await;
    // ...and the unit goes to someone else meanwhile.
    let next = svc.lock("SKU-P", "WH-A", "1", "next").await.unwrap().lock.unwrap();
    assert!(next.fencing_token > paused.fencing_token);

    let renew = pb::RenewRequest {
        lock_ids: vec![paused.lock_id.clone()],
        holder: "order-service".into(),
        request_id: "late-renew".into(),
        ..Default::default()
    };
    let renew = svc.client.clone().renew(renew).await;
    expect_error(renew, Code::FailedPrecondition, "LOCK_EXPIRED");
    let commit =
        pb::CommitRequest { lock_id: paused.lock_id.clone(), request_id: "late-commit".into(), ..Default::default() };
    expect_error(svc.client.clone().commit(commit).await, Code::FailedPrecondition, "LOCK_EXPIRED");

    let commit = pb::CommitRequest { lock_id: next.lock_id, request_id: "next-commit".into(), ..Default::default() };
    let committed = svc.client.clone().commit(commit).await.unwrap().into_inner();
    assert_eq!(committed.committed_quantity, "1");
    let record = assert_books_balance(&svc, "SKU-P", "WH-A").await;
    assert_eq!((record.physical.as_str(), record.locked.as_str()), ("0", "0"));
}

#[tokio::test]
async fn a_busy_redis_gives_unavailable_within_the_deadline() {
    let redis = EmbeddedRedis::start_with(Path::new("redis-server"), &["--busy-reply-threshold", "50"]).await.unwrap();
    let svc = serve(&redis.url(), &["--store-timeout", "300ms"]).await;
    svc.stock("SKU-B", "WH-A", "10").await;
    // Another client's runaway read-only script holds Redis for up to 5 s.
    let busy_url = redis.url();
    let busy = tokio::spawn(async move {
        let mut conn = redis::Client::open(busy_url).unwrap().get_multiplexed_async_connection().await.unwrap();
        let script = "local t = redis.call('TIME')[1] + 5 while tonumber(redis.call('TIME')[1]) < t do end return 1";
        let _: redis::RedisResult<i64> = redis::cmd("EVAL").arg(script).arg(0).query_async(&mut conn).await;
    });
    // Wait until the script runs: Redis then answers BUSY to everyone.
    let busy_now = eventually(Duration::from_secs(3), || async {
        let mut probe = redis::Client::open(redis.url()).unwrap().get_multiplexed_async_connection().await.unwrap();
        let ping: redis::RedisResult<String> = redis::cmd("PING").query_async(&mut probe).await;
        ping.is_err_and(|e| e.code() == Some("BUSY"))
    })
    .await;
    assert!(busy_now, "the runaway script never started");
    let started = Instant::now();
    let status = svc.lock("SKU-B", "WH-A", "1", "b1").await.expect_err("Redis is busy");
    assert!(matches!(status.code(), Code::Unavailable | Code::DeadlineExceeded), "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(1), "answered after {:?}", started.elapsed());

    let mut admin = redis::Client::open(redis.url()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("SCRIPT").arg("KILL").query_async(&mut admin).await.unwrap();
    busy.await.unwrap();
    // The retry of the same request locks exactly once.
    let lock = svc.lock("SKU-B", "WH-A", "1", "b1").await.unwrap();
    assert_eq!(lock.available, "9");
    assert_books_balance(&svc, "SKU-B", "WH-A").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn script_flushes_during_traffic_fail_no_call() {
    // 300 calls at once queue rather than being shed, and each has time for
    // as many reloads as the flushes cause on a busy machine: this is about
    // the flushes, not about latency.
    let svc = start_with(&["--max-queue-wait", "10s", "--store-timeout", "5s"]).await;
    svc.stock("SKU-S", "WH-A", "1000").await;
    let mut conn = svc.redis_conn().await;
    let flusher = tokio::spawn(async move {
        for _ in 0..50 {
            let _: () = redis::cmd("SCRIPT").arg("FLUSH").query_async(&mut conn).await.unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    let calls = (0..300).map(|i| {
        let mut client = svc.client.clone();
        async move {
            let lock = client.lock(lock_request("SKU-S", "WH-A", "1", &format!("s{i}"))).await?.into_inner();
            let request = pb::ReleaseRequest {
                lock_id: lock.lock.unwrap().lock_id,
                request_id: format!("x{i}"),
                ..Default::default()
            };
            client.release(request).await.map(drop)
        }
    });
    for result in futures::future::join_all(calls).await {
        result.expect("no call fails because the script cache was flushed");
    }
    flusher.await.unwrap();
    let record = assert_books_balance(&svc, "SKU-S", "WH-A").await;
    assert_eq!(record.available, "1000");
}
