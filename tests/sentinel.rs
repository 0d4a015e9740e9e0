//! Redis Sentinel: one primary, one replica and three sentinels on loopback.
//! The primary is killed in the middle of traffic; the service must follow
//! the promoted replica by itself, keep fencing tokens above every token
//! issued before the failover, and say honestly whether writes are durable.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use stocklock::embedded_redis::EmbeddedRedis;
use tokio::process::{Child, Command};
use tonic::Code;

const MASTER: &str = "mymaster";

/// A redis-server running as a sentinel of `MASTER`; killed on drop.
struct Sentinel {
    _child: Child,
    port: u16,
    _dir: TempDir,
}

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Sentinel {
    async fn start(primary_port: u16) -> Self {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("stocklock-sentinel-{port}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // Sentinels rewrite their config file, so each gets its own.
        let conf = dir.join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {dir}\n\
                 sentinel monitor {MASTER} 127.0.0.1 {primary_port} 2\n\
                 sentinel down-after-milliseconds {MASTER} 400\n\
                 sentinel failover-timeout {MASTER} 2000\n\
                 sentinel parallel-syncs {MASTER} 1\n",
                dir = dir.display()
            ),
        )
        .unwrap();
        let child = Command::new("redis-server")
            .arg(&conf)
            .arg("--sentinel")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server --sentinel starts");
        assert!(
            eventually(Duration::from_secs(10), || async {
                tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok()
            })
            .await,
            "sentinel on {port} did not start"
        );
        Self { _child: child, port, _dir: TempDir(dir) }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// `SENTINEL MASTER mymaster` as field -> value.
    async fn master_info(&self) -> std::collections::HashMap<String, String> {
        let mut conn = redis::Client::open(self.url()).unwrap().get_multiplexed_async_connection().await.unwrap();
        let flat: Vec<String> = redis::cmd("SENTINEL").arg("MASTER").arg(MASTER).query_async(&mut conn).await.unwrap();
        flat.chunks(2).map(|kv| (kv[0].clone(), kv[1].clone())).collect()
    }
}

/// A node's `INFO replication`, or "" when it does not answer: a sentinel
/// kills the clients of a replica it promotes, so a poll may be cut off.
async fn info_replication(port: u16) -> String {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
    let Ok(mut conn) = client.get_multiplexed_async_connection().await else { return String::new() };
    redis::cmd("INFO").arg("replication").query_async(&mut conn).await.unwrap_or_default()
}

