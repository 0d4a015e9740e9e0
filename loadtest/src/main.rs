//! `loadtest`: drives a stocklock service with realistic traffic and reports
//! latency percentiles beside the physical limit of the machine.
//!
//! Open loop (`--rate`): a dedicated pacing thread schedules calls at fixed
//! instants, finer than Tokio's 1 ms timer (it wakes every 100 us at most),
//! and latency counts from the scheduled instant, so queueing and dispatch
//! delay are never hidden (no coordinated omission).
//! Closed loop (`--concurrency`): N calls in flight. Warm-up is excluded.

mod probe;
mod report;
mod sessions;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use clap::{Parser, Subcommand, ValueEnum};
use rand::Rng;
use rand_distr::{Distribution, Zipf};
use report::{Recorder, Report};
use stocklock::embedded_redis::EmbeddedRedis;
use stocklock::pb;
use stocklock::pb::admin_service_client::AdminServiceClient;
use stocklock::pb::inventory_service_client::InventoryServiceClient;
use tonic::transport::Channel;
use tonic_types::StatusExt;

/// The allocator the service uses: the generator shares the machine with
/// it, and glibc's malloc would take CPU from both.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The ErrorInfo reason of a failed call, or its code.
fn reason_of(status: &tonic::Status) -> String {
    status.get_details_error_info().map_or_else(|| format!("{:?}", status.code()), |info| info.reason)
}

#[derive(Debug, Parser)]
#[command(name = "loadtest", about = "Load generator for stocklock")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a scenario and report.
    Run(Box<RunArgs>),
    /// Compare two JSON reports.
    Compare { a: PathBuf, b: PathBuf },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// Lock only, with --lock-ttl: the locks expire and the sweeper returns them.
    Lock,
    /// Lock -> renew -> commit or release, over spread SKUs.
    Order,
    /// The order mix over SKUs of Zipf popularity.
    Zipf,
    /// The order mix, every caller on one record.
    Hot,
    /// BatchLock of --batch-lines lines, then release.
    Batch,
    /// GetAvailability only.
    Query,
    /// The gRPC health Check: the transport's own ceiling.
    Check,
    /// An expiry wave: --wave-locks locks on one record, all expiring at one
    /// instant, then Lock at --rate on the other records while it is swept.
    Wave,
    /// Holding --hold-locks live locks: by --sessions sessions kept alive,
    /// then by per-lock Renew (Redis calls and CPU side by side); then how
    /// soon a holder hears of a loss under --rate Lock/s (default 5,000) of
    /// other traffic. Needs --spawn or --redis-port.
    Sessions,
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// What to send.
    #[arg(long, value_enum, default_value = "order")]
    scenario: Scenario,
    /// Open loop: scheduled units per second.
    #[arg(long, conflicts_with = "concurrency")]
    rate: Option<f64>,
    /// Closed loop: units in flight.
    #[arg(long)]
    concurrency: Option<usize>,
    /// Open loop at each of these rates in turn, to find where p99 crosses 1 ms.
    #[arg(long, value_delimiter = ',', conflicts_with_all = ["rate", "concurrency"])]
    sweep: Vec<f64>,
    /// Measured time.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Unmeasured time first.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// HTTP/2 connections.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// The service; without it, --spawn starts one.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    target: String,
    /// Start a stocklock service (and its Redis) for the run.
    #[arg(long)]
    spawn: bool,
    /// The stocklock binary for --spawn (default: next to this one).
    #[arg(long)]
    stocklock_bin: Option<PathBuf>,
    /// Extra `stocklock serve` flags for --spawn, e.g. "--worker-threads 1".
    #[arg(long, allow_hyphen_values = true, default_value = "")]
    serve_args: String,
    /// With --spawn: Redis on a core of its own (the last), the service and
    /// this load generator on the others, as in production, where Redis runs
    /// on its own machine and no other process preempts its scripts
    /// (`taskset`, needs 2 cores or more).
    #[arg(long, requires = "spawn")]
    pin_redis: bool,
    /// Redis of the service (for redis-benchmark and the memory figure) when not spawned.
    #[arg(long)]
    redis_port: Option<u16>,
    /// SKUs in play.
    #[arg(long, default_value_t = 1000)]
    skus: usize,
    /// Warehouses per SKU.
    #[arg(long, default_value_t = 4)]
    warehouses: usize,
    /// TTL of the lock-only scenario's locks (they are left to expire).
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    lock_ttl: Duration,
    /// Lines per BatchLock.
    #[arg(long, default_value_t = 20)]
    batch_lines: usize,
    /// Renewals per order.
    #[arg(long, default_value_t = 1)]
    renews: usize,
    /// Share of orders that commit (the rest release).
    #[arg(long, default_value_t = 0.7)]
    commit_ratio: f64,
    /// Share of units that are availability queries instead of orders.
    #[arg(long, default_value_t = 0.0)]
    query_ratio: f64,
    /// Zipf exponent of SKU popularity.
    #[arg(long, default_value_t = 1.1)]
    zipf_s: f64,
    /// Run redis-benchmark of the service's own lock script and of a minimal
    /// lock script (the floor) after the run.
    #[arg(long)]
    redis_benchmark: bool,
    /// Redis slow-log threshold for the measured run (needs --spawn or --redis-port).
    #[arg(long, default_value = "1ms", value_parser = humantime::parse_duration)]
    slowlog: Duration,
    /// Before the run, spin one thread per core this long and count the
    /// pauses over the slow-log threshold the idle machine itself makes
    /// (hypervisor steal, interrupts): the slow log's floor on this machine.
    #[arg(long, value_parser = humantime::parse_duration)]
    stall_probe: Option<Duration>,
    /// Also read locks the way operators and dashboards do, once per interval:
    /// GetLock of a recent lock, a ListLocks page of the hottest SKU, GetLockStats.
    #[arg(long, value_parser = humantime::parse_duration)]
    admin_every: Option<Duration>,
    /// Wave scenario: locks on the wave's record.
    #[arg(long, default_value_t = 200_000)]
    wave_locks: usize,
    /// Wave scenario: the wave expires this long after the run starts (the
    /// locks are taken before; each one's TTL ends at that instant).
    #[arg(long, default_value = "90s", value_parser = humantime::parse_duration)]
    wave_at: Duration,
    /// Wave scenario, with --spawn: stop the service (every sweeper) just
    /// before the wave expires and start it again this much later.
    #[arg(long, value_parser = humantime::parse_duration)]
    wave_pause: Option<Duration>,
    /// Sessions scenario: how many sessions hold the locks.
    #[arg(long, default_value_t = 100)]
    sessions: usize,
    /// Sessions scenario: live locks held (0: only the notices part).
    #[arg(long, default_value_t = 300_000)]
    hold_locks: usize,
    /// Sessions scenario: the sessions' ttl, and the per-lock renewals' (each
    /// is kept alive, or renewed, every third of it).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    session_ttl: Duration,
    /// Write the JSON report here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the HDR percentile distribution (.hgrm) here.
    #[arg(long)]
    hdr: Option<PathBuf>,
    /// Write the latency-percentile plot (SVG) here.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

