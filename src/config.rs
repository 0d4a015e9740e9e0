//! One typed configuration. Every option is a flag and a `STOCKLOCK_*`
//! environment variable; [`ServeConfig::validate`] checks the options
//! together at start-up so a bad combination stops the process with a clear
//! message instead of failing later.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::edge::telemetry::LogFormat;
use clap::{Args, Parser, Subcommand};

/// The stocklock command line.
#[derive(Debug, Parser)]
#[command(name = "stocklock", version, about = "Inventory locks on Redis, over gRPC")]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gRPC service.
    Serve(Box<ServeConfig>),
    /// Operator commands against a running service.
    Admin(Box<crate::cli::AdminArgs>),
    /// Print the OpenAPI document of the HTTP API (as served at
    /// /openapi.json), for client generators and linters.
    Openapi,
    /// Print a completion script for a shell, e.g.
    /// `stocklock completions bash > /etc/bash_completion.d/stocklock`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page, e.g. `stocklock man | man -l -`.
    Man,
}

/// How the service reaches Redis.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum RedisMode {
    /// One Redis server (or a proxy in front of one primary).
    Standalone,
    /// The primary named by Redis Sentinel, followed across failovers.
    Sentinel,
    /// A Redis Cluster: every partition of the stock lives on one slot.
    Cluster,
}

/// Options of `stocklock serve`.
#[derive(Clone, Debug, Args)]
pub struct ServeConfig {
    /// gRPC listen address.
    #[arg(long, env = "STOCKLOCK_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,

    /// HTTP listen address: availability in JSON, probes, OpenAPI.
    #[arg(long, env = "STOCKLOCK_HTTP_LISTEN", default_value = "127.0.0.1:8080")]
    pub http_listen: SocketAddr,

    /// A plaintext listener that serves only the gRPC health service, for
    /// probes that cannot speak TLS (the kubelet's native gRPC probe).
    #[arg(long, env = "STOCKLOCK_PROBE_LISTEN")]
    pub probe_listen: Option<SocketAddr>,

    /// Redis URL (redis://host:port/db); with `--redis-mode sentinel`, the
    /// sentinels' URLs, with `--redis-mode cluster` some nodes' URLs
    /// (seeds), comma-separated. Without it the service starts a
    /// private redis-server child on a free loopback port, with no
    /// persistence: for trying it out, not for production.
    #[arg(long, env = "STOCKLOCK_REDIS_URL", value_delimiter = ',')]
    pub redis_url: Vec<String>,

    /// How to reach Redis: one server, or the primary that Sentinel names
    /// (followed across failovers).
    #[arg(long, env = "STOCKLOCK_REDIS_MODE", value_enum, default_value = "standalone")]
    pub redis_mode: RedisMode,

    /// How many partitions the stock is spread over; each is one hash slot,
    /// so on a cluster this bounds how many shards share the work. Part of
    /// the data layout: set it once, before the first start (default 1
    /// standalone and with Sentinel, 16 on a cluster).
    #[arg(long, env = "STOCKLOCK_REDIS_PARTITIONS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub redis_partitions: Option<u16>,

    /// With several partitions, claim each request_id for its content in
    /// one key, so that a request_id reused with other content in another
    /// partition is refused (one more round trip per mutating call). Off,
    /// retries are still exactly-once (a retry has the same content, so the
    /// same partition); only that misuse goes unnoticed.
    #[arg(long, env = "STOCKLOCK_REQUEST_ID_CLAIMS", default_value_t = true, action = clap::ArgAction::Set)]
    pub request_id_claims: bool,

    /// The name the sentinels monitor the primary under (`--redis-mode sentinel`).
    #[arg(long, env = "STOCKLOCK_REDIS_MASTER_NAME", default_value = "mymaster")]
    pub redis_master_name: String,

    /// ACL user of the primary found through Sentinel, or of the cluster's
    /// nodes (in standalone mode the URL carries it).
    #[arg(long, env = "STOCKLOCK_REDIS_USERNAME")]
    pub redis_username: Option<String>,

    /// Password of the primary found through Sentinel, or of the cluster's
    /// nodes; prefer the
    /// environment variable (from a Secret) to the flag.
    #[arg(long, env = "STOCKLOCK_REDIS_PASSWORD", hide_env_values = true)]
    pub redis_password: Option<String>,

