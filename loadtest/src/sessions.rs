//! `--scenario sessions`: what holding many live locks costs Redis, kept
//! alive by sessions or renewed lock by lock, side by side; and how soon a
//! holder hears of a loss while other traffic runs.
//!
//! 1. Sessions: `--sessions` sessions hold `--hold-locks` locks between
//!    them; for `--duration` each session is kept alive every third of
//!    `--session-ttl`. Redis's commands per second and CPU over the window.
//! 2. Per-lock Renew: the same number of locks, without sessions; for
//!    `--duration` each lock is renewed every third of the same ttl, one
//!    Renew call per lock (what a client with a heartbeat per lock does), as
//!    fast as the machine allows. The same figures, and how many renewals
//!    were due against how many were made.
//! 3. Notices: `--rate` Lock/s of other traffic, while a watched holder's
//!    locks are force-released (two a second) and its short sessions expire
//!    (two a second): the time from the event (Redis time) to its arrival
//!    on the holder's WatchHolder stream.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use stocklock::pb;
use stocklock::pb::admin_service_client::AdminServiceClient;
use stocklock::pb::inventory_service_client::InventoryServiceClient;
use tonic::transport::Channel;

use crate::RunArgs;

/// Calls in flight while locks are taken.
const FILL_CONCURRENCY: usize = 64;

/// Redis's counters at one instant.
#[derive(Clone, Copy, Debug)]
struct RedisLoad {
    commands: u64,
    cpu_seconds: f64,
    at: Instant,
}

async fn redis_load(conn: &mut redis::aio::MultiplexedConnection) -> anyhow::Result<RedisLoad> {
    let info: String = redis::cmd("INFO").arg("all").query_async(conn).await?;
    let field = |name: &str| -> anyhow::Result<f64> {
        info.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(':')))
            .and_then(|v| v.trim().parse().ok())
            .with_context(|| format!("INFO without {name}"))
    };
    Ok(RedisLoad {
        commands: field("total_commands_processed")? as u64,
        cpu_seconds: field("used_cpu_user")? + field("used_cpu_sys")?,
        at: Instant::now(),
    })
}

/// Commands per second and CPU cores Redis used between two readings.
fn rates(before: RedisLoad, after: RedisLoad) -> (f64, f64) {
    let seconds = after.at.duration_since(before.at).as_secs_f64();
    ((after.commands - before.commands) as f64 / seconds, (after.cpu_seconds - before.cpu_seconds) / seconds)
}

fn proto(d: Duration) -> pbjson_types::Duration {
    pbjson_types::Duration { seconds: d.as_secs() as i64, nanos: d.subsec_nanos() as i32 }
}

/// Takes `count` locks of holder `holder` on random records, in `session`
/// (one of them, round robin) or with `ttl`; their ids.
async fn fill(
    client: &InventoryServiceClient<Channel>,
    args: &RunArgs,
    count: usize,
    sessions: &[String],
    ttl: Duration,
    tag: &str,
) -> anyhow::Result<Vec<String>> {
    let next = Arc::new(AtomicU64::new(0));
    let records = args.skus * args.warehouses;
    let mut tasks = Vec::new();
    for _ in 0..FILL_CONCURRENCY {
        let (client, next, sessions, tag) = (client.clone(), next.clone(), sessions.to_vec(), tag.to_owned());
        let warehouses = args.warehouses;
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed) as usize;
                if n >= count {
                    return Ok::<_, anyhow::Error>(ids);
                }
                let index = rand::random_range(0..records);
                let (sku, warehouse) = (format!("LT-{:06}", index / warehouses), format!("WH-{}", index % warehouses));
                let session = if sessions.is_empty() { String::new() } else { sessions[n % sessions.len()].clone() };
                let request = pb::LockRequest {
                    candidates: None,
                    sku,
                    warehouse_id: warehouse,
                    quantity: "1".into(),
                    ttl: session.is_empty().then(|| proto(ttl)),
                    order_id: format!("{tag}-{n}"),
                    request_id: format!("{tag}-{n}"),
                    holder: "lt-holder".into(),
                    session_id: session,
                };
                let lock = client.clone().lock(request).await.context("filling locks")?.into_inner();
                ids.push(lock.lock.context("a lock")?.lock_id);
            }
        }));
    }
    let mut ids = Vec::with_capacity(count);
    for task in tasks {
        ids.extend(task.await??);
    }
    Ok(ids)
}