/// What every unit of work shares.
struct Shared {
    clients: Vec<InventoryServiceClient<Channel>>,
    health: Vec<tonic_health::pb::health_client::HealthClient<Channel>>,
    args: Arc<RunArgs>,
    recorder: Mutex<Recorder>,
    /// Units whose scheduled start is before this are not recorded.
    measure_from: Instant,
    next: AtomicU64,
    /// Committed units per record (index), for the end-of-run check.
    committed: Vec<AtomicU64>,
    /// Units completed, warm-up included (the memory figure's denominator).
    completed: AtomicU64,
    /// The id of a recent lock, for --admin-every.
    recent_lock: Mutex<String>,
    zipf: Zipf<f64>,
}

impl Shared {
    fn client(&self) -> InventoryServiceClient<Channel> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) as usize;
        self.clients[i % self.clients.len()].clone()
    }

    fn record(&self, scheduled: Instant, op: &'static str, started: Instant, result: Result<(), String>) {
        if scheduled < self.measure_from {
            return;
        }
        let mut recorder = self.recorder.lock().expect("lock poisoned");
        match result {
            Ok(()) => recorder.record(op, started.elapsed()),
            Err(reason) => recorder.error(op, &reason),
        }
    }

    /// A record index for this unit, by the scenario's popularity.
    fn pick(&self) -> usize {
        let records = self.args.skus * self.args.warehouses;
        match self.args.scenario {
            Scenario::Hot => 0,
            // Record 0 holds the wave; the measured locks go elsewhere.
            Scenario::Wave => rand::rng().random_range(1..records.max(2)),
            Scenario::Zipf => (self.zipf.sample(&mut rand::rng()) as usize - 1).min(records - 1),
            _ => rand::rng().random_range(0..records),
        }
    }
}

fn sku(index: usize, args: &RunArgs) -> (String, String) {
    (format!("LT-{:06}", index / args.warehouses), format!("WH-{}", index % args.warehouses))
}

const PHYSICAL: u64 = 1_000_000_000;

