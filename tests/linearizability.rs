//! Linearizability of concurrent histories on one record.
//!
//! Several clients lock, release and read one small record at once; every
//! call's invocation and response instants are recorded. A Wing & Gong
//! search (with memoization of visited states, as in Lowe's and Horn's
//! checkers) then looks for one total order of the calls that respects real
//! time (a call that returned before another was sent comes first) and in
//! which a sequential record gives every call the answer it really got:
//! a lock succeeds only when enough is available and gets a fencing token
//! above every earlier one, a release releases only a live lock, a read sees
//! exactly the available quantity. Locks live 10 minutes, so nothing expires.
//!
//! The same holds across faults (Redis killed and restarted from its AOF,
//! Redis paused) for callers that do what the service asks of them: retry
//! a call that failed with a transient error, with the same request_id,
//! until it answers. Each call then counts from its first attempt to its
//! answer, and must have taken effect exactly once within that time.

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use stocklock::embedded_redis::EmbeddedRedis;
use stocklock::pb;
use tonic::{Code, Status};

#[derive(Clone, Debug, PartialEq, Eq)]
enum Call {
    /// Lock `qty` → Ok(lock index in the history, token) or short.
    Lock { qty: i64, result: Option<u64> },
    /// Release of the lock taken by call `lock` → released now, or not.
    Release { lock: usize, released: bool },
    /// Renew of the lock taken by call `lock` → renewed, or not (not live).
    Renew { lock: usize, renewed: bool },
    /// Commit of the whole lock taken by call `lock`: the units leave
    /// physical stock and the lock, so what is available does not move.
    Commit { lock: usize },
    /// GetAvailability → available.
    Read { available: i64 },
}

#[derive(Clone, Debug)]
struct Entry {
    call: Call,
    invoked: Instant,
    returned: Instant,
}

/// The sequential record: what is available, which locks (by the index of
/// the call that took them) are live, and the last token handed out.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct State {
    available: i64,
    live: Vec<usize>,
    last_token: u64,
}

impl State {
    /// Applies call `index` if the sequential record would have answered the same.
    fn apply(&self, history: &[Entry], index: usize) -> Option<Self> {
        let mut next = self.clone();
        match history[index].call {
            Call::Lock { qty, result: Some(token) } => {
                if qty > self.available || token <= self.last_token {
                    return None;
                }
                next.available -= qty;
                next.live.push(index);
                next.live.sort_unstable();
                next.last_token = token;
            }
            Call::Lock { qty, result: None } => {
                if qty <= self.available {
                    return None;
                }
            }
            Call::Release { lock, released } => {
                let position = self.live.iter().position(|&l| l == lock);
                match (position, released) {
                    (Some(p), true) => {
                        next.live.remove(p);
                        let Call::Lock { qty, .. } = history[lock].call else { return None };
                        next.available += qty;
                    }
                    (None, false) => {}
                    _ => return None,
                }
            }
            Call::Renew { lock, renewed } => {
                if self.live.contains(&lock) != renewed {
                    return None;
                }
            }
            Call::Commit { lock } => {
                let p = self.live.iter().position(|&l| l == lock)?;
                next.live.remove(p);
            }
            Call::Read { available } => {
                if available != self.available {
                    return None;
                }
            }
        }
        Some(next)
    }
}

/// True when some real-time-respecting order explains every answer.
fn linearizable(history: &[Entry], initial: i64) -> bool {
    assert!(history.len() <= 128, "the search keys linearized sets by a u128");
    let start = State { available: initial, live: Vec::new(), last_token: 0 };
    let mut seen = HashSet::new();
    search(history, 0, &start, &mut seen)
}

fn search(history: &[Entry], done: u128, state: &State, seen: &mut HashSet<(u128, State)>) -> bool {
    if done.count_ones() as usize == history.len() {
        return true;
    }
    if !seen.insert((done, state.clone())) {
        return false;
    }
    // The earliest response among the calls not yet placed: any call
    // invoked after it cannot come next.
    let horizon = (0..history.len()).filter(|i| done & (1 << i) == 0).map(|i| history[i].returned).min().unwrap();
    for i in 0..history.len() {
        if done & (1 << i) != 0 || history[i].invoked > horizon {
            continue;
        }
        if let Some(next) = state.apply(history, i)
            && search(history, done | (1 << i), &next, seen)
        {
            return true;
        }
    }
    false
}