/// Runs the three parts and prints what they measured.
pub async fn run(channels: &[Channel], target: &str, redis_port: u16, args: &RunArgs) -> anyhow::Result<()> {
    let client = InventoryServiceClient::new(channels[0].clone());
    let redis = redis::Client::open(format!("redis://127.0.0.1:{redis_port}/"))?;
    let mut conn = redis.get_multiplexed_async_connection().await?;
    let ttl = args.session_ttl;
    let locks = args.hold_locks;
    let version = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_micros();
    if locks == 0 {
        // --hold-locks 0: the notices alone.
        return notices(channels, target, args).await;
    }

    // 1. Sessions.
    let mut sessions = Vec::new();
    for i in 0..args.sessions {
        let request = pb::OpenSessionRequest {
            ttl: Some(proto(ttl)),
            holder: "lt-holder".into(),
            request_id: format!("lt-session-{version}-{i}"),
        };
        sessions
            .push(client.clone().open_session(request).await?.into_inner().session.context("a session")?.session_id);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let keep_alives = Arc::new(AtomicU64::new(0));
    let keep_alive_failures = Arc::new(AtomicU64::new(0));
    let mut keepers = Vec::new();
    for session in &sessions {
        let (client, stop, done, failed) =
            (client.clone(), stop.clone(), keep_alives.clone(), keep_alive_failures.clone());
        let request = pb::KeepAliveOnceRequest { session_id: session.clone(), holder: "lt-holder".into() };
        keepers.push(tokio::spawn(async move {
            // Spread the sessions over the interval.
            tokio::time::sleep(ttl.mul_f64(rand::random::<f64>() / 3.0)).await;
            while !stop.load(Ordering::Relaxed) {
                match client.clone().keep_alive_once(request.clone()).await {
                    Ok(_) => done.fetch_add(1, Ordering::Relaxed),
                    Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                };
                tokio::time::sleep(ttl.mul_f64(rand::random_range(0.8..1.0) / 3.0)).await;
            }
        }));
    }
    let started = Instant::now();
    fill(&client, args, locks, &sessions, ttl, &format!("lt-s-{version}")).await?;
    println!(
        "sessions: {} sessions hold {locks} locks (taken in {:.1} s); keeping them alive for {} ...",
        sessions.len(),
        started.elapsed().as_secs_f64(),
        humantime::format_duration(args.duration)
    );
    let before = redis_load(&mut conn).await?;
    let counted = keep_alives.load(Ordering::Relaxed);
    tokio::time::sleep(args.duration).await;
    let after = redis_load(&mut conn).await?;
    let kept = keep_alives.load(Ordering::Relaxed) - counted;
    stop.store(true, Ordering::Relaxed);
    for keeper in keepers {
        let _ = keeper.await;
    }
    let (session_commands, session_cpu) = rates(before, after);
    let window = after.at.duration_since(before.at).as_secs_f64();
    for session in &sessions {
        let request = pb::CloseSessionRequest { session_id: session.clone(), holder: "lt-holder".into() };
        client.clone().close_session(request).await?;
    }

    // 2. The same locks, renewed one by one.
    let started = Instant::now();
    let ids = fill(&client, args, locks, &[], Duration::from_secs(3600), &format!("lt-r-{version}")).await?;
    println!(
        "per-lock renew: {locks} locks (taken in {:.1} s); renewing each every {} for {} ...",
        started.elapsed().as_secs_f64(),
        humantime::format_duration(ttl / 3),
        humantime::format_duration(args.duration)
    );
    let ids = Arc::new(ids);
    let stop = Arc::new(AtomicBool::new(false));
    let renewed = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let workers = FILL_CONCURRENCY;
    let mut renewers = Vec::new();
    for w in 0..workers {
        let (client, stop, renewed, refused, ids) =
            (client.clone(), stop.clone(), renewed.clone(), refused.clone(), ids.clone());
        renewers.push(tokio::spawn(async move {
            // Worker w renews locks w, w + workers, ...: each once per
            // ttl / 3, or as often as it can.
            let mine: Vec<&String> = ids.iter().skip(w).step_by(workers).collect();
            let cycle = ttl / 3;
            while !stop.load(Ordering::Relaxed) {
                let round = Instant::now();
                for (k, id) in mine.iter().enumerate() {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let due = round + cycle.mul_f64(k as f64 / mine.len() as f64);
                    tokio::time::sleep_until(due.into()).await;
                    let request = pb::RenewRequest {
                        lock_ids: vec![(*id).clone()],
                        ttl: Some(proto(ttl)),
                        holder: "lt-holder".into(),
                        request_id: format!("rn-{k}"),
                        ..Default::default()
                    };
                    match client.clone().renew(request).await {
                        Ok(_) => renewed.fetch_add(1, Ordering::Relaxed),
                        Err(_) => refused.fetch_add(1, Ordering::Relaxed),
                    };
                }
                tokio::time::sleep_until((round + cycle).into()).await;
            }
        }));
    }
    let before = redis_load(&mut conn).await?;
    let counted = renewed.load(Ordering::Relaxed);
    tokio::time::sleep(args.duration).await;
    let after = redis_load(&mut conn).await?;
    let renews = renewed.load(Ordering::Relaxed) - counted;
    stop.store(true, Ordering::Relaxed);
    for renewer in renewers {
        let _ = renewer.await;
    }
    let (renew_commands, renew_cpu) = rates(before, after);
    let renew_window = after.at.duration_since(before.at).as_secs_f64();
    let due = locks as f64 / (ttl.as_secs_f64() / 3.0);
    let mut releasers = Vec::new();
    for w in 0..FILL_CONCURRENCY {
        let (client, ids) = (client.clone(), ids.clone());
        releasers.push(tokio::spawn(async move {
            for id in ids.iter().skip(w).step_by(FILL_CONCURRENCY) {
                let request = pb::ReleaseRequest {
                    lock_id: id.clone(),
                    holder: "lt-holder".into(),
                    request_id: format!("rl-{id}"),
                    ..Default::default()
                };
                let _ = client.clone().release(request).await;
            }
        }));
    }
    for releaser in releasers {
        releaser.await?;
    }

    // The floor: what the service makes Redis do with no lock held and no
    // call made (its sweeper, event tailers, auditor, gauges), once the
    // sweeper has nothing left to end.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let before = redis_load(&mut conn).await?;
    tokio::time::sleep(args.duration.min(Duration::from_secs(10))).await;
    let (idle_commands, idle_cpu) = rates(before, redis_load(&mut conn).await?);

    println!(
        "\nholding {locks} live locks, ttl {} (one box: service, Redis and this tool share its cores)",
        humantime::format_duration(ttl)
    );
    println!("  {:<28} {:>14} {:>16} {:>12}", "", "calls/s", "Redis cmds/s", "Redis CPU");
    println!("  {:<28} {:>14} {:>16.0} {:>11.1}%", "idle service (the floor)", "", idle_commands, idle_cpu * 100.0);
    println!(
        "  {:<28} {:>14.1} {:>16.0} {:>11.1}%",
        format!("{} sessions, keep-alive", sessions.len()),
        kept as f64 / window,
        session_commands,
        session_cpu * 100.0
    );
    println!(
        "  {:<28} {:>14.1} {:>16.0} {:>11.1}%",
        "per-lock Renew",
        renews as f64 / renew_window,
        renew_commands,
        renew_cpu * 100.0
    );
    println!(
        "  per-lock renewals due {due:.0}/s, made {:.0}/s ({} refused); keep-alives failed: {}",
        renews as f64 / renew_window,
        refused.load(Ordering::Relaxed),
        keep_alive_failures.load(Ordering::Relaxed)
    );

    notices(channels, target, args).await
}

/// The delays of SESSION_EXPIRED notices timed from the session's expiry.
const SINCE_EXPIRY: i32 = -1;

/// `call` until it answers with something other than a transient error:
/// the watched holder's calls must get through the other traffic (they
/// carry request ids, so a retry does nothing twice).
async fn retried<T, F, Fut>(mut call: F) -> Result<T, tonic::Status>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    loop {
        match call().await {
            Err(status)
                if matches!(
                    status.code(),
                    tonic::Code::ResourceExhausted | tonic::Code::Unavailable | tonic::Code::DeadlineExceeded
                ) =>
            {
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            result => return result.map(tonic::Response::into_inner),
        }
    }
}

/// Part 3: the delay from a loss (its event's Redis time) to its notice on
/// the holder's stream, under `--rate` Lock/s of other traffic.
async fn notices(channels: &[Channel], target: &str, args: &RunArgs) -> anyhow::Result<()> {
    let client = InventoryServiceClient::new(channels[0].clone());
    let admin = AdminServiceClient::new(channels[0].clone());
    // A channel without a call timeout: the watch lives the whole run.
    let watch_channel = Channel::from_shared(target.to_owned())?.tcp_nodelay(true).connect().await?;
    let request = pb::WatchHolderRequest { holder: "lt-watched".into(), ..Default::default() };
    let mut stream = InventoryServiceClient::new(watch_channel).watch_holder(request).await?.into_inner();
    let delays = Arc::new(std::sync::Mutex::new(Vec::<(i32, u64)>::new()));
    // Each watched session's expiry (Redis ms), to time its notice from
    // the expiry itself, the sweeper's delay included.
    let expiries = Arc::new(std::sync::Mutex::new(std::collections::HashMap::<String, u64>::new()));
    let ms = |t: Option<pbjson_types::Timestamp>| t.map_or(0, |t| t.seconds as u64 * 1000 + t.nanos as u64 / 1_000_000);
    let listener = {
        let (delays, expiries) = (delays.clone(), expiries.clone());
        tokio::spawn(async move {
            while let Ok(Some(response)) = stream.message().await {
                let Some(notice) = response.event else { continue };
                let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
                let now = now.as_millis() as u64;
                let mut delays = delays.lock().expect("lock");
                delays.push((notice.kind, now.saturating_sub(ms(notice.at))));
                if notice.kind() == pb::HolderEventKind::SessionExpired
                    && let Some(expiry) = expiries.lock().expect("lock").get(&notice.session_id)
                {
                    delays.push((SINCE_EXPIRY, now.saturating_sub(*expiry)));
                }
            }
        })
    };

    // Other traffic: Lock at --rate, short TTLs, another holder.
    let stop = Arc::new(AtomicBool::new(false));
    let rate = args.rate.unwrap_or(5_000.0);
    let traffic = {
        let (client, stop) = (client.clone(), stop.clone());
        let records = args.skus * args.warehouses;
        let warehouses = args.warehouses;
        tokio::spawn(async move {
            let interval = Duration::from_secs_f64(1.0 / rate);
            let mut due = tokio::time::Instant::now();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                due += interval;
                tokio::time::sleep_until(due).await;
                n += 1;
                let index = rand::random_range(0..records);
                let request = pb::LockRequest {
                    candidates: None,
                    sku: format!("LT-{:06}", index / warehouses),
                    warehouse_id: format!("WH-{}", index % warehouses),
                    quantity: "1".into(),
                    ttl: Some(proto(Duration::from_secs(2))),
                    order_id: format!("tr-{n}"),
                    request_id: format!("tr-{n}-{}", rand::random::<u32>()),
                    holder: "lt-traffic".into(),
                    session_id: String::new(),
                };
                let client = client.clone();
                tokio::spawn(async move {
                    let _ = client.clone().lock(request).await;
                });
            }
        })
    };

    // The watched holder's losses: a forced unlock and an expired session,
    // each twice a second.
    let started = Instant::now();
    let mut forced = 0;
    let mut expired = 0;
    let mut i = 0u64;
    while started.elapsed() < args.duration {
        i += 1;
        let run = rand::random::<u32>();
        let lock = pb::LockRequest {
            candidates: None,
            sku: "LT-000000".into(),
            warehouse_id: "WH-0".into(),
            quantity: "1".into(),
            ttl: Some(proto(Duration::from_secs(60))),
            order_id: format!("w-{i}"),
            request_id: format!("w-{run}-{i}"),
            holder: "lt-watched".into(),
            session_id: String::new(),
        };
        let lock_id = retried(|| {
            let (mut c, r) = (client.clone(), lock.clone());
            async move { c.lock(r).await }
        })
        .await?
        .lock
        .context("a lock")?
        .lock_id;
        let ask = pb::RequestForceUnlockRequest {
            selector: Some(pb::LockSelector { target: Some(pb::lock_selector::Target::LockId(lock_id)) }),
            reason: "load test".into(),
            request_id: format!("fu-{run}-{i}"),
            operator: "alice".into(),
        };
        let pending = retried(|| {
            let (mut c, r) = (admin.clone(), ask.clone());
            async move { c.request_force_unlock(r).await }
        })
        .await?
        .request
        .context("a request")?;
        let approve = pb::ApproveForceUnlockRequest {
            id: pending.id,
            comment: String::new(),
            request_id: format!("ap-{run}-{i}"),
            operator: "bob".into(),
        };
        retried(|| {
            let (mut c, r) = (admin.clone(), approve.clone());
            async move { c.approve_force_unlock(r).await }
        })
        .await?;
        forced += 1;
        let open = pb::OpenSessionRequest {
            ttl: Some(proto(Duration::from_secs(1))),
            holder: "lt-watched".into(),
            request_id: format!("ws-{run}-{i}"),
        };
        let session: pb::Session = retried(|| {
            let (mut c, r) = (client.clone(), open.clone());
            async move { c.open_session(r).await }
        })
        .await?
        .session
        .context("a session")?;
        expiries.lock().expect("lock").insert(session.session_id.clone(), ms(session.expires_at));
        let lock = pb::LockRequest {
            candidates: None,
            sku: "LT-000000".into(),
            warehouse_id: "WH-0".into(),
            quantity: "1".into(),
            ttl: None,
            order_id: format!("ws-{i}"),
            request_id: format!("wsl-{run}-{i}"),
            holder: "lt-watched".into(),
            session_id: session.session_id,
        };
        retried(|| {
            let (mut c, r) = (client.clone(), lock.clone());
            async move { c.lock(r).await }
        })
        .await?;
        expired += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Let the last sessions expire and be told.
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    let _ = traffic.await;
    listener.abort();
    let delays = delays.lock().expect("lock").clone();
    println!(
        "\nnotices under {rate:.0} Lock/s of other traffic ({forced} forced unlocks, {expired} sessions left to expire):"
    );
    for (kind, name) in [
        (pb::HolderEventKind::ForceReleased, "FORCE_RELEASED"),
        (pb::HolderEventKind::SessionExpired, "SESSION_EXPIRED"),
        (pb::HolderEventKind::LockExpired, "LOCK_EXPIRED"),
    ]
    .map(|(kind, name)| (kind as i32, name))
    .into_iter()
    .chain([(SINCE_EXPIRY, "SESSION_EXPIRED, from the session's expiry")])
    {
        let mut mine: Vec<u64> = delays.iter().filter(|(k, _)| *k == kind).map(|(_, d)| *d).collect();
        mine.sort_unstable();
        if mine.is_empty() {
            println!("  {name:<42} none received");
            continue;
        }
        let at = |q: f64| mine[((mine.len() - 1) as f64 * q).round() as usize];
        let from = if kind == SINCE_EXPIRY { "the expiry" } else { "the event" };
        println!(
            "  {name:<42} {:>4} notices: p50 {} ms, p99 {} ms, max {} ms after {from}",
            mine.len(),
            at(0.5),
            at(0.99),
            mine[mine.len() - 1]
        );
    }
    Ok(())
}