/// One unit of the scenario; `scheduled` is when it was due (open loop).
async fn unit(shared: Arc<Shared>, scheduled: Instant) {
    let args = &shared.args;
    let mut client = shared.client();
    let id = shared.next.fetch_add(1, Ordering::Relaxed);
    let err = |s: tonic::Status| reason_of(&s);
    if args.scenario == Scenario::Check
        || (args.scenario != Scenario::Query
            && args.query_ratio > 0.0
            && rand::rng().random_bool(args.query_ratio.min(1.0)))
        || args.scenario == Scenario::Query
    {
        if args.scenario == Scenario::Check {
            let mut health = shared.health[id as usize % shared.health.len()].clone();
            let result = health.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await;
            shared.record(scheduled, "check", scheduled, result.map(drop).map_err(err));
            return;
        }
        let (s, w) = sku(shared.pick(), args);
        let result = client.get_availability(pb::GetAvailabilityRequest { sku: s, warehouse_id: w }).await;
        shared.record(scheduled, "query", scheduled, result.map(drop).map_err(err));
        return;
    }
    let request_id = format!("lt-{}-{id}", std::process::id());
    if args.scenario == Scenario::Batch {
        let mut lines = Vec::with_capacity(args.batch_lines);
        let mut seen = std::collections::HashSet::new();
        while lines.len() < args.batch_lines.min(args.skus * args.warehouses) {
            let index = shared.pick();
            if seen.insert(index) {
                let (s, w) = sku(index, args);
                lines.push(pb::BatchLockLine { candidates: None, sku: s, warehouse_id: w, quantity: "1".into() });
            }
        }
        let request = pb::BatchLockRequest {
            policy: 0,
            lines,
            ttl: None,
            order_id: request_id.clone(),
            request_id: request_id.clone(),
            holder: "loadtest".into(),
            session_id: String::new(),
        };
        let batch = match client.batch_lock(request).await {
            Ok(r) => {
                shared.record(scheduled, "batch_lock", scheduled, Ok(()));
                r.into_inner()
            }
            Err(s) => return shared.record(scheduled, "batch_lock", scheduled, Err(err(s))),
        };
        let started = Instant::now();
        let request = pb::ReleaseRequest {
            batch_id: batch.batch_id,
            request_id: format!("{request_id}-r"),
            ..Default::default()
        };
        let result = client.release(request).await;
        shared.record(scheduled, "release", started, result.map(drop).map_err(err));
        return;
    }
    // The order mix (or a bare Lock that is left to expire).
    let index = shared.pick();
    let (s, w) = sku(index, args);
    let request = pb::LockRequest {
        candidates: None,
        sku: s,
        warehouse_id: w,
        quantity: "1".into(),
        ttl: Some(pbjson_types::Duration {
            seconds: if lock_only(args.scenario) { args.lock_ttl.as_secs() as i64 } else { 60 },
            nanos: 0,
        }),
        order_id: request_id.clone(),
        request_id: request_id.clone(),
        holder: "loadtest".into(),
        session_id: String::new(),
    };
    let lock = match client.lock(request).await {
        Ok(r) => {
            shared.record(scheduled, "lock", scheduled, Ok(()));
            r.into_inner().lock.unwrap_or_default()
        }
        Err(s) => return shared.record(scheduled, "lock", scheduled, Err(err(s))),
    };
    if args.admin_every.is_some() {
        lock.lock_id.clone_into(&mut shared.recent_lock.lock().expect("lock poisoned"));
    }
    if lock_only(args.scenario) {
        shared.completed.fetch_add(1, Ordering::Relaxed);
        return;
    }
    for r in 0..args.renews {
        let started = Instant::now();
        let request = pb::RenewRequest {
            lock_ids: vec![lock.lock_id.clone()],
            holder: "loadtest".into(),
            request_id: format!("{request_id}-n{r}"),
            ..Default::default()
        };
        let result = client.renew(request).await;
        shared.record(scheduled, "renew", started, result.map(drop).map_err(err));
    }
    let started = Instant::now();
    if rand::rng().random_bool(args.commit_ratio.clamp(0.0, 1.0)) {
        let request = pb::CommitRequest {
            lock_id: lock.lock_id,
            holder: "loadtest".into(),
            request_id: format!("{request_id}-c"),
            ..Default::default()
        };
        let result = client.commit(request).await;
        if result.is_ok() {
            shared.committed[index].fetch_add(1, Ordering::Relaxed);
            shared.completed.fetch_add(1, Ordering::Relaxed);
        }
        shared.record(scheduled, "commit", started, result.map(drop).map_err(err));
    } else {
        let request = pb::ReleaseRequest {
            lock_id: lock.lock_id,
            holder: "loadtest".into(),
            request_id: format!("{request_id}-r"),
            ..Default::default()
        };
        let result = client.release(request).await;
        if result.is_ok() {
            shared.completed.fetch_add(1, Ordering::Relaxed);
        }
        shared.record(scheduled, "release", started, result.map(drop).map_err(err));
    }
}

/// Scenarios whose units are one Lock, left to expire.
fn lock_only(scenario: Scenario) -> bool {
    matches!(scenario, Scenario::Lock | Scenario::Wave)
}

