//! Redis Cluster: three primaries on loopback, made with `redis-cli
//! --cluster create`. Stock spreads over the shards; a BatchLock across
//! shards stays all or nothing for its caller; a slot migrates in the middle
//! of traffic (MOVED and ASK) without losing or doubling stock. The core
//! suites also run against a cluster: `STOCKLOCK_TEST_REDIS=cluster` (see
//! the Makefile).

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::*;
use stocklock::domain::Sku;
use stocklock::pb;
use stocklock::store::redis::Keys;
use tonic::Code;
use tonic_types::StatusExt;

const PARTITIONS: usize = 16;

/// A cluster of three primaries and a service in cluster mode on it.
async fn start_cluster(extra: &[&str]) -> (Cluster, TestService) {
    let cluster = Cluster::start(3, 0).await;
    let mut args = vec!["--redis-mode", "cluster", "--redis-partitions", "16"];
    args.extend_from_slice(extra);
    let svc = serve(&cluster.urls(), &args).await;
    (cluster, svc)
}

/// A SKU name in `partition`.
fn sku_in(partition: usize, prefix: &str) -> String {
    let keys = Keys::new("sl", PARTITIONS);
    (0..)
        .map(|i| format!("{prefix}-{i}"))
        .find(|name| keys.partition_of(&Sku::parse(name, "sku").unwrap()) == partition)
        .unwrap()
}

/// The slot of a partition: its tag's, which every one of its keys shares.
fn slot_of(partition: usize) -> u16 {
    let key = Keys::new("sl", PARTITIONS).due(partition);
    let tag = &key[key.find('{').unwrap() + 1..key.find('}').unwrap()];
    redis_slot(tag.as_bytes())
}

/// CRC16-XMODEM mod 16384, as Redis Cluster computes it.
fn redis_slot(key: &[u8]) -> u16 {
    let mut crc = 0u16;
    for &b in key {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 { (crc << 1) ^ 0x1021 } else { crc << 1 };
        }
    }
    crc % 16384
}

fn line(sku: &str, quantity: &str) -> pb::BatchLockLine {
    batch_line(sku, "W", quantity)
}

/// Calls `call` until it succeeds, retrying (and counting) the failures an
/// order service retries with the same request_id.
async fn until_done<T, Fut>(retries: &AtomicU64, what: &str, mut call: impl FnMut() -> Fut) -> T
where
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    loop {
        match call().await {
            Ok(answer) => return answer,
            Err(s) if matches!(s.code(), Code::Unavailable | Code::DeadlineExceeded | Code::ResourceExhausted) => {
                retries.fetch_add(1, Ordering::Relaxed);
            }
            Err(s) => panic!("{what}: {s:?}"),
        }
    }
}

/// Order traffic: one caller per SKU locks a unit and commits it, over and
/// over, retrying retryable failures with the same request ids as an order
/// service does, until stopped.
struct Traffic {
    stop: Arc<AtomicBool>,
    committed: Arc<AtomicU64>,
    /// Commits that found their lock gone (it died unreplicated with a primary).
    lost: Arc<AtomicU64>,
    retries: Arc<AtomicU64>,
    workers: Vec<tokio::task::JoinHandle<()>>,
}

