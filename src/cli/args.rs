//! The command line of `stocklock admin`: its options and commands.

use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};

use crate::pb;

/// Options of `stocklock admin`.
#[derive(Debug, Args)]
pub struct AdminArgs {
    /// The service's gRPC address.
    #[arg(long, env = "STOCKLOCK_ADDR", default_value = "http://127.0.0.1:50051", global = true)]
    pub addr: String,
    /// Bearer token (operator role, or admin).
    #[arg(long, env = "STOCKLOCK_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// Your name, when the service runs without authentication.
    #[arg(long, env = "STOCKLOCK_OPERATOR", global = true)]
    pub operator: Option<String>,
    /// CA certificate (PEM) to trust the service's TLS certificate with.
    #[arg(long, env = "STOCKLOCK_TLS_CA", global = true)]
    pub tls_ca: Option<std::path::PathBuf>,
    /// Client certificate (PEM), for mutual TLS.
    #[arg(long, env = "STOCKLOCK_TLS_CLIENT_CERT", requires = "tls_client_key", global = true)]
    pub tls_client_cert: Option<std::path::PathBuf>,
    /// Client key (PEM), for mutual TLS.
    #[arg(long, env = "STOCKLOCK_TLS_CLIENT_KEY", global = true)]
    pub tls_client_key: Option<std::path::PathBuf>,
    /// Print the service's answers as JSON (the protobuf JSON mapping, as
    /// the HTTP API writes them) instead of tables; `audit --follow` prints
    /// one event per line (NDJSON).
    #[arg(long, global = true)]
    pub json: bool,
    /// How long a call may take before the command gives up (exit code 5).
    #[arg(long, env = "STOCKLOCK_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration, global = true)]
    pub timeout: Duration,
    /// What to do.
    #[command(subcommand)]
    pub command: AdminCommand,
}

/// The operator's commands.
#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Availability of a SKU, in one warehouse or all.
    Availability {
        /// The SKU.
        sku: String,
        /// Only this warehouse.
        #[arg(long)]
        warehouse: Option<String>,
    },
    /// Live locks, filtered.
    Locks(LockFilterArgs),
    /// One lock by id; for an ended one, how it ended.
    GetLock {
        /// The lock id, as Lock returned it.
        lock_id: String,
    },
    /// How many live and stale locks there are.
    LockStats,
    /// Forced unlocks: request, approve, reject, list.
    #[command(subcommand)]
    Unlock(UnlockCommand),
    /// The audit trail.
    Audit(AuditArgs),
    /// Lock success rate per warehouse and hour, as a heatmap.
    LockHealth(HealthArgs),
    /// Stock changes that could not be applied (the dead-letter stream),
    /// newest first, with why.
    DeadLetters {
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Mend a record the invariant auditor reports: `locked` from its live
    /// locks, and its expiry index (audited as record.repair).
    Repair {
        /// The SKU.
        #[arg(long)]
        sku: String,
        /// The warehouse.
        #[arg(long)]
        warehouse: String,
        /// Why: kept in the audit trail.
        #[arg(long)]
        reason: String,
    },
}

/// Options of the lock-health heatmap.
#[derive(Debug, Args)]
pub struct HealthArgs {
    /// From this time: an RFC 3339 instant, or an age such as 24h.
    #[arg(long, default_value = "24h")]
    pub since: String,
    /// Up to this time: an RFC 3339 instant, or an age.
    #[arg(long)]
    pub until: Option<String>,
    /// Only this warehouse.
    #[arg(long)]
    pub warehouse: Option<String>,
    /// Also write the heatmap as an SVG file.
    #[arg(long)]
    pub svg: Option<std::path::PathBuf>,
}

/// Filters that select locks.
#[derive(Debug, Default, Args)]
pub struct LockFilterArgs {
    /// Only this SKU.
    #[arg(long)]
    pub sku: Option<String>,
    /// Only this warehouse (with --sku).
    #[arg(long)]
    pub warehouse: Option<String>,
    /// Only this order.
    #[arg(long)]
    pub order: Option<String>,
    /// Only this holder.
    #[arg(long)]
    pub holder: Option<String>,
    /// Only locks at least this old, e.g. 30m.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub older_than: Option<Duration>,
    /// Only stale locks (older than the service's stale threshold).
    #[arg(long)]
    pub stale: bool,
    /// Show at most this many.
    #[arg(long, default_value_t = 1000)]
    pub limit: usize,
}

/// Forced-unlock commands.
#[derive(Debug, Subcommand)]
pub enum UnlockCommand {
    /// Ask for locks to be force-released; a colleague approves.
    Request {
        /// One lock.
        #[arg(long, conflicts_with = "batch_id")]
        lock_id: Option<String>,
        /// Every lock of a batch.
        #[arg(long)]
        batch_id: Option<String>,
        /// Or every lock matching these filters.
        #[command(flatten)]
        filter: LockFilterArgs,
        /// Why: kept in the audit trail.
        #[arg(long)]
        reason: String,
    },
    /// Approve a colleague's request: the locks are released now.
    Approve {
        /// The request id (fu-...).
        id: String,
        /// A comment for the audit trail.
        #[arg(long, default_value = "")]
        comment: String,
    },
    /// Reject (or withdraw) a pending request.
    Reject {
        /// The request id (fu-...).
        id: String,
        /// Why: kept in the audit trail.
        #[arg(long)]
        reason: String,
    },
    /// List requests, newest first.
    List {
        /// Only this state.
        #[arg(long, value_enum)]
        state: Option<StateArg>,
    },
}

/// A forced-unlock state on the command line.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum StateArg {
    /// Waiting for approval.
    Pending,
    /// Released.
    Executed,
    /// Rejected or withdrawn.
    Rejected,
    /// Not decided in time.
    Expired,
}

/// Filters of the audit trail.
#[derive(Debug, Args)]
pub struct AuditArgs {
    /// From this time: an RFC 3339 instant, or an age such as 1h.
    #[arg(long)]
    pub since: Option<String>,
    /// Up to this time: an RFC 3339 instant, or an age such as 10m.
    #[arg(long)]
    pub until: Option<String>,
    /// Only this actor.
    #[arg(long)]
    pub actor: Option<String>,
    /// Only this SKU.
    #[arg(long)]
    pub sku: Option<String>,
    /// Only this action, e.g. force_unlock.approved.
    #[arg(long)]
    pub action: Option<String>,
    /// Show at most this many.
    #[arg(long, default_value_t = 1000)]
    pub limit: usize,
    /// Keep printing new events as they come.
    #[arg(long)]
    pub follow: bool,
}

impl LockFilterArgs {
    pub(super) fn into_request(self) -> pb::ListLocksRequest {
        pb::ListLocksRequest {
            sku: self.sku.unwrap_or_default(),
            warehouse_id: self.warehouse.unwrap_or_default(),
            order_id: self.order.unwrap_or_default(),
            holder: self.holder.unwrap_or_default(),
            older_than: self.older_than.map(|d| pbjson_types::Duration { seconds: d.as_secs() as i64, nanos: 0 }),
            stale: self.stale,
            ..Default::default()
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.sku.is_none() && self.order.is_none() && self.holder.is_none() && self.older_than.is_none() && !self.stale
    }
}