    /// How often the sentinels are asked for the primary even when no call
    /// failed. A failed call asks at once.
    #[arg(long, env = "STOCKLOCK_REDIS_FAILOVER_POLL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub redis_failover_poll: Duration,

    /// Replicas that must acknowledge each change (Redis WAIT) before the
    /// response calls it durable; 0 turns the wait off. Responses carry the
    /// outcome; a change is never undone for lack of acknowledgements.
    #[arg(long, env = "STOCKLOCK_DURABILITY_REPLICAS", default_value_t = 0)]
    pub durability_replicas: u32,

    /// Longest wait for the replica acknowledgements.
    #[arg(long, env = "STOCKLOCK_DURABILITY_TIMEOUT", default_value = "50ms", value_parser = humantime::parse_duration)]
    pub durability_timeout: Duration,

    /// The redis-server binary for the embedded default.
    #[arg(long, env = "STOCKLOCK_REDIS_SERVER_BIN", default_value = "redis-server")]
    pub redis_server_bin: PathBuf,

    /// Prefix of every Redis key, so environments can share one Redis.
    #[arg(long, env = "STOCKLOCK_KEY_PREFIX", default_value = "sl")]
    pub key_prefix: String,

    /// Upper bound of every Redis call. Past it a call fails with
    /// DEADLINE_EXCEEDED / INV_LOCK_TIMEOUT instead of waiting.
    #[arg(long, env = "STOCKLOCK_STORE_TIMEOUT", default_value = "250ms", value_parser = humantime::parse_duration)]
    pub store_timeout: Duration,

    /// TTL of a lock whose request names none.
    #[arg(long, env = "STOCKLOCK_DEFAULT_TTL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub default_ttl: Duration,

    /// Shortest TTL a request may ask for.
    #[arg(long, env = "STOCKLOCK_MIN_TTL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub min_ttl: Duration,

    /// Longest TTL a request may ask for (per lock or renewal).
    #[arg(long, env = "STOCKLOCK_MAX_TTL", default_value = "1h", value_parser = humantime::parse_duration)]
    pub max_ttl: Duration,

    /// Longest a lock may be held in total, however often it is renewed.
    #[arg(long, env = "STOCKLOCK_MAX_HOLD", default_value = "24h", value_parser = humantime::parse_duration)]
    pub max_hold: Duration,

    /// How long idempotency records (and what ended locks were) are kept.
    #[arg(long, env = "STOCKLOCK_IDEMPOTENCY_RETENTION", default_value = "24h", value_parser = humantime::parse_duration)]
    pub idempotency_retention: Duration,

    /// How often the sweeper returns expired locks' stock. An expired lock
    /// never counts against availability; this bounds how long it stays in
    /// the `locked` figure of a record nobody touches.
    #[arg(long, env = "STOCKLOCK_SWEEP_INTERVAL", default_value = "250ms", value_parser = humantime::parse_duration)]
    pub sweep_interval: Duration,

    /// Most records the sweeper visits per round trip.
    #[arg(long, env = "STOCKLOCK_SWEEP_BATCH", default_value_t = 500)]
    pub sweep_batch: usize,

    /// Most lines in one BatchLock.
    #[arg(long, env = "STOCKLOCK_MAX_BATCH_LINES", default_value_t = 500)]
    pub max_batch_lines: usize,

    /// Most lock ids in one Renew, and pairs in one BatchGetAvailability.
    #[arg(long, env = "STOCKLOCK_MAX_IDS_PER_CALL", default_value_t = 1000)]
    pub max_ids_per_call: usize,

    /// How long SIGTERM waits for in-flight calls before exiting.
    #[arg(long, env = "STOCKLOCK_SHUTDOWN_GRACE", default_value = "10s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,

    /// Runtime threads: 1 runs everything on one thread (often fastest when
    /// Redis shares a small machine), N > 1 uses N worker threads, 0 one per core.
    #[arg(long, env = "STOCKLOCK_WORKER_THREADS", default_value_t = 0)]
    pub worker_threads: usize,