/// What operators and dashboards read while orders run (--admin-every):
/// GetLock of a recent lock, a ListLocks page of the hottest SKU, and
/// GetLockStats, once per interval each, until `stop`.
async fn admin_reads(shared: Arc<Shared>, admin: AdminServiceClient<Channel>, every: Duration, stop: Arc<AtomicBool>) {
    let mut client = shared.client();
    let mut admin = admin;
    let (hot_sku, _) = sku(0, &shared.args);
    let mut tick = tokio::time::interval(every);
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let scheduled = Instant::now();
        let lock_id = shared.recent_lock.lock().expect("lock poisoned").clone();
        if !lock_id.is_empty() {
            let result = client.get_lock(pb::GetLockRequest { lock_id }).await;
            shared.record(scheduled, "get_lock", scheduled, result.map(drop).map_err(|s| reason_of(&s)));
        }
        let started = Instant::now();
        let request = pb::ListLocksRequest { sku: hot_sku.clone(), page_size: 100, ..Default::default() };
        let result = client.list_locks(request).await;
        shared.record(scheduled, "list_locks", started, result.map(drop).map_err(|s| reason_of(&s)));
        let started = Instant::now();
        let result = admin.get_lock_stats(pb::GetLockStatsRequest {}).await;
        shared.record(scheduled, "lock_stats", started, result.map(drop).map_err(|s| reason_of(&s)));
    }
}

/// CPU time of a process (utime + stime) from /proc.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = status.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// The machine, for the report; `cores` counted before any pinning.
fn machine(cores: usize, pinned: bool) -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    if pinned {
        format!("{cores} cores ({cpu}): Redis pinned to a core of its own, the service and load generator on the rest")
    } else {
        format!("{cores} cores ({cpu}), service, Redis and load generator on the same machine")
    }
}

/// A spawned service and its Redis.
struct Spawned {
    child: tokio::process::Child,
    redis: EmbeddedRedis,
    target: String,
    command: Vec<String>,
    bin: PathBuf,
    /// The cores of the service and the load generator, with --pin-redis.
    others: Option<String>,
}

async fn spawn_service(args: &RunArgs) -> anyhow::Result<Spawned> {
    let redis = EmbeddedRedis::start(std::path::Path::new("redis-server")).await.context("starting redis-server")?;
    let bin = match &args.stocklock_bin {
        Some(bin) => bin.clone(),
        None => std::env::current_exe()?.with_file_name("stocklock"),
    };
    let free = || std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port());
    let (grpc, http) = (free()?, free()?);
    let mut command: Vec<String> = ["serve", "--redis-url", &redis.url(), "--listen", &format!("127.0.0.1:{grpc}")]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    command.extend(["--http-listen".to_owned(), format!("127.0.0.1:{http}")]);
    command.extend(args.serve_args.split_whitespace().map(str::to_owned));
    let child = start_service(&bin, &command)?;
    let others = if args.pin_redis { Some(pin_redis(&redis)?) } else { None };
    let spawned = Spawned { child, redis, target: format!("http://127.0.0.1:{grpc}"), command, bin, others };
    spawned.pin_service()?;
    Ok(spawned)
}

/// Pins Redis to the last core and this process to the others, which it returns.
fn pin_redis(redis: &EmbeddedRedis) -> anyhow::Result<String> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    ensure!(cores >= 2, "--pin-redis needs 2 cores or more, this machine has {cores}");
    let others = if cores == 2 { "0".to_owned() } else { format!("0-{}", cores - 2) };
    pin(redis.pid().context("redis-server has exited")?, &(cores - 1).to_string())?;
    pin(std::process::id(), &others)?;
    Ok(others)
}

/// Pins every thread of `pid` to `cores` (a taskset list: "0", "0-2"); the
/// threads it starts later inherit it.
fn pin(pid: u32, cores: &str) -> anyhow::Result<()> {
    taskset(&["-a", "-p", "-c", cores, &pid.to_string()])
}

/// Pins the calling thread alone to `core`.
fn pin_this_thread(core: usize) -> anyhow::Result<()> {
    let this = std::fs::read_link("/proc/thread-self").context("reading /proc/thread-self")?;
    let tid = this.file_name().and_then(|n| n.to_str()).context("a thread id")?;
    taskset(&["-p", "-c", &core.to_string(), tid])
}

fn taskset(args: &[&str]) -> anyhow::Result<()> {
    let status = std::process::Command::new("taskset")
        .args(args)
        .stdout(std::process::Stdio::null())
        .status()
        .context("running taskset (util-linux)")?;
    ensure!(status.success(), "taskset {}: {status}", args.join(" "));
    Ok(())
}

fn start_service(bin: &std::path::Path, command: &[String]) -> anyhow::Result<tokio::process::Child> {
    tokio::process::Command::new(bin)
        .args(command)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))
}

impl Spawned {
    /// With --pin-redis, keeps the service off Redis's core.
    fn pin_service(&self) -> anyhow::Result<()> {
        match (&self.others, self.child.id()) {
            (Some(cores), Some(pid)) => pin(pid, cores),
            _ => Ok(()),
        }
    }

    /// Stops the service (its sweeper with it) for `pause`, then starts it
    /// again on the same Redis and addresses.
    async fn pause(&mut self, pause: Duration) -> anyhow::Result<()> {
        self.child.kill().await?;
        tokio::time::sleep(pause).await;
        self.child = start_service(&self.bin, &self.command)?;
        self.pin_service()?;
        connect(&self.target, 1).await?;
        Ok(())
    }
}