/// What one Lock call of the traffic saw.
#[derive(Debug)]
struct Seen {
    /// When the call was sent.
    at: Instant,
    result: Result<(u64, Option<stocklock::pb::Durability>), Code>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_is_followed_and_fencing_tokens_stay_monotonic() {
    let _ = tracing_subscriber::fmt().with_env_filter("stocklock=info").with_test_writer().try_init();
    let redis = Path::new("redis-server");
    let primary = EmbeddedRedis::start(redis).await.unwrap();
    let port = primary.port().to_string();
    let replica = EmbeddedRedis::start_with(redis, &["--replicaof", "127.0.0.1", &port]).await.unwrap();
    assert!(
        eventually(Duration::from_secs(10), || async {
            info_replication(replica.port()).await.contains("master_link_status:up")
        })
        .await
    );
    let sentinels = [
        Sentinel::start(primary.port()).await,
        Sentinel::start(primary.port()).await,
        Sentinel::start(primary.port()).await,
    ];
    // A failover needs the sentinels to know each other and the replica.
    assert!(
        eventually(Duration::from_secs(20), || async {
            let info = sentinels[0].master_info().await;
            info["num-other-sentinels"] == "2" && info["num-slaves"] == "1"
        })
        .await,
        "sentinels did not discover each other"
    );

    let urls = sentinels.iter().map(Sentinel::url).collect::<Vec<_>>().join(",");
    let svc = serve(
        &urls,
        &[
            "--redis-mode",
            "sentinel",
            "--redis-master-name",
            MASTER,
            "--redis-failover-poll",
            "200ms",
            "--durability-replicas",
            "1",
            "--durability-timeout",
            "100ms",
        ],
    )
    .await;
    svc.stock("SKU-F", "WH-A", "100000").await;

    // Before the failover: a replica acknowledges, so changes are durable.
    let before = svc.lock("SKU-F", "WH-A", "1", "before").await.unwrap();
    let durability = before.durability.expect("durability is reported");
    assert_eq!((durability.replicas_acknowledged, durability.replicas_required, durability.durable), (1, 1, true));
    let token_before = before.lock.unwrap().fencing_token;
    let epoch_key = svc.keys().epoch(svc.partition("SKU-F"));
    let epoch_before = epoch_at(primary.port(), &epoch_key).await;

    // Traffic: one Lock every 5 ms, each with a fresh request id.
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let mut client = svc.client.clone();
    let traffic = tokio::spawn(async move {
        let mut seen = Vec::new();
        let mut i = 0;
        while !*stop_rx.borrow_and_update() {
            i += 1;
            let mut request = lock_request("SKU-F", "WH-A", "1", &format!("t{i}"));
            request.ttl = secs(600);
            let at = Instant::now();
            let mut request = tonic::Request::new(request);
            request.set_timeout(Duration::from_secs(2));
            let result = client
                .lock(request)
                .await
                .map(|r| {
                    let r = r.into_inner();
                    (r.lock.unwrap().fencing_token, r.durability)
                })
                .map_err(|s| s.code());
            seen.push(Seen { at, result });
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        seen
    });
    tokio::time::sleep(Duration::from_millis(300)).await;

    let killed_at = Instant::now();
    primary.stop().await.unwrap();
    // The service finds the promoted replica by itself: no restart, no new URL.
    let promoted = eventually(Duration::from_secs(20), || async {
        info_replication(replica.port()).await.contains("role:master")
    })
    .await;
    assert!(promoted, "sentinels did not promote the replica");
    let recovered = eventually(Duration::from_secs(10), || async {
        svc.lock("SKU-F", "WH-A", "1", &format!("probe-{}", rand_suffix())).await.is_ok()
    })
    .await;
    assert!(recovered, "the service did not follow the failover");
    let recovered_after = killed_at.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop_tx.send(true).unwrap();
    let seen = traffic.await.unwrap();

    let ok: Vec<_> = seen.iter().filter_map(|s| s.result.as_ref().ok().map(|r| (s.at, r))).collect();
    let failed: Vec<Code> = seen.iter().filter_map(|s| s.result.err()).collect();
    for code in &failed {
        assert!(matches!(code, Code::Unavailable | Code::DeadlineExceeded), "failed with {code:?}");
    }
    // Tokens: strictly increasing in call order, and after the failover
    // above every token issued before it, lost writes included.
    let before_kill: Vec<u64> = ok.iter().filter(|(at, _)| *at < killed_at).map(|(_, r)| r.0).collect();
    let after_kill: Vec<(u64, &Option<stocklock::pb::Durability>)> =
        ok.iter().filter(|(at, _)| *at > killed_at).map(|(_, r)| (r.0, &r.1)).collect();
    let all: Vec<u64> = ok.iter().map(|(_, r)| r.0).collect();
    assert!(all.windows(2).all(|w| w[0] < w[1]), "tokens not increasing: {all:?}");
    assert!(!before_kill.is_empty() && !after_kill.is_empty(), "{seen:?}");
    let highest_before = before_kill.iter().max().copied().unwrap().max(token_before);
    assert!(after_kill.iter().all(|(token, _)| *token > highest_before));
    // The new primary's epoch was raised past the old one's before its first
    // lock (see lua/raise_epoch.lua).
    // (The health worker may raise it again once Redis answers: at least once.)
    let epoch = epoch_at(replica.port(), &epoch_key).await;
    assert!(epoch > epoch_before, "epoch {epoch_before} before the failover, {epoch} after");
    // With the old primary gone the new one has no replica: its writes are
    // honestly reported as not durable.
    for (_, durability) in &after_kill {
        let durability = durability.as_ref().expect("durability is reported");
        assert_eq!((durability.replicas_acknowledged, durability.durable), (0, false));
    }

    let record = svc.record("SKU-F", "WH-A").await;
    let locked: i64 = record.locked.parse().unwrap();
    let available: i64 = record.available.parse().unwrap();
    assert_eq!(available + locked, 100_000, "{record:?}");
    assert_eq!(record.live_locks as i64, locked);
    let durable = ok.iter().filter(|(_, r)| r.1.as_ref().is_some_and(|d| d.durable)).count();
    eprintln!(
        "failover: {} calls ok ({durable} durable), {} failed ({:?}), service recovered {:?} after the kill",
        ok.len(),
        failed.len(),
        failed.iter().fold(std::collections::BTreeMap::new(), |mut m, c| {
            *m.entry(format!("{c:?}")).or_insert(0) += 1;
            m
        }),
        recovered_after
    );
    drop(replica);
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
}

#[tokio::test]
async fn without_enough_replicas_a_change_is_applied_and_reported_not_durable() {
    let svc = start_with(&["--durability-replicas", "1", "--durability-timeout", "20ms"]).await;
    let record = svc.stock("SKU-D", "WH-A", "5").await;
    assert_eq!(record.physical, "5");
    let response = svc.lock("SKU-D", "WH-A", "2", "d1").await.unwrap();
    let durability = response.durability.unwrap();
    assert_eq!((durability.replicas_acknowledged, durability.replicas_required, durability.durable), (0, 1, false));
    // Not durable is not undone: the lock holds.
    assert_eq!(svc.available("SKU-D", "WH-A").await, "3");
    let metrics = scrape(&svc).await;
    assert!(metrics["stocklock_durability_waits_total{outcome=\"not_durable\"}"] >= 2.0);
}

#[tokio::test]
async fn with_a_replica_every_kind_of_change_is_reported_durable() {
    let svc = start_with(&["--durability-replicas", "1"]).await;
    let port = svc.redis.as_ref().unwrap().port().to_string();
    let replica =
        EmbeddedRedis::start_with(Path::new("redis-server"), &["--replicaof", "127.0.0.1", &port]).await.unwrap();
    assert!(
        eventually(Duration::from_secs(10), || async {
            info_replication(replica.port()).await.contains("master_link_status:up")
        })
        .await
    );
    svc.stock("SKU-D", "WH-A", "5").await;
    let lock = svc.lock("SKU-D", "WH-A", "2", "d1").await.unwrap();
    assert!(lock.durability.unwrap().durable);
    let released = svc.release(&lock.lock.unwrap().lock_id, "r1").await.unwrap();
    assert!(released.durability.unwrap().durable);
    // A retried call waits too: its answer vouches for the original change.
    let unchanged = svc.lock("SKU-D", "WH-A", "2", "d1").await.unwrap();
    assert!(unchanged.replayed && unchanged.durability.unwrap().durable);
}

/// The fencing epoch `key` on the Redis at `port`.
async fn epoch_at(port: u16, key: &str) -> u64 {
    match node_command(port, redis::cmd("GET").arg(key)).await.unwrap() {
        redis::Value::BulkString(bytes) => String::from_utf8(bytes).unwrap().parse().unwrap(),
        other => panic!("no fencing epoch {key} on port {port}: {other:?}"),
    }
}