    /// Log format.
    #[arg(long, env = "STOCKLOCK_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// Token file: one `token principal role` per line (roles: service,
    /// reader, operator, admin). Reloaded when it changes. Without it,
    /// authentication is off: for local use only.
    #[arg(long, env = "STOCKLOCK_AUTH_TOKENS")]
    pub auth_tokens: Option<PathBuf>,

    /// PEM certificate chain of the server; with --tls-key turns TLS on.
    #[arg(long, env = "STOCKLOCK_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of the server.
    #[arg(long, env = "STOCKLOCK_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// PEM CA that client certificates must chain to (mutual TLS).
    #[arg(long, env = "STOCKLOCK_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,

    /// How often the invariant auditor checks every stock record (one
    /// replica per interval); 0 turns it off.
    #[arg(long, env = "STOCKLOCK_INVARIANT_CHECK_INTERVAL", default_value = "1m", value_parser = humantime::parse_duration)]
    pub invariant_check_interval: Duration,

    /// How long past its expiry a lock may stay unswept before the auditor
    /// reports it (`late_expiry`).
    #[arg(long, env = "STOCKLOCK_INVARIANT_SWEEP_BOUND", default_value = "30s", value_parser = humantime::parse_duration)]
    pub invariant_sweep_bound: Duration,

    /// Calls running at once; more wait in a short queue (overload protection).
    #[arg(long, env = "STOCKLOCK_MAX_IN_FLIGHT", default_value_t = 64)]
    pub max_in_flight: usize,

    /// Calls waiting for a slot; past this, calls are shed at once with
    /// RESOURCE_EXHAUSTED / OVERLOADED.
    #[arg(long, env = "STOCKLOCK_MAX_QUEUED", default_value_t = 1024)]
    pub max_queued: usize,

    /// Longest wait for a slot before a call is shed (or its own deadline, if sooner).
    #[arg(long, env = "STOCKLOCK_MAX_QUEUE_WAIT", default_value = "25ms", value_parser = humantime::parse_duration)]
    pub max_queue_wait: Duration,

    /// Availability queries each caller may make per second (0 = no limit),
    /// so a scraper cannot slow down locking.
    #[arg(long, env = "STOCKLOCK_QUERY_RATE_LIMIT", default_value_t = 1000)]
    pub query_rate_limit: u32,

    /// Largest request message accepted, in bytes.
    #[arg(long, env = "STOCKLOCK_MAX_REQUEST_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub max_request_bytes: usize,

    /// Locks older than this are stale: listed by ListLocks(stale) and counted.
    #[arg(long, env = "STOCKLOCK_STALE_THRESHOLD", default_value = "15m", value_parser = humantime::parse_duration)]
    pub stale_threshold: Duration,

    /// Let a forced unlock of stale locks only run without a second
    /// operator's approval (still audited).
    #[arg(long, env = "STOCKLOCK_SINGLE_STEP_STALE_UNLOCK")]
    pub single_step_stale_unlock: bool,

    /// How long a forced-unlock request waits for approval before it expires.
    #[arg(long, env = "STOCKLOCK_FORCE_UNLOCK_TTL", default_value = "1h", value_parser = humantime::parse_duration)]
    pub force_unlock_ttl: Duration,

    /// How long lifecycle events are kept in the event streams; older ones
    /// are trimmed. Size Redis for events/s x this x about 100 B.
    #[arg(long, env = "STOCKLOCK_EVENTS_RETENTION", default_value = "1h", value_parser = humantime::parse_duration)]
    pub events_retention: Duration,

    /// A cap on the lifecycle events kept in each partition's stream, whatever their age.
    #[arg(long, env = "STOCKLOCK_EVENTS_MAX_LEN", default_value_t = 1_000_000)]
    pub events_max_len: u64,

    /// Do not consume the stock-change stream on this replica.
    #[arg(long, env = "STOCKLOCK_NO_INGEST")]
    pub no_ingest: bool,

    /// Consumer group of the stock-change stream, shared by every replica.
    #[arg(long, env = "STOCKLOCK_INGEST_GROUP", default_value = "stocklock")]
    pub ingest_group: String,