async fn connect(target: &str, n: usize) -> anyhow::Result<Vec<Channel>> {
    let mut channels = Vec::new();
    for _ in 0..n.max(1) {
        let endpoint = Channel::from_shared(target.to_owned())?.tcp_nodelay(true).timeout(Duration::from_secs(10));
        let mut last = None;
        for _ in 0..200 {
            match endpoint.connect().await {
                Ok(channel) => {
                    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
                    if health.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await.is_ok() {
                        last = Some(channel);
                        break;
                    }
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        channels.push(last.with_context(|| format!("no stocklock answering at {target}"))?);
    }
    Ok(channels)
}

async fn setup_stock(client: &mut InventoryServiceClient<Channel>, args: &RunArgs) -> anyhow::Result<()> {
    let version = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_micros() as u64;
    for index in 0..args.skus * args.warehouses {
        let (s, w) = sku(index, args);
        let request = pb::SetStockRequest {
            sku: s,
            warehouse_id: w,
            physical: PHYSICAL.to_string(),
            source_version: version,
            ..Default::default()
        };
        client.set_stock(request).await.context("setting up stock")?;
    }
    Ok(())
}

/// Checks that stock adds up: nothing is still locked, and every record's
/// physical stock dropped by exactly what was committed.
async fn check_stock(client: &mut InventoryServiceClient<Channel>, shared: &Shared) -> anyhow::Result<String> {
    let args = &shared.args;
    let records = args.skus * args.warehouses;
    let mut problems = Vec::new();
    for chunk in (0..records).collect::<Vec<_>>().chunks(500) {
        let keys = chunk.iter().map(|i| {
            let (s, w) = sku(*i, args);
            pb::StockKey { sku: s, warehouse_id: w }
        });
        let request = pb::BatchGetAvailabilityRequest { keys: keys.collect() };
        // A fault (a soak's) may be under way: transient errors are retried.
        let mut attempt = 0;
        let response = loop {
            match client.batch_get_availability(request.clone()).await {
                Ok(response) => break response.into_inner(),
                Err(status)
                    if attempt < 50
                        && matches!(status.code(), tonic::Code::Unavailable | tonic::Code::DeadlineExceeded) =>
                {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(status) => return Err(status.into()),
            }
        };
        for (i, record) in chunk.iter().zip(&response.records) {
            let committed = shared.committed[*i].load(Ordering::Relaxed);
            let physical: u64 = record.physical.parse().unwrap_or(0);
            if record.locked != "0" || physical + committed != PHYSICAL || record.available != record.physical {
                problems.push(format!(
                    "{}|{}: physical {} locked {} available {} after {committed} commits",
                    record.sku, record.warehouse_id, record.physical, record.locked, record.available
                ));
            }
        }
    }
    let committed: u64 = shared.committed.iter().map(|c| c.load(Ordering::Relaxed)).sum();
    Ok(if problems.is_empty() {
        format!("ok: {records} records, {committed} committed, nothing left locked, no oversell")
    } else {
        format!("FAILED on {} records, e.g. {}", problems.len(), problems[0])
    })
}

/// `redis-benchmark` of the lock script and of the minimal lock script on
/// the service's Redis: calls per second.
async fn floor(probe: &mut probe::Probe, client: &mut InventoryServiceClient<Channel>) -> anyhow::Result<probe::Floor> {
    let request = pb::SetStockRequest {
        sku: "BENCH".into(),
        warehouse_id: "WH".into(),
        physical: "9000000000000000".into(),
        source_version: 1,
        ..Default::default()
    };
    client.set_stock(request).await?;
    let identity = probe.dataset_identity().await?;
    probe.floor(&lock_benchmark_command(&identity)?).await
}

/// The command line of one Lock of a unit of `BENCH|WH` through the
/// service's own lock script, for `redis-benchmark`: the physical limit of a
/// Lock on this Redis. `__rand_int__` (redis-benchmark's placeholder, with
/// `-r`) stands for the request's digest (ARGV[10] of `lua/lock.lua`), so
/// every call is a new request and does the full work instead of replaying
/// the first one (the digest of the request id would be the same for every
/// call). The script must be loaded (the running service loads it, named
/// for the dataset's `identity`). The service under test runs standalone
/// with the default prefix and one partition.
fn lock_benchmark_command(identity: &str) -> anyhow::Result<Vec<String>> {
    use stocklock::domain::{Holder, LockCommand, LockLine, OrderId, Quantity, RecordKey, RequestId};
    use stocklock::store::redis::{Keys, LockCall, LockLimits};
    let cmd = LockCommand {
        policy: Default::default(),
        lines: vec![LockLine {
            choice: None,
            record: RecordKey::parse_id("BENCH|WH").context("bench record")?,
            quantity: Quantity::parse("1", "quantity")?,
        }],
        ttl: Duration::from_secs(60),
        order_id: OrderId::parse("bench", "order_id")?,
        holder: Holder::parse("redis-benchmark", "holder")?,
        request_id: RequestId::parse("bench-__rand_int__", "request_id")?,
        batch_id: None,
        session: None,
    };
    let limits =
        LockLimits { max_hold_ms: 24 * 3_600_000, retention_ms: 600_000, session_lease_ms: None, one_part: false };
    let generation = LockCall::current_generation(limits.retention_ms);
    let call = LockCall::new(&Keys::new("sl", 1), 0, &cmd, limits, "0badc0de", generation, &[]);
    let mut args = call.args;
    ensure!(args[9].len() == 16, "ARGV[10] of lock.lua is no longer the request's digest");
    args[9] = "__rand_int__".to_owned();
    let mut line = vec!["EVALSHA".to_owned(), LockCall::script_sha(identity), call.keys.len().to_string()];
    line.extend(call.keys);
    line.extend(args);
    Ok(line)
}

/// The wave scenario's set-up: --wave-locks locks on record 0, 64 at a
/// time, each with the TTL that ends at `wave_at`, so they all expire
/// within a millisecond or two of each other.
async fn build_wave(shared: &Arc<Shared>, wave_at: Instant) -> anyhow::Result<()> {
    let args = &shared.args;
    let taken = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let (shared, taken) = (shared.clone(), taken.clone());
        tasks.push(tokio::spawn(async move {
            let mut client = shared.client();
            let (s, w) = sku(0, &shared.args);
            while (taken.fetch_add(1, Ordering::Relaxed) as usize) < shared.args.wave_locks {
                let ttl = wave_at.saturating_duration_since(Instant::now());
                if ttl < Duration::from_secs(2) {
                    bail!("the wave was not built in time: raise --wave-at");
                }
                let id = format!("wave-{}-{}", std::process::id(), shared.next.fetch_add(1, Ordering::Relaxed));
                let request = pb::LockRequest {
                    candidates: None,
                    sku: s.clone(),
                    warehouse_id: w.clone(),
                    quantity: "1".into(),
                    ttl: Some(pbjson_types::Duration {
                        seconds: ttl.as_secs() as i64,
                        nanos: ttl.subsec_nanos() as i32,
                    }),
                    order_id: id.clone(),
                    request_id: id,
                    holder: "loadtest-wave".into(),
                    session_id: String::new(),
                };
                client.lock(request).await.map_err(|s| anyhow::anyhow!("a wave lock failed: {}", reason_of(&s)))?;
            }
            Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    if !args.quiet {
        eprintln!("wave: {} locks on {}|{} expire together", args.wave_locks, sku(0, args).0, sku(0, args).1);
    }
    Ok(())
}

/// How long after `wave_at` record 0 had nothing locked, polled every 50 ms
/// for up to `limit`.
async fn wave_settled(
    mut client: InventoryServiceClient<Channel>,
    args: &RunArgs,
    wave_at: Instant,
    limit: Duration,
) -> Option<Duration> {
    let (s, w) = sku(0, args);
    while wave_at.elapsed() < limit {
        let request = pb::GetAvailabilityRequest { sku: s.clone(), warehouse_id: w.clone() };
        if let Ok(r) = client.get_availability(request).await
            && r.into_inner().records.first().is_some_and(|r| r.locked == "0")
        {
            return Some(wave_at.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

/// Runs one measured phase, open or closed loop.
async fn phase(shared: Arc<Shared>, rate: Option<f64>, concurrency: Option<usize>, total: Duration, quiet: bool) {
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let bar = (!quiet).then(|| {
        let bar = indicatif::ProgressBar::new(total.as_secs());
        bar.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {elapsed_precise} [{bar:40}] {pos}/{len} s {msg}")
                .expect("valid template"),
        );
        bar
    });
    let ticker = {
        let (bar, stop) = (bar.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(250)).await;
                if let Some(bar) = &bar {
                    bar.set_position(started.elapsed().as_secs());
                }
            }
        })
    };
    let mut tasks = Vec::new();
    match (rate, concurrency) {
        (Some(rate), _) => {
            // The pacing thread: wakes at least every 100 us and releases every
            // unit whose instant has come, stamped with that instant. It never
            // spins: on a 2-core box a busy pacer would steal a core from
            // Redis and the service. Dispatch delay counts in the latency.
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
            let interval = Duration::from_secs_f64(1.0 / rate);
            std::thread::spawn(move || {
                let mut due = Instant::now();
                let end = due + total;
                while due < end {
                    let now = Instant::now();
                    while due <= now && due < end {
                        if tx.send(due).is_err() {
                            return;
                        }
                        due += interval;
                    }
                    std::thread::sleep((due.saturating_duration_since(Instant::now())).min(Duration::from_micros(100)));
                }
            });
            while let Some(due) = rx.recv().await {
                tasks.push(tokio::spawn(unit(shared.clone(), due)));
            }
        }
        (None, Some(n)) => {
            let end = started + total;
            for _ in 0..n {
                let shared = shared.clone();
                tasks.push(tokio::spawn(async move {
                    while Instant::now() < end {
                        unit(shared.clone(), Instant::now()).await;
                    }
                }));
            }
        }
        (None, None) => unreachable!("checked by the caller"),
    }
    for task in tasks {
        let _ = task.await;
    }
    stop.store(true, Ordering::Relaxed);
    let _ = ticker.await;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    if args.rate.is_none() && args.concurrency.is_none() && args.sweep.is_empty() && args.scenario != Scenario::Sessions
    {
        bail!("say how to load: --rate N (open loop), --concurrency N (closed loop) or --sweep R1,R2,...");
    }
    if args.wave_pause.is_some() && !args.spawn {
        bail!("--wave-pause stops the service, so it needs --spawn");
    }
    let args = Arc::new(args);
    let machine_cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mut spawned = if args.spawn { Some(spawn_service(&args).await?) } else { None };
    let target = spawned.as_ref().map_or(args.target.clone(), |s| s.target.clone());
    let channels = connect(&target, args.connections).await?;
    let mut admin = InventoryServiceClient::new(channels[0].clone());
    setup_stock(&mut admin, &args).await?;
    let redis_port = spawned.as_ref().map(|s| s.redis.port()).or(args.redis_port);
    if args.scenario == Scenario::Sessions {
        let port = redis_port.context("--scenario sessions reads Redis's figures: give --spawn or --redis-port")?;
        return sessions::run(&channels, &target, port, &args).await;
    }
    let mut probe = match redis_port {
        Some(port) => Some(probe::Probe::connect(port).await?),
        None => None,
    };
    // The standalone service with the default prefix keeps one partition.
    let streams = vec![stocklock::store::redis::Keys::new("sl", 1).events(0)];

    let rates: Vec<Option<f64>> =
        if args.sweep.is_empty() { vec![args.rate] } else { args.sweep.iter().copied().map(Some).collect() };
    let mut reports = Vec::new();
    for rate in rates {
        let records = args.skus * args.warehouses;
        let shared = Arc::new(Shared {
            clients: channels.iter().cloned().map(InventoryServiceClient::new).collect(),
            health: channels.iter().cloned().map(tonic_health::pb::health_client::HealthClient::new).collect(),
            args: args.clone(),
            recorder: Mutex::new(Recorder::default()),
            measure_from: Instant::now() + args.warmup,
            next: AtomicU64::new(0),
            committed: (0..records).map(|_| AtomicU64::new(0)).collect(),
            completed: AtomicU64::new(0),
            recent_lock: Mutex::new(String::new()),
            zipf: Zipf::new(records as f64, args.zipf_s).context("zipf")?,
        });
        let before = match probe.as_mut() {
            Some(probe) => Some(probe.snapshot(&streams).await?),
            None => None,
        };
        let mut shared = shared;
        let mut wave_at = None;
        if args.scenario == Scenario::Wave {
            let at = Instant::now() + args.wave_at;
            build_wave(&shared, at).await?;
            match (args.wave_pause, spawned.as_mut()) {
                (Some(pause), Some(spawned)) => {
                    tokio::time::sleep(at.saturating_duration_since(Instant::now() + Duration::from_secs(1))).await;
                    spawned.pause(pause).await?;
                }
                _ => tokio::time::sleep(at.saturating_duration_since(Instant::now() + args.warmup)).await,
            }
            wave_at = Some(at);
            // The measured phase starts now (its warm-up before the wave when not paused).
            let mut fresh = Arc::try_unwrap(shared).map_err(|_| anyhow::anyhow!("the wave's tasks still run"))?;
            fresh.measure_from = Instant::now() + args.warmup;
            shared = Arc::new(fresh);
        }
        let stalls = match args.stall_probe {
            Some(spin) => {
                let threshold = args.slowlog;
                Some(tokio::task::spawn_blocking(move || probe::stalls(machine_cores, spin, threshold)).await?)
            }
            None => None,
        };
        if let Some(probe) = probe.as_mut() {
            probe.start_slowlog(args.slowlog.as_micros() as u64).await?;
        }
        let (cpu0, service0) =
            (cpu_seconds(std::process::id()), spawned.as_ref().and_then(|s| s.child.id()).and_then(cpu_seconds));
        let service_pid = spawned.as_ref().and_then(|s| s.child.id());
        let stop_admin = Arc::new(AtomicBool::new(false));
        let admin_reads = args.admin_every.map(|every| {
            let client = AdminServiceClient::new(channels[0].clone());
            tokio::spawn(admin_reads(shared.clone(), client, every, stop_admin.clone()))
        });
        let settled = wave_at.map(|at| {
            let client = admin.clone();
            let limit = args.warmup + args.duration + Duration::from_secs(60);
            let args = args.clone();
            tokio::spawn(async move { wave_settled(client, &args, at, limit).await })
        });
        let wall = Instant::now();
        phase(shared.clone(), rate, args.concurrency, args.warmup + args.duration, args.quiet).await;
        let elapsed = wall.elapsed().as_secs_f64();
        stop_admin.store(true, Ordering::Relaxed);
        if let Some(task) = admin_reads {
            let _ = task.await;
        }
        let cores = |before: Option<f64>, pid: Option<u32>| Some((pid.and_then(cpu_seconds)? - before?) / elapsed);
        let slowlog = match probe.as_mut() {
            Some(probe) => Some(probe.slowlog(args.slowlog.as_micros() as u64).await?),
            None => None,
        };
        let recorder = shared.recorder.lock().expect("lock poisoned").clone();
        // Redis memory while the locks of a long-TTL run are still live, or
        // once the orders are done: what a unit of work leaves behind.
        let memory = match (probe.as_mut(), before) {
            (Some(probe), Some(before)) => {
                Some(probe.snapshot(&streams).await?.since(&before, shared.completed.load(Ordering::Relaxed)))
            }
            _ => None,
        };
        let wave = match settled {
            Some(task) => Some(match task.await? {
                Some(after) => format!(
                    "{} locks on one record expired together{}; all of its stock was back {:.1} s after they expired",
                    args.wave_locks,
                    args.wave_pause.map_or(String::new(), |p| format!(
                        " while the service was stopped for {}",
                        humantime::format_duration(p)
                    )),
                    after.as_secs_f64()
                ),
                None => {
                    format!("{} locks on one record expired together; their stock was NOT all back", args.wave_locks)
                }
            }),
            None => None,
        };
        // Let every lock of the lock-only scenarios expire and be swept before
        // the stock check; with a long TTL they are meant to stay (memory).
        let leave_locks = lock_only(args.scenario) && args.lock_ttl > Duration::from_secs(30);
        if lock_only(args.scenario) && !leave_locks {
            tokio::time::sleep(args.lock_ttl + Duration::from_secs(2)).await;
        }
        let mut report = Report {
            scenario: format!("{:?}", args.scenario).to_lowercase(),
            mode: if rate.is_some() { "open loop".into() } else { "closed loop".into() },
            offered_rate: rate,
            concurrency: if rate.is_some() { None } else { args.concurrency },
            duration_s: args.duration.as_secs_f64(),
            ops: Report::summarize(&recorder, args.duration),
            errors: recorder.errors.clone(),
            loadgen_cpu_cores: cores(cpu0, Some(std::process::id())).unwrap_or(0.0),
            service_cpu_cores: cores(service0, service_pid),
            service_rss_mib: service_pid.and_then(rss_mib),
            physical_limit_per_second: None,
            minimal_script_per_second: None,
            slowlog,
            stalls,
            memory,
            wave,
            stock_check: if leave_locks {
                "skipped: the locks are left live (--lock-ttl over 30 s)".into()
            } else {
                check_stock(&mut admin, &shared).await?
            },
            machine: machine(machine_cores, args.pin_redis),
        };
        if args.redis_benchmark {
            let probe = probe.as_mut().context("--redis-benchmark needs --spawn or --redis-port")?;
            let floor = floor(probe, &mut admin).await?;
            report.physical_limit_per_second = Some(floor.lock_script);
            report.minimal_script_per_second = Some(floor.minimal_script);
        }
        print!("{}", report.table());
        if let Some(path) = &args.hdr {
            std::fs::write(path, report::hgrm(&recorder))?;
        }
        if let Some(path) = &args.plot {
            let title = format!("stocklock {} ({}), latency by percentile", report.scenario, report.mode);
            std::fs::write(path, report::plot(&recorder, &title))?;
        }
        reports.push(report);
    }
    if reports.len() > 1 {
        println!("\nsweep: p99 of lock by offered rate");
        for r in &reports {
            let p99 = r.ops.iter().find(|o| o.op == "lock" || o.op == "batch_lock").map_or(0, |o| o.p99_us);
            let mark = if p99 > 1000 { "  <- over 1 ms" } else { "" };
            println!("  {:>8.0}/s  p99 {p99:>6} us{mark}", r.offered_rate.unwrap_or(0.0));
        }
    }
    if let Some(path) = &args.json {
        let value =
            if reports.len() == 1 { serde_json::to_value(&reports[0])? } else { serde_json::to_value(&reports)? };
        std::fs::write(path, serde_json::to_string_pretty(&value)?)?;
    }
    if reports.iter().any(|r| r.stock_check.starts_with("FAILED")) {
        bail!("the stock check failed");
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Run(args) => run(*args).await,
        Command::Compare { a, b } => {
            let read =
                |p: &PathBuf| -> anyhow::Result<Report> { Ok(serde_json::from_str(&std::fs::read_to_string(p)?)?) };
            print!("{}", report::compare(&read(&a)?, &read(&b)?));
            Ok(())
        }
    }
}