impl Traffic {
    fn start(client: &Client, skus: &[String]) -> Self {
        let [committed, lost, retries] = [(); 3].map(|()| Arc::new(AtomicU64::new(0)));
        let stop = Arc::new(AtomicBool::new(false));
        let workers = skus
            .iter()
            .enumerate()
            .map(|(w, sku)| {
                let (client, sku, stop) = (client.clone(), sku.clone(), stop.clone());
                let (committed, lost, retries) = (committed.clone(), lost.clone(), retries.clone());
                tokio::spawn(async move {
                    let (mut n, mut last_token) = (0, 0);
                    while !stop.load(Ordering::Relaxed) {
                        n += 1;
                        let request = lock_request(&sku, "W", "1", &format!("l{w}-{n}"));
                        let locked = until_done(&retries, "lock", || {
                            let (mut client, request) = (client.clone(), request.clone());
                            async move { client.lock(request).await }
                        })
                        .await;
                        let lock = locked.into_inner().lock.unwrap();
                        // One caller per SKU, one lock at a time: its tokens only grow,
                        // across a migration and a failover that lost writes too.
                        assert!(
                            lock.fencing_token > last_token,
                            "{sku}: token {} after {last_token}",
                            lock.fencing_token
                        );
                        last_token = lock.fencing_token;
                        let lock_id = lock.lock_id;
                        let commit =
                            pb::CommitRequest { lock_id, request_id: format!("c{w}-{n}"), ..Default::default() };
                        let done = until_done(&retries, "commit", || {
                            let (mut client, commit) = (client.clone(), commit.clone());
                            async move {
                                match client.commit(commit).await {
                                    // A lock acknowledged by a primary that died before
                                    // replicating it is gone with it: the commit says so.
                                    Err(s) if s.code() == Code::NotFound => Ok(false),
                                    other => other.map(|_| true),
                                }
                            }
                        })
                        .await;
                        if done { &committed } else { &lost }.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        Self { stop, committed, lost, retries, workers }
    }

    fn committed(&self) -> u64 {
        self.committed.load(Ordering::Relaxed)
    }

    /// Stops the callers: (commits, locks lost, retried calls).
    async fn stop(self) -> (u64, u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for worker in self.workers {
            worker.await.unwrap();
        }
        let load = |n: &AtomicU64| n.load(Ordering::Relaxed);
        (load(&self.committed), load(&self.lost), load(&self.retries))
    }
}

async fn node_keys(port: u16) -> i64 {
    redis::from_redis_value(node_command(port, &redis::cmd("DBSIZE")).await.unwrap()).unwrap()
}

#[tokio::test]
async fn stock_spreads_over_every_shard_and_each_call_stays_on_one() {
    let (cluster, svc) = start_cluster(&[]).await;
    let skus: Vec<String> = (0..PARTITIONS).map(|p| sku_in(p, "S")).collect();
    for sku in &skus {
        svc.stock(sku, "W", "10").await;
    }
    for node in &cluster.nodes {
        assert!(node_keys(node.port()).await > 0, "node {} holds no stock", node.port());
    }
    // Lock, renew, commit and release in every partition.
    let mut client = svc.client.clone();
    for (i, sku) in skus.iter().enumerate() {
        let lock = client.lock(lock_request(sku, "W", "3", &format!("l{i}"))).await.unwrap().into_inner();
        let lock_id = lock.lock.unwrap().lock_id;
        let renew = pb::RenewRequest {
            lock_ids: vec![lock_id.clone()],
            holder: "order-service".into(),
            request_id: format!("r{i}"),
            ..Default::default()
        };
        assert!(client.renew(renew).await.unwrap().into_inner().results[0].renewed);
        let commit =
            pb::CommitRequest { lock_id, quantity: "2".into(), request_id: format!("c{i}"), ..Default::default() };
        client.commit(commit).await.unwrap();
        let record = svc.record(sku, "W").await;
        assert_eq!((record.physical.as_str(), record.locked.as_str(), record.available.as_str()), ("8", "0", "8"));
    }
    // One Renew of locks on every shard: one script per partition, one answer.
    let mut ids = Vec::new();
    for (i, sku) in skus.iter().enumerate() {
        let lock = client.lock(lock_request(sku, "W", "1", &format!("m{i}"))).await.unwrap().into_inner();
        ids.push(lock.lock.unwrap().lock_id);
    }
    let renew = pb::RenewRequest {
        lock_ids: ids.clone(),
        holder: "order-service".into(),
        request_id: "all".into(),
        ..Default::default()
    };
    let results = client.renew(renew.clone()).await.unwrap().into_inner().results;
    let renewed: Vec<&str> = results.iter().filter(|r| r.renewed).map(|r| r.lock_id.as_str()).collect();
    assert_eq!(renewed, ids.iter().map(String::as_str).collect::<Vec<_>>(), "answers in request order");
    assert!(client.renew(renew).await.unwrap().into_inner().results.iter().all(|r| r.renewed), "a retry replays");
}

#[tokio::test]
async fn a_batch_across_shards_locks_renews_and_releases_as_one() {
    let (cluster, svc) = start_cluster(&[]).await;
    // Partitions 1, 8 and 14 sit in the first, second and third third of the slots.
    let skus = [sku_in(1, "A"), sku_in(8, "B"), sku_in(14, "C")];
    let owners: Vec<u16> = futures::future::join_all([1, 8, 14].map(|p| cluster.owner_of(slot_of(p)))).await;
    assert_eq!(owners.iter().collect::<std::collections::HashSet<_>>().len(), 3, "three shards: {owners:?}");
    for sku in &skus {
        svc.stock(sku, "W", "5").await;
    }
    let mut client = svc.client.clone();
    let request = batch(vec![line(&skus[0], "1"), line(&skus[1], "2"), line(&skus[2], "3")], "b1");
    let response = client.batch_lock(request.clone()).await.unwrap().into_inner();
    let got: Vec<(&str, &str)> = response.locks.iter().map(|l| (l.sku.as_str(), l.quantity.as_str())).collect();
    assert_eq!(got, [(skus[0].as_str(), "1"), (skus[1].as_str(), "2"), (skus[2].as_str(), "3")]);
    for (sku, available) in skus.iter().zip(["4", "3", "2"]) {
        assert_eq!(svc.available(sku, "W").await, available);
    }
    // A retry replays the same locks.
    let again = client.batch_lock(request).await.unwrap().into_inner();
    assert_eq!(
        again.locks.iter().map(|l| &l.lock_id).collect::<Vec<_>>(),
        response.locks.iter().map(|l| &l.lock_id).collect::<Vec<_>>()
    );
    assert_eq!(again.batch_id, response.batch_id);
    // Renew and Release by batch_id reach every shard.
    let renew = pb::RenewRequest {
        batch_id: response.batch_id.clone(),
        holder: "order-service".into(),
        request_id: "rb".into(),
        ..Default::default()
    };
    let renewed = client.renew(renew).await.unwrap().into_inner().results;
    assert_eq!(renewed.iter().filter(|r| r.renewed).count(), 3);
    let release = pb::ReleaseRequest { batch_id: response.batch_id, request_id: "xb".into(), ..Default::default() };
    let released = client.release(release).await.unwrap().into_inner();
    assert_eq!(released.results.len(), 3);
    for sku in &skus {
        let record = svc.record(sku, "W").await;
        assert_eq!((record.available.as_str(), record.live_locks), ("5", 0), "{sku}");
    }
}

#[tokio::test]
async fn the_scripts_are_named_for_the_clusters_identity() {
    // Every primary holds lock.lua under the name that includes every
    // primary's replication id, so a node whose identity changes without
    // losing its script cache (demoted, then promoted again) answers
    // NOSCRIPT to the names in use.
    let (cluster, svc) = start_cluster(&[]).await;
    svc.stock(&sku_in(1, "A"), "W", "5").await;
    let mut infos = Vec::new();
    for node in &cluster.nodes {
        let info = node_command(node.port(), redis::cmd("INFO").arg("replication")).await.unwrap();
        infos.push(redis::from_redis_value::<String>(info).unwrap());
    }
    let identity = stocklock::store::redis::dataset_identity(infos.iter().map(String::as_str));
    assert_eq!(identity.split(',').count(), 3, "three primaries: {identity}");
    let sha = stocklock::store::redis::LockCall::script_sha(&identity);
    assert_ne!(sha, stocklock::store::redis::LockCall::script_sha(""), "the name depends on the identity");
    for node in &cluster.nodes {
        let loaded = node_command(node.port(), redis::cmd("SCRIPT").arg("EXISTS").arg(&sha)).await.unwrap();
        assert_eq!(redis::from_redis_value::<Vec<bool>>(loaded).unwrap(), [true], "node {}", node.port());
    }
}

#[tokio::test]
async fn a_batch_in_one_partition_is_found_by_its_id() {
    let (_cluster, svc) = start_cluster(&[]).await;
    let sku = sku_in(5, "ONE");
    svc.stock(&sku, "W1", "5").await;
    svc.stock(&sku, "W2", "5").await;
    let mut client = svc.client.clone();
    let lines = vec![batch_line(&sku, "W1", "1"), batch_line(&sku, "W2", "2")];
    let response = client.batch_lock(batch(lines, "b1")).await.unwrap().into_inner();
    let release = pb::ReleaseRequest { batch_id: response.batch_id, request_id: "x1".into(), ..Default::default() };
    assert_eq!(client.release(release).await.unwrap().into_inner().results.len(), 2);
    assert_eq!(svc.record(&sku, "W2").await.available, "5");
}

#[tokio::test]
async fn a_failing_batch_across_shards_gives_back_what_it_took() {
    let (_cluster, svc) = start_cluster(&[]).await;
    let skus = [sku_in(1, "A"), sku_in(8, "B"), sku_in(14, "C")];
    svc.stock(&skus[0], "W", "5").await;
    svc.stock(&skus[1], "W", "5").await;
    svc.stock(&skus[2], "W", "1").await;
    let mut client = svc.client.clone();
    // The third line is short: the first two partitions were locked, then released.
    let request = batch(vec![line(&skus[0], "1"), line(&skus[1], "2"), line(&skus[2], "3")], "b1");
    let status = expect_error(client.batch_lock(request.clone()).await, Code::FailedPrecondition, "INSUFFICIENT_STOCK");
    let violations = status.get_details_precondition_failure().unwrap().violations;
    assert_eq!(violations.iter().map(|v| v.subject.as_str()).collect::<Vec<_>>(), ["lines[2]"]);
    for sku in &skus {
        let record = svc.record(sku, "W").await;
        assert_eq!((record.locked.as_str(), record.live_locks), ("0", 0), "{sku}");
    }
    // What another caller could see: the taken partitions' locks, then their release.
    let partition = Keys::new("sl", PARTITIONS).partition_of(&Sku::parse(&skus[0], "sku").unwrap());
    let mut watch = client
        .watch_availability(pb::WatchAvailabilityRequest {
            keys: vec![pb::StockKey { sku: skus[0].clone(), warehouse_id: "W".into() }],
            after_event_id: format!("{partition}/0-0"),
        })
        .await
        .unwrap()
        .into_inner();
    let mut actions = Vec::new();
    while actions.len() < 3 {
        let event = tokio::time::timeout(Duration::from_secs(5), watch.message()).await.unwrap().unwrap().unwrap();
        let event = event.event.unwrap();
        assert!(event.event_id.starts_with(&format!("{partition}/")), "{}", event.event_id);
        actions.push(event.action());
    }
    use pb::AvailabilityAction as A;
    assert_eq!(actions, [A::StockSet, A::Lock, A::Release]);
    // A retry with the same request_id after a restock locks afresh: the
    // undone partitions' idempotency records were deleted, not replayed.
    svc.stock(&skus[2], "W", "5").await;
    let response = client.batch_lock(request).await.unwrap().into_inner();
    assert_eq!(response.locks.len(), 3);
    for (sku, available) in skus.iter().zip(["4", "3", "2"]) {
        assert_eq!(svc.available(sku, "W").await, available, "{sku}");
    }
}

#[tokio::test]
async fn a_retry_of_a_batch_still_in_flight_is_told_to_wait_not_served_half() {
    // While a first attempt of a cross-partition BatchLock runs (it holds
    // the request's in-flight key), a client retry with the same request_id
    // must not replay the partitions locked so far and carry on: the first
    // attempt may yet fail further on and give them back, and the retry
    // would hand the caller released locks. It is told the request is in
    // progress, and changes nothing; once the attempt is over it runs.
    let (cluster, svc) = start_cluster(&[]).await;
    let skus = [sku_in(1, "A"), sku_in(14, "C")];
    for sku in &skus {
        svc.stock(sku, "W", "5").await;
    }
    let request = batch(vec![line(&skus[0], "1"), line(&skus[1], "1")], "dup-1");
    let request_id = stocklock::domain::RequestId::parse("dup-1", "request_id").unwrap();
    let in_flight = Keys::new("sl", PARTITIONS).request_in_flight(&request_id);
    let urls = cluster.urls();
    let client = redis::cluster::ClusterClient::new(urls.split(',').collect::<Vec<_>>()).unwrap();
    let mut conn = client.get_async_connection().await.unwrap();
    let _: () = redis::cmd("SET")
        .arg(&in_flight)
        .arg("first-attempt")
        .arg("PX")
        .arg(60_000)
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut client = svc.client.clone();
    expect_error(client.batch_lock(request.clone()).await, Code::Aborted, "REQUEST_IN_PROGRESS");
    for sku in &skus {
        assert_eq!(svc.record(sku, "W").await.live_locks, 0, "{sku}");
    }
    // The request_id's claim stays with the attempt in flight, so a reuse
    // with other content is still caught while it runs.
    let claim = Keys::new("sl", PARTITIONS).request_claim("batch_lock", &request_id);
    let claimed: bool = redis::cmd("EXISTS").arg(&claim).query_async(&mut conn).await.unwrap();
    assert!(claimed, "the retry gave the running attempt's claim back");
    let _: () = redis::cmd("DEL").arg(&in_flight).query_async(&mut conn).await.unwrap();
    let first = client.batch_lock(request.clone()).await.unwrap().into_inner();
    let again = client.batch_lock(request).await.unwrap().into_inner();
    assert!(again.replayed);
    assert_eq!(
        again.locks.iter().map(|l| &l.lock_id).collect::<Vec<_>>(),
        first.locks.iter().map(|l| &l.lock_id).collect::<Vec<_>>()
    );
    let exists: bool = redis::cmd("EXISTS").arg(&in_flight).query_async(&mut conn).await.unwrap();
    assert!(!exists, "an attempt that ended gives its in-flight key back");
}

#[tokio::test]
async fn a_shard_that_stops_mid_batch_leaves_only_locks_that_expire() {
    let (cluster, svc) = start_cluster(&["--store-timeout", "300ms", "--sweep-interval", "100ms"]).await;
    let skus = [sku_in(1, "A"), sku_in(14, "C")];
    for sku in &skus {
        svc.stock(sku, "W", "5").await;
    }
    let stopped = cluster.owner_of(slot_of(14)).await;
    let node = cluster.nodes.iter().find(|n| n.port() == stopped).unwrap();
    let pid = node.pid().unwrap();
    signal(pid, "-STOP");
    let mut request = batch(vec![line(&skus[0], "1"), line(&skus[1], "1")], "b1");
    request.ttl = secs(2);
    let result = svc.client.clone().batch_lock(request).await;
    signal(pid, "-CONT");
    let status = result.unwrap_err();
    assert!(matches!(status.code(), Code::DeadlineExceeded | Code::Unavailable), "{status:?}");
    // The first partition was given back at once.
    assert_eq!(svc.record(&skus[0], "W").await.live_locks, 0);
    // The stopped shard ran the script when it woke (it was already sent):
    // that lock is the batch's leftover, and it expires by its TTL.
    assert!(
        eventually(Duration::from_secs(10), || async { svc.record(&skus[1], "W").await.live_locks == 0 }).await,
        "the leftover lock expires"
    );
    for sku in &skus {
        let record = svc.record(sku, "W").await;
        assert_eq!(
            (record.physical.as_str(), record.locked.as_str(), record.available.as_str()),
            ("5", "0", "5"),
            "{sku}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_migrates_under_traffic_without_losing_or_doubling_stock() {
    let _ = tracing_subscriber::fmt().with_env_filter("stocklock=warn").with_test_writer().try_init();
    let (cluster, svc) = start_cluster(&["--max-queue-wait", "10s"]).await;
    let partition = 3;
    let skus: Vec<String> = (0..4).map(|i| sku_in(partition, &format!("M{i}"))).collect();
    for sku in &skus {
        svc.stock(sku, "W", "100000").await;
    }
    let slot = slot_of(partition);
    let from = cluster.owner_of(slot).await;
    let to = cluster.nodes.iter().map(|n| n.port()).find(|&p| p != from).unwrap();

    let traffic = Traffic::start(&svc.client, &skus);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = traffic.committed();

    // Migrate the slot by hand, a few keys at a time, so the traffic meets
    // both ASK (keys already moved) and MOVED (after the switch).
    let id = |port: u16| async move {
        let id: String =
            redis::from_redis_value(node_command(port, redis::cmd("CLUSTER").arg("MYID")).await.unwrap()).unwrap();
        id
    };
    let (from_id, to_id) = (id(from).await, id(to).await);
    node_command(to, redis::cmd("CLUSTER").arg("SETSLOT").arg(slot).arg("IMPORTING").arg(&from_id)).await.unwrap();
    node_command(from, redis::cmd("CLUSTER").arg("SETSLOT").arg(slot).arg("MIGRATING").arg(&to_id)).await.unwrap();
    let mut moved = 0;
    loop {
        let keys: Vec<String> = redis::from_redis_value(
            node_command(from, redis::cmd("CLUSTER").arg("GETKEYSINSLOT").arg(slot).arg(3)).await.unwrap(),
        )
        .unwrap();
        if keys.is_empty() {
            break;
        }
        let mut migrate = redis::cmd("MIGRATE");
        migrate.arg("127.0.0.1").arg(to).arg("").arg(0).arg(5000).arg("KEYS").arg(&keys);
        node_command(from, &migrate).await.unwrap();
        moved += keys.len();
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    for node in &cluster.nodes {
        node_command(node.port(), redis::cmd("CLUSTER").arg("SETSLOT").arg(slot).arg("NODE").arg(&to_id))
            .await
            .unwrap();
    }
    assert!(moved > 0);
    let during = traffic.committed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (total, lost, retries) = traffic.stop().await;
    assert!(during > before && total > during, "traffic went on: {before} {during} {total}");
    assert_eq!(lost, 0, "a migration loses no lock");
    assert_eq!(cluster.owner_of(slot).await, to);

    // Every commit happened exactly once: physical fell by the commits, nothing is left locked.
    let mut deducted = 0;
    let mut per_sku = HashMap::new();
    for sku in &skus {
        let record = svc.record(sku, "W").await;
        assert_eq!((record.locked.as_str(), record.live_locks), ("0", 0), "{sku}");
        let physical: u64 = record.physical.parse().unwrap();
        deducted += 100_000 - physical;
        per_sku.insert(sku.clone(), physical);
    }
    assert_eq!(deducted, total, "{per_sku:?}");
    eprintln!("slot {slot}: {moved} keys moved from {from} to {to}; {total} orders, {retries} retried calls");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_primary_is_followed_to_its_promoted_replica() {
    let cluster = Cluster::start(3, 1).await;
    let args = ["--redis-mode", "cluster", "--redis-partitions", "16", "--max-queue-wait", "10s"];
    let mut svc = serve(&cluster.urls(), &args).await;
    // The harness's raw connection and keys then speak cluster.
    svc.cluster = Some(cluster);
    let cluster = svc.cluster.as_ref().unwrap();
    let skus: Vec<String> = [1, 6, 11, 14].iter().map(|&p| sku_in(p, "F")).collect();
    for sku in &skus {
        svc.stock(sku, "W", "100000").await;
    }
    // The primary of partition 1's slot dies once its replica has caught up.
    let victim = cluster.owner_of(slot_of(1)).await;
    let replicated = eventually(Duration::from_secs(10), || async {
        let info = node_command(victim, redis::cmd("INFO").arg("replication")).await.unwrap();
        let info: String = redis::from_redis_value(info).unwrap();
        // A replica that completed its first sync and holds every write so far
        // (the stock above): what it lacks at the kill is the traffic's.
        let field = |name: &str| info.split(name).nth(1).map(|rest| rest.split([',', '\r']).next().unwrap().to_owned());
        info.contains("state=online") && field("master_repl_offset:").is_some_and(|o| field("offset=") == Some(o))
    })
    .await;
    assert!(replicated, "the victim's replica did not catch up");

    let traffic = Traffic::start(&svc.client, &skus);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pid = cluster.nodes.iter().find(|n| n.port() == victim).unwrap().pid().unwrap();
    signal(pid, "-KILL");
    let killed = std::time::Instant::now();
    let before = traffic.committed();
    // Traffic on every partition resumes once the replica is promoted.
    let resumed = eventually(Duration::from_secs(20), || async {
        traffic.committed() > before + 40 && cluster.owner_of(slot_of(1)).await != victim
    })
    .await;
    let recovery = killed.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (committed, lost, retries) = traffic.stop().await;
    assert!(resumed, "no recovery within 20 s of the kill");

    // The books: nothing was deducted twice, and each record's locked is the
    // sum of its live locks (on the promoted replica too).
    let mut conn = svc.redis_conn().await;
    let mut deducted = 0;
    for sku in &skus {
        let stock_key = svc.stock_key(sku, "W");
        let locks = svc.packed_locks(sku, "W").await;
        let sum: i64 = locks.iter().map(|v| v.split('|').next().unwrap().parse::<i64>().unwrap()).sum();
        let (locked, physical): (i64, i64) =
            redis::cmd("HMGET").arg(&stock_key).arg("locked").arg("physical").query_async(&mut conn).await.unwrap();
        assert_eq!(locked, sum, "{sku}");
        deducted += 100_000 - physical;
    }
    assert!(deducted as u64 <= committed, "deducted {deducted} > committed {committed}");
    eprintln!(
        "failover: recovered in {recovery:?}; {committed} commits, {lost} locks lost with the primary, {retries} retried calls, {deducted} deductions kept"
    );
}