    /// One replica at a time reads the stream, in order; one that stops
    /// renewing its lease this long is replaced, and what it left
    /// unacknowledged is applied first by the next.
    #[arg(long, env = "STOCKLOCK_INGEST_CLAIM_IDLE", default_value = "30s", value_parser = humantime::parse_duration)]
    pub ingest_claim_idle: Duration,

    /// How long hourly lock-health counters are kept.
    #[arg(long, env = "STOCKLOCK_LOCK_HEALTH_RETENTION", default_value = "30days", value_parser = humantime::parse_duration)]
    pub lock_health_retention: Duration,

    /// A warehouse whose lock success rate stays under this for two
    /// consecutive hours is reported unhealthy (metric and warning).
    #[arg(long, env = "STOCKLOCK_HEALTH_THRESHOLD", default_value_t = 0.999)]
    pub health_threshold: f64,

    /// Hours with fewer attempts than this do not count for the health rule.
    #[arg(long, env = "STOCKLOCK_HEALTH_MIN_ATTEMPTS", default_value_t = 10)]
    pub health_min_attempts: u64,

    /// How often the health rule and the gauges (live locks, ingestion
    /// backlog, sweeper lag) are refreshed.
    #[arg(long, env = "STOCKLOCK_METRICS_REFRESH", default_value = "10s", value_parser = humantime::parse_duration)]
    pub metrics_refresh: Duration,

    /// Most audit events kept in each partition's audit stream; older ones are trimmed.
    #[arg(long, env = "STOCKLOCK_AUDIT_MAX_EVENTS", default_value_t = 1_000_000)]
    pub audit_max_events: u64,

    /// Follow the binlog of this MySQL or MariaDB server
    /// (`mysql://user:password@host:3306/database`; the table is in that
    /// database): its row changes of `--cdc-table` become stock writes.
    #[arg(long, env = "STOCKLOCK_CDC_MYSQL_URL", hide_env_values = true)]
    pub cdc_mysql_url: Option<String>,

    /// The table the binlog follower turns into stock writes.
    #[arg(long, env = "STOCKLOCK_CDC_TABLE", default_value = "stock")]
    pub cdc_table: String,

    /// What a row of `--cdc-table` is: a record's stock (`snapshot`) or one
    /// movement of stock, applied once as a delta (`movement`).
    #[arg(long, env = "STOCKLOCK_CDC_MODE", value_enum, default_value = "snapshot")]
    pub cdc_mode: crate::cdc::Mode,

    /// Which column plays which role, as `role=column,...`. Roles: sku,
    /// warehouse_id, physical (default: the columns of those names),
    /// reserved, in_transit, unit_scale; version (snapshot mode); id (movement
    /// mode, default `id`) and reason (movement mode).
    #[arg(long, env = "STOCKLOCK_CDC_COLUMNS", default_value = "")]
    pub cdc_columns: String,

    /// The unit scale (fractional digits) of the figures, unless a
    /// unit_scale column gives it per row.
    #[arg(long, env = "STOCKLOCK_CDC_UNIT_SCALE", default_value_t = 0)]
    pub cdc_unit_scale: u32,

    /// What a DELETE of a stock row does (snapshot mode): zero the record's
    /// figures, or ignore it.
    #[arg(long, env = "STOCKLOCK_CDC_ON_DELETE", value_enum, default_value = "zero")]
    pub cdc_on_delete: crate::cdc::OnDelete,

    /// The server id the follower registers with, unique among the
    /// database's replicas (and different from the server's own); default:
    /// one derived from the follower's name, so followers of different
    /// tables or deployments differ, and a leader's replacement takes its
    /// place (the server drops a replica's older connection under its id).
    #[arg(long, env = "STOCKLOCK_CDC_SERVER_ID")]
    pub cdc_server_id: Option<u32>,

    /// The follower's name in Redis (its lease, checkpoint and status);
    /// default: `database.table`.
    #[arg(long, env = "STOCKLOCK_CDC_NAME")]
    pub cdc_name: Option<String>,

    /// One replica follows the binlog at a time; one that stops renewing
    /// this lease is replaced by another, which resumes at the checkpoint.
    #[arg(long, env = "STOCKLOCK_CDC_LEASE", default_value = "5s", value_parser = humantime::parse_duration)]
    pub cdc_lease: Duration,

