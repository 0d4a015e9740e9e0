//! What the load tool reads off the service's Redis: the slow log over the
//! measured run, Redis memory per order and per lifecycle event, and
//! `redis-benchmark` of the service's lock script beside a minimal lock
//! script, the floor any lock script has to pay on this Redis.

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// A connection to the service's Redis.
pub struct Probe {
    conn: redis::aio::MultiplexedConnection,
    port: u16,
}

/// The slow log of the measured run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SlowLog {
    /// Calls slower than this were logged.
    pub threshold_us: u64,
    /// How many were.
    pub entries: u64,
    /// The slowest few: duration and command.
    pub slowest: Vec<String>,
}

/// Redis memory the measured run left behind, by MEMORY USAGE of its keys.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Memory {
    /// Completed units (orders, or locks for the lock-only scenarios).
    pub units: u64,
    /// Bytes per unit outside the lifecycle event streams.
    pub bytes_per_unit: f64,
    /// Lifecycle events the run added.
    pub events: u64,
    /// Bytes per lifecycle event.
    pub bytes_per_event: f64,
    /// Keys the run added.
    pub keys_added: i64,
    /// What INFO's used_memory grew by (allocator and keyspace overheads included).
    #[serde(default)]
    pub used_memory_added: i64,
}

/// Redis's figures at one instant, for a difference later.
#[derive(Clone, Copy, Debug)]
pub struct Snapshot {
    used: u64,
    streams: u64,
    other: u64,
    events: u64,
    keys: i64,
}

/// `redis-benchmark` figures, calls per second.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct Floor {
    /// The service's own lock script.
    pub lock_script: f64,
    /// A minimal lock script: TIME, HMGET, HINCRBY, HSET, ZADD.
    pub minimal_script: f64,
}

/// The smallest script that takes a lock: read the time and the figures,
/// count the unit, store the lock, index its expiry.
const MINIMAL_LOCK: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local s = redis.call('HMGET', KEYS[1], 'physical', 'locked')
redis.call('HINCRBY', KEYS[1], 'locked', 1)
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[3], now + 60000, ARGV[1])
return s
";

impl Probe {
    pub async fn connect(port: u16) -> anyhow::Result<Self> {
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}/"))?;
        let conn = client.get_multiplexed_async_connection().await.context("connecting to the service's Redis")?;
        Ok(Self { conn, port })
    }

    /// Starts a fresh slow log that keeps every call slower than `threshold_us`.
    pub async fn start_slowlog(&mut self, threshold_us: u64) -> anyhow::Result<()> {
        let () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("slowlog-log-slower-than")
            .arg(threshold_us)
            .arg("slowlog-max-len")
            .arg(1024)
            .query_async(&mut self.conn)
            .await?;
        let () = redis::cmd("SLOWLOG").arg("RESET").query_async(&mut self.conn).await?;
        Ok(())
    }

    /// The identity the service names its scripts for (see
    /// `stocklock::store::redis::dataset_identity`).
    pub async fn dataset_identity(&mut self) -> anyhow::Result<String> {
        let info: String = redis::cmd("INFO").arg("replication").query_async(&mut self.conn).await?;
        Ok(stocklock::store::redis::dataset_identity([info.as_str()]))
    }

    /// The slow log since `start_slowlog`.
    pub async fn slowlog(&mut self, threshold_us: u64) -> anyhow::Result<SlowLog> {
        let entries: u64 = redis::cmd("SLOWLOG").arg("LEN").query_async(&mut self.conn).await?;
        let log: Vec<redis::Value> = redis::cmd("SLOWLOG").arg("GET").arg(1024).query_async(&mut self.conn).await?;
        let mut calls: Vec<(u64, String)> = log.iter().filter_map(slow_call).collect();
        calls.sort_by_key(|c| std::cmp::Reverse(c.0));
        // An EVALSHA is named by its script's file.
        let identity = self.dataset_identity().await?;
        let shas = stocklock::store::redis::RedisStore::script_shas(&identity);
        let named = |command: &str| shas.iter().fold(command.to_owned(), |c, (name, sha)| c.replace(sha, name));
        let slowest = calls.iter().take(5).map(|(us, command)| format!("{us} us: {}", named(command))).collect();
        Ok(SlowLog { threshold_us, entries, slowest })
    }

    /// The bytes of every key (MEMORY USAGE ... SAMPLES 0: exact, and slow
    /// on big keys, so take it outside the slow log's window), split into
    /// the event streams `streams` and the rest, the streams' length, and
    /// the key count. Also INFO's used_memory, for the record.
    pub async fn snapshot(&mut self, streams: &[String]) -> anyhow::Result<Snapshot> {
        let info: String = redis::cmd("INFO").arg("memory").query_async(&mut self.conn).await?;
        let used = info
            .lines()
            .find_map(|l| l.strip_prefix("used_memory:"))
            .and_then(|v| v.trim().parse().ok())
            .context("INFO memory without used_memory")?;
        let (mut stream_bytes, mut other_bytes, mut events, mut keys) = (0, 0, 0, 0);
        let mut cursor = 0u64;
        loop {
            let (next, batch): (u64, Vec<String>) =
                redis::cmd("SCAN").arg(cursor).arg("COUNT").arg(1000).query_async(&mut self.conn).await?;
            let mut pipe = redis::pipe();
            for key in &batch {
                pipe.cmd("MEMORY").arg("USAGE").arg(key).arg("SAMPLES").arg(0);
            }
            let sizes: Vec<Option<u64>> = pipe.query_async(&mut self.conn).await?;
            for (key, size) in batch.iter().zip(sizes) {
                keys += 1;
                if streams.contains(key) {
                    stream_bytes += size.unwrap_or(0);
                    events += redis::cmd("XLEN").arg(key).query_async::<u64>(&mut self.conn).await?;
                } else {
                    other_bytes += size.unwrap_or(0);
                }
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        Ok(Snapshot { used, streams: stream_bytes, other: other_bytes, events, keys })
    }

    /// `redis-benchmark -c 50` of the lock script `lock_command` (an EVALSHA
    /// line) and of the minimal lock script, one after the other.
    pub async fn floor(&mut self, lock_command: &[String]) -> anyhow::Result<Floor> {
        let lock_script = self.benchmark(lock_command).await?;
        let sha: String = redis::cmd("SCRIPT").arg("LOAD").arg(MINIMAL_LOCK).query_async(&mut self.conn).await?;
        let () = redis::cmd("HSET")
            .arg("bench:{m}:stock")
            .arg("physical")
            .arg(1_000_000_000)
            .arg("locked")
            .arg(0)
            .query_async(&mut self.conn)
            .await?;
        let minimal: Vec<String> = [
            "EVALSHA",
            &sha,
            "3",
            "bench:{m}:stock",
            "bench:{m}:locks",
            "bench:{m}:exp",
            "__rand_int__",
            "1|1733000000000|1733086400000|60000|redis-benchmark|bench|0badc0de|",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        let minimal_script = self.benchmark(&minimal).await;
        let () = redis::cmd("UNLINK")
            .arg("bench:{m}:stock")
            .arg("bench:{m}:locks")
            .arg("bench:{m}:exp")
            .query_async(&mut self.conn)
            .await?;
        Ok(Floor { lock_script, minimal_script: minimal_script? })
    }

    async fn benchmark(&self, command: &[String]) -> anyhow::Result<f64> {
        let output = tokio::process::Command::new("redis-benchmark")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-c",
                "50",
                "-n",
                "200000",
                "-r",
                "1000000000",
                "-q",
            ])
            .args(command)
            .output()
            .await
            .context("running redis-benchmark (apt-get install redis-tools)")?;
        let text = String::from_utf8_lossy(&output.stdout);
        text.split_whitespace()
            .collect::<Vec<_>>()
            .windows(2)
            .find(|w| w[1] == "requests")
            .and_then(|w| w[0].parse::<f64>().ok())
            .with_context(|| format!("unexpected redis-benchmark output: {text}"))
    }
}