#[test]
fn the_checker_rejects_what_no_order_explains() {
    let t = Instant::now();
    let at = |ms: u64| t + std::time::Duration::from_millis(ms);
    let entry = |call, invoked, returned| Entry { call, invoked: at(invoked), returned: at(returned) };
    // Two overlapping locks of 2 on 3 units cannot both succeed.
    let oversold =
        [entry(Call::Lock { qty: 2, result: Some(1) }, 0, 10), entry(Call::Lock { qty: 2, result: Some(2) }, 1, 9)];
    assert!(!linearizable(&oversold, 3));
    // One succeeds, the other is short: fine in either order.
    let fine = [entry(Call::Lock { qty: 2, result: Some(1) }, 0, 10), entry(Call::Lock { qty: 2, result: None }, 1, 9)];
    assert!(linearizable(&fine, 3));
    // A read after a completed lock must see it (a stale read is not linearizable).
    let stale = [entry(Call::Lock { qty: 1, result: Some(1) }, 0, 5), entry(Call::Read { available: 3 }, 6, 7)];
    assert!(!linearizable(&stale, 3));
    // Tokens must follow the order: the later lock cannot have the lower token.
    let tokens =
        [entry(Call::Lock { qty: 1, result: Some(5) }, 0, 1), entry(Call::Lock { qty: 1, result: Some(4) }, 2, 3)];
    assert!(!linearizable(&tokens, 3));
    // A lock released before a renew began cannot be renewed.
    let renewed = [
        entry(Call::Lock { qty: 1, result: Some(1) }, 0, 1),
        entry(Call::Release { lock: 0, released: true }, 2, 3),
        entry(Call::Renew { lock: 0, renewed: true }, 4, 5),
    ];
    assert!(!linearizable(&renewed, 3));
    // A commit keeps the units unavailable; a read after it sees that.
    let committed = [
        entry(Call::Lock { qty: 2, result: Some(1) }, 0, 1),
        entry(Call::Commit { lock: 0 }, 2, 3),
        entry(Call::Read { available: 3 }, 4, 5),
    ];
    assert!(!linearizable(&committed, 3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_histories_on_one_record_are_linearizable() {
    let svc = start_with(&["--max-queue-wait", "10s"]).await;
    for round in 0..20 {
        let sku = format!("LIN-{round}");
        svc.stock(&sku, "W", "3").await;
        let started = std::sync::Arc::new(tokio::sync::Barrier::new(4));
        let clients = (0..4).map(|c| {
            let mut client = svc.client.clone();
            let sku = sku.clone();
            let started = started.clone();
            tokio::spawn(async move {
                started.wait().await;
                // Each client: lock 1 or 2, read, release what it got, read.
                let mut entries = Vec::new();
                let qty = 1 + (c + round) % 2;
                let mut request = lock_request(&sku, "W", &qty.to_string(), &format!("{sku}-{c}"));
                request.ttl = secs(600);
                let invoked = Instant::now();
                let lock = client.lock(request).await;
                let returned = Instant::now();
                let (result, lock_id) = lock_outcome(lock);
                entries.push((c, Call::Lock { qty: qty as i64, result }, invoked, returned));
                entries.push(read(&client, &sku, c).await);
                if let Some(lock_id) = lock_id {
                    let request =
                        pb::ReleaseRequest { lock_id, request_id: format!("{sku}-rel-{c}"), ..Default::default() };
                    let invoked = Instant::now();
                    let released = client.release(request).await.unwrap().into_inner();
                    let returned = Instant::now();
                    let released = released.results[0].outcome() == pb::ReleaseOutcome::Released;
                    // The release's `lock` is fixed up below, once indices are known.
                    entries.push((c, Call::Release { lock: usize::MAX, released }, invoked, returned));
                    entries.push(read(&client, &sku, c).await);
                }
                entries
            })
        });
        let history = history_of(futures::future::join_all(clients).await);
        assert!(linearizable(&history, 3), "round {round}: no order explains {history:#?}");
    }
}

/// One call as a client recorded it: the client, the call, when it was
/// sent and when it answered.
type Recorded = (usize, Call, Instant, Instant);

/// What a Lock answered: its token and lock id, or nothing when it was
/// short (the only refusal these histories allow).
fn lock_outcome(lock: Result<tonic::Response<pb::LockResponse>, Status>) -> (Option<u64>, Option<String>) {
    match lock {
        Ok(r) => {
            let lock = r.into_inner().lock.unwrap();
            (Some(lock.fencing_token), Some(lock.lock_id))
        }
        Err(status) => {
            assert_eq!(reason(&status), "INSUFFICIENT_STOCK", "{status:?}");
            (None, None)
        }
    }
}

/// The clients' calls as one history: each call about a lock names the
/// index of the Lock that took it, known only once the history is built.
fn history_of(clients: Vec<Result<Vec<Recorded>, tokio::task::JoinError>>) -> Vec<Entry> {
    let mut history = Vec::new();
    let mut lock_of_client = std::collections::HashMap::new();
    for client in clients {
        for (c, call, invoked, returned) in client.unwrap() {
            let call = match call {
                Call::Release { released, .. } => Call::Release { lock: lock_of_client[&c], released },
                Call::Renew { renewed, .. } => Call::Renew { lock: lock_of_client[&c], renewed },
                Call::Commit { .. } => Call::Commit { lock: lock_of_client[&c] },
                Call::Lock { .. } => {
                    lock_of_client.insert(c, history.len());
                    call
                }
                other => other,
            };
            history.push(Entry { call, invoked, returned });
        }
    }
    history
}

/// Attempts that failed with a transient error, over the faulty rounds.
static RETRIES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// `attempt` again while it fails with an error the service calls
/// transient (a retry with the same request_id is then safe), up to 20 s.
async fn retried<T, F, Fut>(mut attempt: F) -> Result<T, Status>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Status>>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match attempt().await {
            Err(status)
                if matches!(
                    status.code(),
                    Code::Unavailable | Code::DeadlineExceeded | Code::ResourceExhausted | Code::Aborted
                ) && Instant::now() < deadline =>
            {
                RETRIES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => return other,
        }
    }
}

/// One caller's calls in a faulty round: lock, read, renew, then commit
/// (odd callers) or release, and read; each retried to its answer.
async fn faulty_caller(svc_client: Client, sku: String, c: usize, round: usize) -> Vec<Recorded> {
    let mut entries = Vec::new();
    let qty = 1 + (c + round) % 2;
    let mut request = lock_request(&sku, "W", &qty.to_string(), &format!("{sku}-{c}"));
    request.ttl = secs(600);
    let invoked = Instant::now();
    let lock = retried(|| {
        let (mut client, request) = (svc_client.clone(), request.clone());
        async move { client.lock(request).await }
    })
    .await;
    let returned = Instant::now();
    let (result, lock_id) = lock_outcome(lock);
    entries.push((c, Call::Lock { qty: qty as i64, result }, invoked, returned));
    entries.push(read(&svc_client, &sku, c).await);
    let Some(lock_id) = lock_id else { return entries };

    let renew = pb::RenewRequest {
        lock_ids: vec![lock_id.clone()],
        holder: "order-service".into(),
        ttl: secs(600),
        request_id: format!("{sku}-renew-{c}"),
        ..Default::default()
    };
    let invoked = Instant::now();
    let renewed = retried(|| {
        let (mut client, renew) = (svc_client.clone(), renew.clone());
        async move { client.renew(renew).await }
    })
    .await
    .unwrap()
    .into_inner();
    let returned = Instant::now();
    entries.push((c, Call::Renew { lock: usize::MAX, renewed: renewed.results[0].renewed }, invoked, returned));

    let invoked = Instant::now();
    let ended = if c % 2 == 1 {
        let commit = pb::CommitRequest {
            lock_id: lock_id.clone(),
            request_id: format!("{sku}-commit-{c}"),
            ..Default::default()
        };
        retried(|| {
            let (mut client, commit) = (svc_client.clone(), commit.clone());
            async move { client.commit(commit).await }
        })
        .await
        .unwrap();
        // Committed by this call, whether now or by an attempt before.
        Call::Commit { lock: usize::MAX }
    } else {
        let release = pb::ReleaseRequest { lock_id, request_id: format!("{sku}-rel-{c}"), ..Default::default() };
        let outcome = retried(|| {
            let (mut client, release) = (svc_client.clone(), release.clone());
            async move { client.release(release).await }
        })
        .await
        .unwrap()
        .into_inner()
        .results[0]
            .outcome();
        // Released by this call, whether now or by an attempt before.
        let released = matches!(outcome, pb::ReleaseOutcome::Released | pb::ReleaseOutcome::AlreadyReleased);
        Call::Release { lock: usize::MAX, released }
    };
    let returned = Instant::now();
    entries.push((c, ended, invoked, returned));
    entries.push(read(&svc_client, &sku, c).await);
    entries
}

/// GetAvailability, retried to its answer.
async fn read(svc_client: &Client, sku: &str, c: usize) -> Recorded {
    let invoked = Instant::now();
    let response = retried(|| {
        let mut client = svc_client.clone();
        let request = pb::GetAvailabilityRequest { sku: sku.into(), warehouse_id: "W".into() };
        async move { client.get_availability(request).await }
    })
    .await
    .unwrap()
    .into_inner();
    let returned = Instant::now();
    (c, Call::Read { available: response.records[0].available.parse().unwrap() }, invoked, returned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn histories_across_a_redis_kill_and_a_pause_are_linearizable() {
    // Every write reaches the AOF before it is acknowledged (appendfsync
    // always), so a restart loses nothing acknowledged; a call cut off by
    // the kill or the pause is retried by its caller until it answers.
    let (dir, dir_arg) = data_dir("lin");
    let aof = ["--appendonly", "yes", "--appendfsync", "always", "--dir", dir_arg.as_str()];
    let mut redis = EmbeddedRedis::start_with(Path::new("redis-server"), &aof).await.unwrap();
    let port = redis.port();
    let svc = serve(&redis.url(), &["--store-timeout", "200ms", "--max-queue-wait", "10s"]).await;
    for round in 0..6 {
        let sku = format!("FLT-{round}");
        retried(|| {
            let mut client = svc.client.clone();
            let request = pb::SetStockRequest {
                sku: sku.clone(),
                warehouse_id: "W".into(),
                physical: "3".into(),
                source_version: 1,
                request_id: format!("{sku}-set"),
                ..Default::default()
            };
            async move { client.set_stock(request).await }
        })
        .await
        .unwrap();
        let clients: Vec<_> =
            (0..4).map(|c| tokio::spawn(faulty_caller(svc.client.clone(), sku.clone(), c, round))).collect();
        // The fault lands somewhere in the round's first calls.
        tokio::time::sleep(Duration::from_millis(2 * round as u64)).await;
        let pid = redis.pid().unwrap();
        if round % 2 == 0 {
            signal(pid, "-KILL");
            tokio::time::sleep(Duration::from_millis(300)).await;
            redis = EmbeddedRedis::start_on(Path::new("redis-server"), port, &aof).await.unwrap();
        } else {
            signal(pid, "-STOP");
            tokio::time::sleep(Duration::from_millis(300)).await;
            signal(pid, "-CONT");
        }
        let history = history_of(futures::future::join_all(clients).await);
        assert!(linearizable(&history, 3), "round {round}: no order explains {history:#?}");
    }
    let retries = RETRIES.load(std::sync::atomic::Ordering::Relaxed);
    assert!(retries > 0, "no call met a fault");
    drop(redis);
    let _ = std::fs::remove_dir_all(&dir);
}