    /// The heartbeat asked of the server on an idle binlog stream; a stream
    /// silent for five is reopened.
    #[arg(long, env = "STOCKLOCK_CDC_HEARTBEAT", default_value = "1s", value_parser = humantime::parse_duration)]
    pub cdc_heartbeat: Duration,
}

impl ServeConfig {
    /// How many partitions the stock is spread over (see `--redis-partitions`).
    pub fn partitions(&self) -> usize {
        let default = if self.redis_mode == RedisMode::Cluster { 16 } else { 1 };
        usize::from(self.redis_partitions.unwrap_or(default))
    }

    /// Checks options that only make sense together.
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("--store-timeout", self.store_timeout),
            ("--min-ttl", self.min_ttl),
            ("--sweep-interval", self.sweep_interval),
            ("--idempotency-retention", self.idempotency_retention),
            ("--events-retention", self.events_retention),
        ];
        for (name, value) in positive {
            if value.is_zero() {
                return Err(format!("{name} must be greater than zero"));
            }
        }
        if self.min_ttl > self.default_ttl || self.default_ttl > self.max_ttl {
            return Err(format!(
                "TTLs must satisfy --min-ttl ({}) <= --default-ttl ({}) <= --max-ttl ({})",
                humantime::format_duration(self.min_ttl),
                humantime::format_duration(self.default_ttl),
                humantime::format_duration(self.max_ttl),
            ));
        }
        if self.max_ttl > self.max_hold {
            return Err(format!(
                "--max-ttl ({}) must not exceed --max-hold ({})",
                humantime::format_duration(self.max_ttl),
                humantime::format_duration(self.max_hold),
            ));
        }
        if self.idempotency_retention < self.max_hold {
            // A lock renewed to its maximum hold is still live when a retry
            // of its Lock could come; the retry must find its record.
            return Err(
                "--idempotency-retention must be at least --max-hold, or a retried Lock could lock again while the first lock is held".into(),
            );
        }
        if self.key_prefix.is_empty()
            || self.key_prefix.contains(['{', '}'])
            || self.key_prefix.chars().any(char::is_whitespace)
        {
            return Err(format!("--key-prefix {:?} must be non-empty, without braces or whitespace", self.key_prefix));
        }
        match (self.redis_mode, self.redis_url.len()) {
            (RedisMode::Standalone, 0 | 1) => {}
            (RedisMode::Standalone, _) => {
                return Err("--redis-url takes one URL unless --redis-mode is sentinel or cluster".into());
            }
            (RedisMode::Sentinel, 0) => {
                return Err("--redis-mode sentinel needs the sentinels' URLs in --redis-url".into());
            }
            (RedisMode::Cluster, 0) => {
                return Err("--redis-mode cluster needs some cluster nodes' URLs in --redis-url".into());
            }
            (RedisMode::Sentinel | RedisMode::Cluster, _) => {}
        }
        if self.redis_mode == RedisMode::Cluster && self.durability_replicas > 0 {
            return Err("--durability-replicas is not supported with --redis-mode cluster: WAIT covers one node, and a cluster spreads the writes over every shard".into());
        }
        if self.max_in_flight == 0 {
            return Err("--max-in-flight must be at least 1".into());
        }
        if self.redis_failover_poll.is_zero() {
            return Err("--redis-failover-poll must be greater than zero".into());
        }
        if self.durability_replicas > 0 && self.durability_timeout.is_zero() {
            return Err("--durability-timeout must be greater than zero when --durability-replicas is set".into());
        }
        if !(0.0..=1.0).contains(&self.health_threshold) {
            return Err(format!("--health-threshold {} must be between 0 and 1", self.health_threshold));
        }
        if self.metrics_refresh.is_zero() {
            return Err("--metrics-refresh must be greater than zero".into());
        }
        if self.force_unlock_ttl.is_zero() || self.stale_threshold.is_zero() {
            return Err("--force-unlock-ttl and --stale-threshold must be greater than zero".into());
        }
        for (name, value) in [
            ("--audit-max-events", usize::try_from(self.audit_max_events).unwrap_or(usize::MAX)),
            ("--max-request-bytes", self.max_request_bytes),
            ("--max-batch-lines", self.max_batch_lines),
            ("--max-ids-per-call", self.max_ids_per_call),
            ("--sweep-batch", self.sweep_batch),
        ] {
            if value == 0 {
                return Err(format!("{name} must be at least 1"));
            }
        }
        self.cdc()?;
        Ok(())
    }

    /// The binlog follower's settings, when `--cdc-mysql-url` asks for one.
    pub fn cdc(&self) -> Result<Option<crate::cdc::Settings>, String> {
        let Some(url) = &self.cdc_mysql_url else {
            return Ok(None);
        };
        let opts = mysql_async::Opts::from_url(url).map_err(|e| format!("--cdc-mysql-url: {e}"))?;
        let (database, table) = match self.cdc_table.split_once('.') {
            Some((database, table)) => (database.to_owned(), table.to_owned()),
            None => (
                opts.db_name()
                    .ok_or("--cdc-mysql-url names no database; add it (mysql://.../shop) or qualify --cdc-table")?
                    .to_owned(),
                self.cdc_table.clone(),
            ),
        };
        if [&database, &table].iter().any(|name| name.is_empty() || name.contains('`')) {
            return Err(format!("--cdc-table {:?} is not a usable table name", self.cdc_table));
        }
        let unit_scale =
            crate::domain::UnitScale::new(self.cdc_unit_scale, "--cdc-unit-scale").map_err(|e| e.to_string())?;
        if self.cdc_lease < Duration::from_millis(300) || self.cdc_heartbeat.is_zero() {
            return Err("--cdc-lease must be at least 300ms and --cdc-heartbeat greater than zero".into());
        }
        if self.cdc_server_id == Some(0) {
            return Err("--cdc-server-id must not be 0: a server refuses a replica without an id".into());
        }
        let mapping = crate::cdc::Mapping {
            mode: self.cdc_mode,
            columns: crate::cdc::Columns::parse(&self.cdc_columns, self.cdc_mode)?,
            database,
            table,
            unit_scale,
            on_delete: self.cdc_on_delete,
        };
        let name = self.cdc_name.clone().unwrap_or_else(|| mapping.qualified());
        Ok(Some(crate::cdc::Settings {
            opts,
            server_id: self.cdc_server_id.unwrap_or_else(|| crate::cdc::server_id_of(&name)),
            name,
            mapping,
            lease: self.cdc_lease,
            heartbeat: self.cdc_heartbeat,
            status_every: Duration::from_secs(1),
        }))
    }

    /// The limits the gRPC edge validates requests against.
    pub fn limits(&self) -> crate::grpc::Limits {
        crate::grpc::Limits {
            default_ttl: self.default_ttl,
            min_ttl: self.min_ttl,
            max_ttl: self.max_ttl,
            max_batch_lines: self.max_batch_lines,
            max_ids_per_call: self.max_ids_per_call,
            stale_threshold: self.stale_threshold,
        }
    }
}