impl Snapshot {
    /// What `self` (later) added over `before`, per unit and per event.
    pub fn since(&self, before: &Snapshot, units: u64) -> Memory {
        let events = self.events.saturating_sub(before.events);
        let stream_bytes = self.streams as f64 - before.streams as f64;
        let other = self.other as f64 - before.other as f64;
        Memory {
            units,
            bytes_per_unit: if units > 0 { other / units as f64 } else { 0.0 },
            events,
            bytes_per_event: if events > 0 { stream_bytes / events as f64 } else { 0.0 },
            keys_added: self.keys - before.keys,
            used_memory_added: self.used as i64 - before.used as i64,
        }
    }
}

/// One slow-log entry as (duration µs, the command's first words).
fn slow_call(entry: &redis::Value) -> Option<(u64, String)> {
    let redis::Value::Array(fields) = entry else { return None };
    let us = match fields.get(2)? {
        redis::Value::Int(us) => u64::try_from(*us).ok()?,
        _ => return None,
    };
    let redis::Value::Array(args) = fields.get(3)? else { return None };
    let words: Vec<String> = args
        .iter()
        .take(4)
        .map(|a| match a {
            redis::Value::BulkString(b) => String::from_utf8_lossy(b).chars().take(48).collect(),
            redis::Value::SimpleString(s) => s.clone(),
            other => format!("{other:?}"),
        })
        .collect();
    Some((us, words.join(" ")))
}

/// How often this machine stops a running thread for longer than a slow-log
/// threshold while nothing else runs: hypervisor steal and interrupts that no
/// work of Redis's causes, and that Redis's slow log counts all the same.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Stalls {
    /// Pauses longer than this were counted.
    pub threshold_us: u64,
    /// Spinning threads, one per core.
    pub threads: usize,
    /// How long each spun.
    pub seconds: f64,
    /// Pauses over the threshold, all threads together.
    pub pauses: u64,
    /// The longest pause.
    pub max_us: u64,
}

/// Spins one thread per core for `spin` and counts the gaps between two
/// readings of the clock that exceed `threshold` (as `redis-cli
/// --intrinsic-latency` does for one thread): the floor of the slow log on
/// this machine. Run it while the machine is otherwise idle.
pub fn stalls(threads: usize, spin: std::time::Duration, threshold: std::time::Duration) -> Stalls {
    let spinners: Vec<_> = (0..threads.max(1))
        .map(|core| {
            std::thread::spawn(move || {
                // Each spinner on a core of its own; where that fails, it
                // spins wherever it runs.
                let _ = crate::pin_this_thread(core);
                let start = std::time::Instant::now();
                let (mut last, mut pauses, mut max) = (start, 0u64, std::time::Duration::ZERO);
                while last - start < spin {
                    let now = std::time::Instant::now();
                    let gap = now - last;
                    if gap > threshold {
                        pauses += 1;
                    }
                    max = max.max(gap);
                    last = now;
                }
                (pauses, max)
            })
        })
        .collect();
    let (mut pauses, mut max) = (0, std::time::Duration::ZERO);
    for spinner in spinners {
        let (p, m) = spinner.join().expect("a spinning thread panicked");
        pauses += p;
        max = max.max(m);
    }
    Stalls {
        threshold_us: threshold.as_micros() as u64,
        threads: threads.max(1),
        seconds: spin.as_secs_f64(),
        pauses,
        max_us: max.as_micros() as u64,
    }
}