/// The reference tables of `stocklock serve`'s options, in Markdown, made
/// from their clap definitions (flag, variable, default, doc comment): the
/// options of the service, then those of the binlog follower (`--cdc-*`).
/// docs/configuration.md holds them between markers, and a test fails when
/// they differ, so the documentation cannot drift from the flags.
pub fn reference_tables() -> [String; 2] {
    use clap::CommandFactory as _;
    let cli = Cli::command();
    let serve = cli.find_subcommand("serve").expect("serve is a subcommand");
    let mut tables = [String::new(), String::new()];
    for table in &mut tables {
        table.push_str("| Flag | Variable | Default | Meaning |\n|---|---|---|---|\n");
    }
    for arg in serve.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        if long == "help" {
            continue;
        }
        let env = arg.get_env().map_or_else(String::new, |e| format!("`{}`", e.to_string_lossy()));
        let defaults: Vec<String> = arg.get_default_values().iter().map(|v| v.to_string_lossy().into_owned()).collect();
        let default = match defaults.join(",").as_str() {
            _ if matches!(arg.get_action(), clap::ArgAction::SetTrue) => "off".to_owned(),
            "" => "none".to_owned(),
            d => format!("`{d}`"),
        };
        let help = arg.get_long_help().or(arg.get_help()).map(ToString::to_string).unwrap_or_default();
        let mut meaning = help.split_whitespace().collect::<Vec<_>>().join(" ");
        if !meaning.is_empty() && !meaning.ends_with('.') {
            meaning.push('.');
        }
        let values: Vec<String> = arg
            .get_possible_values()
            .iter()
            .filter(|v| !v.is_hide_set())
            .map(|v| format!("`{}`", v.get_name()))
            .collect();
        if arg.get_value_parser().type_id() != clap::builder::ValueParser::bool().type_id() && !values.is_empty() {
            meaning.push_str(&format!(" One of {}.", values.join(", ")));
        }
        let table = &mut tables[usize::from(long.starts_with("cdc-"))];
        table.push_str(&format!("| `--{long}` | {env} | {default} | {} |\n", meaning.replace('|', "\\|")));
    }
    tables
}

#[cfg(test)]
mod tests {
    /// docs/configuration.md's tables are `reference_tables()`, as the
    /// flags define them. `STOCKLOCK_BLESS=1 cargo test --lib config`
    /// rewrites them after a flag changed.
    #[test]
    fn the_configuration_reference_is_the_flags() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/configuration.md");
        let mut doc = std::fs::read_to_string(path).unwrap();
        let bless = std::env::var_os("STOCKLOCK_BLESS").is_some();
        for (n, table) in reference_tables().iter().enumerate() {
            let (begin, end) =
                (format!("<!-- BEGIN GENERATED TABLE {n} -->\n"), format!("<!-- END GENERATED TABLE {n} -->"));
            let from = doc.find(&begin).unwrap_or_else(|| panic!("{path} lacks {begin}")) + begin.len();
            let to = from + doc[from..].find(&end).unwrap_or_else(|| panic!("{path} lacks {end}"));
            if bless {
                doc.replace_range(from..to, table);
            } else {
                assert_eq!(
                    doc[from..to],
                    **table,
                    "{path} differs from the flags: STOCKLOCK_BLESS=1 cargo test --lib config"
                );
            }
        }
        if bless {
            std::fs::write(path, doc).unwrap();
        }
    }

    use super::*;

    fn parse(args: &[&str]) -> ServeConfig {
        let mut argv = vec!["stocklock", "serve"];
        argv.extend_from_slice(args);
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Serve(config) => *config,
            _ => unreachable!("parsed serve"),
        }
    }

    #[test]
    fn defaults_are_valid() {
        parse(&[]).validate().unwrap();
    }

    #[test]
    fn rejects_inconsistent_ttls() {
        let err = parse(&["--default-ttl", "2h"]).validate().unwrap_err();
        assert!(err.contains("--default-ttl"), "{err}");
        assert!(parse(&["--max-ttl", "48h"]).validate().unwrap_err().contains("--max-hold"));
        assert!(parse(&["--key-prefix", "a{b"]).validate().is_err());
        assert!(parse(&["--store-timeout", "0s"]).validate().is_err());
    }

    #[test]
    fn idempotency_records_outlive_the_longest_hold() {
        // A renewed lock lives to --max-hold: a retry of its Lock in that time
        // must still find the record, or it locks a second time.
        let err = parse(&["--max-hold", "48h", "--max-ttl", "1h"]).validate().unwrap_err();
        assert!(err.contains("--idempotency-retention") && err.contains("--max-hold"), "{err}");
        parse(&["--max-hold", "48h", "--idempotency-retention", "48h"]).validate().unwrap();
    }

    #[test]
    fn redis_modes_take_the_urls_they_need() {
        let sentinels = parse(&["--redis-mode", "sentinel", "--redis-url", "redis://a:26379,redis://b:26379"]);
        sentinels.validate().unwrap();
        assert_eq!(sentinels.redis_url.len(), 2);
        let err = parse(&["--redis-mode", "sentinel"]).validate().unwrap_err();
        assert!(err.contains("sentinels"), "{err}");
        let err = parse(&["--redis-url", "redis://a,redis://b"]).validate().unwrap_err();
        assert!(err.contains("one URL"), "{err}");
        let err = parse(&["--durability-replicas", "1", "--durability-timeout", "0s"]).validate().unwrap_err();
        assert!(err.contains("--durability-timeout"), "{err}");
    }
}
