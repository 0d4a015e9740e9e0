//! `stocklock admin`: the operator's command line against a running service.
//!
//! Tables for people by default, `--json` for scripts, and exit codes that
//! scripts can rely on (see [`exit`]). Every error says what to do next.

pub mod heatmap;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Args, Subcommand, ValueEnum};
use serde_json::{Map, Value, json};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic::{Code, Status};
use tonic_types::StatusExt;

use crate::pb;
use crate::pb::admin_service_client::AdminServiceClient;
use crate::pb::inventory_service_client::InventoryServiceClient;

/// Exit codes of `stocklock admin`.
pub mod exit {
    /// Done.
    pub const OK: i32 = 0;
    /// The service refused the request (bad input, a precondition, a conflict).
    pub const REFUSED: i32 = 1;
    /// The command line itself is wrong (clap's own code).
    pub const USAGE: i32 = 2;
    /// What was asked for does not exist.
    pub const NOT_FOUND: i32 = 3;
    /// Missing or bad credentials, or a role that may not do this.
    pub const DENIED: i32 = 4;
    /// The service or its Redis did not answer; retrying may help.
    pub const UNAVAILABLE: i32 = 5;
}

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
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
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
    /// How many live and stale locks there are.
    LockStats,
    /// Forced unlocks: request, approve, reject, list.
    #[command(subcommand)]
    Unlock(UnlockCommand),
    /// The audit trail.
    Audit(AuditArgs),
    /// Lock success rate per warehouse and hour, as a heatmap.
    LockHealth(HealthArgs),
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

/// Adds the bearer token to every call.
#[derive(Clone)]
struct Auth(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for Auth {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(token) = &self.0 {
            request.metadata_mut().insert("authorization", token.clone());
        }
        Ok(request)
    }
}

type Authed = InterceptedService<Channel, Auth>;

/// A failure of the command: what to print and how to exit.
struct Failure {
    code: i32,
    message: String,
    hint: Option<&'static str>,
}

impl Failure {
    fn usage(message: impl Into<String>) -> Self {
        Self { code: exit::USAGE, message: message.into(), hint: None }
    }
}

impl From<Status> for Failure {
    fn from(status: Status) -> Self {
        let reason = status.get_details_error_info().map(|i| i.reason).unwrap_or_default();
        let code = match status.code() {
            Code::NotFound => exit::NOT_FOUND,
            Code::Unauthenticated | Code::PermissionDenied if reason != "TWO_PERSON_RULE" => exit::DENIED,
            Code::Unavailable | Code::DeadlineExceeded | Code::ResourceExhausted => exit::UNAVAILABLE,
            _ => exit::REFUSED,
        };
        let hint = match reason.as_str() {
            "UNAUTHENTICATED" => Some("pass --token (or set STOCKLOCK_TOKEN) with an operator token"),
            "ROLE_NOT_ALLOWED" => Some("this token's role may not do that; use an operator (or admin) token"),
            "TWO_PERSON_RULE" => Some("a colleague has to approve: they run `stocklock admin unlock approve <id>`"),
            "FORCE_UNLOCK_EXPIRED" => Some("the request was not approved in time; request it again"),
            "FORCE_UNLOCK_NOT_PENDING" => Some("see its state with `stocklock admin unlock list`"),
            "NO_LOCKS_MATCHED" => Some("check what the filter selects with `stocklock admin locks ...`"),
            _ if status.code() == Code::Unavailable => Some("is the service running at --addr, and its Redis up?"),
            _ => None,
        };
        let message = if reason.is_empty() {
            format!("{:?}: {}", status.code(), status.message())
        } else {
            format!("{} ({reason})", status.message())
        };
        Self { code, message, hint }
    }
}

/// Runs one admin command; returns the process exit code.
pub async fn run(args: AdminArgs) -> i32 {
    match execute(args).await {
        Ok(()) => exit::OK,
        Err(failure) => {
            eprintln!("error: {}", failure.message);
            if let Some(hint) = failure.hint {
                eprintln!("hint: {hint}");
            }
            failure.code
        }
    }
}

async fn connect(args: &AdminArgs) -> Result<Channel, Failure> {
    let unavailable =
        |e: String| Failure { code: exit::UNAVAILABLE, message: e, hint: Some("is the service running at --addr?") };
    let mut endpoint = Channel::from_shared(args.addr.clone())
        .map_err(|e| Failure::usage(format!("--addr {:?}: {e}", args.addr)))?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30));
    if args.tls_ca.is_some() || args.tls_client_cert.is_some() || args.addr.starts_with("https://") {
        let read = |p: &std::path::Path| {
            std::fs::read(p).map_err(|e| Failure::usage(format!("cannot read {}: {e}", p.display())))
        };
        let mut tls = ClientTlsConfig::new().with_enabled_roots();
        if let Some(ca) = &args.tls_ca {
            tls = tls.ca_certificate(Certificate::from_pem(read(ca)?));
        }
        if let (Some(cert), Some(key)) = (&args.tls_client_cert, &args.tls_client_key) {
            tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        endpoint = endpoint.tls_config(tls).map_err(|e| Failure::usage(format!("TLS: {e}")))?;
    }
    endpoint.connect().await.map_err(|e| unavailable(format!("cannot reach {}: {e}", args.addr)))
}

fn auth(args: &AdminArgs) -> Result<Auth, Failure> {
    match args.token.as_deref().filter(|t| !t.is_empty()) {
        None => Ok(Auth(None)),
        Some(token) => format!("Bearer {token}")
            .parse()
            .map(|v| Auth(Some(v)))
            .map_err(|_| Failure::usage("--token contains characters that cannot travel in a header")),
    }
}

fn request_id() -> String {
    format!("cli-{:016x}", rand::random::<u64>())
}

async fn execute(args: AdminArgs) -> Result<(), Failure> {
    let channel = connect(&args).await?;
    let auth = auth(&args)?;
    let mut inventory = InventoryServiceClient::with_interceptor(channel.clone(), auth.clone());
    let mut admin = AdminServiceClient::with_interceptor(channel, auth);
    let operator = args.operator.clone().unwrap_or_default();
    let out = Output { json: args.json };
    match args.command {
        AdminCommand::Availability { sku, warehouse } => {
            let request = pb::GetAvailabilityRequest { sku, warehouse_id: warehouse.unwrap_or_default() };
            let response = inventory.get_availability(request).await?.into_inner();
            let rows = response.records.iter().map(record_row).collect();
            out.table(
                &["sku", "warehouse", "available", "physical", "reserved", "in_transit", "locked", "oversold", "locks"],
                rows,
            );
            if !args.json {
                println!("total available: {}", response.total_available);
            }
        }
        AdminCommand::Locks(filter) => {
            let limit = filter.limit;
            let locks = list_locks(&mut inventory, filter.into_request(), limit).await?;
            out.table(
                &["lock_id", "quantity", "holder", "order", "age", "expires_in", "batch"],
                locks.iter().map(lock_row).collect(),
            );
        }
        AdminCommand::LockStats => {
            let stats = admin.get_lock_stats(pb::GetLockStatsRequest {}).await?.into_inner();
            let threshold = stats
                .stale_threshold
                .map(|d| humantime::format_duration(Duration::from_secs(d.seconds as u64)).to_string());
            let oldest = stats.oldest_created_at.map(|t| age(&t)).unwrap_or_default();
            out.table(
                &["live", "stale", "stale_threshold", "oldest_age"],
                vec![vec![
                    stats.live_locks.to_string(),
                    stats.stale_locks.to_string(),
                    threshold.unwrap_or_default(),
                    oldest,
                ]],
            );
        }
        AdminCommand::Unlock(command) => unlock(&mut admin, command, operator, &out).await?,
        AdminCommand::Repair { sku, warehouse, reason } => {
            let request =
                pb::RepairRecordRequest { sku, warehouse_id: warehouse, reason, request_id: request_id(), operator };
            let repair = admin.repair_record(request).await?.into_inner();
            let record = repair.record.unwrap_or_default();
            out.table(
                &[
                    "sku",
                    "warehouse",
                    "locked_before",
                    "locked_after",
                    "fixed_expiries",
                    "dropped_expiries",
                    "available",
                ],
                vec![vec![
                    record.sku,
                    record.warehouse_id,
                    repair.locked_before,
                    repair.locked_after,
                    repair.fixed_expiries.to_string(),
                    repair.dropped_expiries.to_string(),
                    record.available,
                ]],
            );
        }
        AdminCommand::Audit(audit) => audit_events(&mut admin, audit, &out).await?,
        AdminCommand::LockHealth(args) => {
            let request = pb::LockHealthRequest {
                since: Some(instant(&args.since, "--since")?),
                until: args.until.as_deref().map(|s| instant(s, "--until")).transpose()?,
                warehouse_id: args.warehouse.unwrap_or_default(),
            };
            let response = admin.lock_health(request).await?.into_inner();
            let map = crate::cli::heatmap::Heatmap::new(&response.cells, response.target);
            if let Some(path) = &args.svg {
                std::fs::write(path, map.svg()).map_err(|e| Failure {
                    code: exit::REFUSED,
                    message: format!("cannot write {}: {e}", path.display()),
                    hint: None,
                })?;
            }
            if out.json {
                let rows = response.cells.iter().map(health_row).collect();
                out.table(
                    &["warehouse", "hour", "attempts", "locked", "failures", "success_rate", "below_target"],
                    rows,
                );
            } else {
                print!("{}", map.terminal(std::io::IsTerminal::is_terminal(&std::io::stdout())));
            }
        }
    }
    Ok(())
}

impl LockFilterArgs {
    fn into_request(self) -> pb::ListLocksRequest {
        pb::ListLocksRequest {
            sku: self.sku.unwrap_or_default(),
            warehouse_id: self.warehouse.unwrap_or_default(),
            order_id: self.order.unwrap_or_default(),
            holder: self.holder.unwrap_or_default(),
            older_than: self.older_than.map(|d| prost_types::Duration { seconds: d.as_secs() as i64, nanos: 0 }),
            stale: self.stale,
            ..Default::default()
        }
    }

    fn is_empty(&self) -> bool {
        self.sku.is_none() && self.order.is_none() && self.holder.is_none() && self.older_than.is_none() && !self.stale
    }
}

async fn list_locks(
    client: &mut InventoryServiceClient<Authed>,
    mut request: pb::ListLocksRequest,
    limit: usize,
) -> Result<Vec<pb::Lock>, Failure> {
    let mut locks = Vec::new();
    loop {
        request.page_size = (limit - locks.len()).min(1000) as u32;
        let page = client.list_locks(request.clone()).await?.into_inner();
        locks.extend(page.locks);
        if page.next_page_token.is_empty() || locks.len() >= limit {
            return Ok(locks);
        }
        request.page_token = page.next_page_token;
    }
}

async fn unlock(
    admin: &mut AdminServiceClient<Authed>,
    command: UnlockCommand,
    operator: String,
    out: &Output,
) -> Result<(), Failure> {
    use pb::lock_selector::Target;
    let request = match command {
        UnlockCommand::Request { lock_id, batch_id, filter, reason } => {
            let target = match (lock_id, batch_id) {
                (Some(id), _) => Target::LockId(id),
                (None, Some(id)) => Target::BatchId(id),
                (None, None) if filter.is_empty() => {
                    return Err(Failure::usage(
                        "say which locks: --lock-id, --batch-id, or filters such as --stale or --order",
                    ));
                }
                (None, None) => Target::Filter(filter.into_request()),
            };
            let request = pb::RequestForceUnlockRequest {
                selector: Some(pb::LockSelector { target: Some(target) }),
                reason,
                request_id: request_id(),
                operator,
            };
            admin.request_force_unlock(request).await?.into_inner().request
        }
        UnlockCommand::Approve { id, comment } => {
            let request = pb::ApproveForceUnlockRequest { id, comment, request_id: request_id(), operator };
            admin.approve_force_unlock(request).await?.into_inner().request
        }
        UnlockCommand::Reject { id, reason } => {
            let request = pb::RejectForceUnlockRequest { id, reason, request_id: request_id(), operator };
            admin.reject_force_unlock(request).await?.into_inner().request
        }
        UnlockCommand::List { state } => {
            let state = state.map_or(pb::ForceUnlockState::Unspecified, |s| match s {
                StateArg::Pending => pb::ForceUnlockState::Pending,
                StateArg::Executed => pb::ForceUnlockState::Executed,
                StateArg::Rejected => pb::ForceUnlockState::Rejected,
                StateArg::Expired => pb::ForceUnlockState::Expired,
            });
            let mut request =
                pb::ListForceUnlockRequestsRequest { state: state.into(), page_size: 1000, ..Default::default() };
            let mut all = Vec::new();
            loop {
                let page = admin.list_force_unlock_requests(request.clone()).await?.into_inner();
                all.extend(page.requests);
                if page.next_page_token.is_empty() {
                    break;
                }
                request.page_token = page.next_page_token;
            }
            out.table(&UNLOCK_COLUMNS, all.iter().map(unlock_row).collect());
            return Ok(());
        }
    };
    let request = request.ok_or_else(|| Failure {
        code: exit::REFUSED,
        message: "the service answered without the request".into(),
        hint: None,
    })?;
    out.table(&UNLOCK_COLUMNS, vec![unlock_row(&request)]);
    if !out.json {
        for item in &request.items {
            println!("  {} {} held by {} for {}", item.lock_id, item.quantity, item.holder, item.order_id);
        }
        if request.state() == pb::ForceUnlockState::Pending {
            println!("next: a colleague approves with `stocklock admin unlock approve {}`", request.id);
        }
    }
    Ok(())
}

const UNLOCK_COLUMNS: [&str; 8] = ["id", "state", "requester", "locks", "reason", "decided_by", "released", "age"];

async fn audit_events(admin: &mut AdminServiceClient<Authed>, args: AuditArgs, out: &Output) -> Result<(), Failure> {
    let mut request = pb::ListAuditEventsRequest {
        since: args.since.as_deref().map(|s| instant(s, "--since")).transpose()?,
        until: args.until.as_deref().map(|s| instant(s, "--until")).transpose()?,
        actor: args.actor.unwrap_or_default(),
        sku: args.sku.unwrap_or_default(),
        action: args.action.unwrap_or_default(),
        page_size: 1000,
        page_token: String::new(),
    };
    let columns = ["at", "action", "actor", "sku", "warehouse", "locks", "reason", "details"];
    let mut shown = 0;
    let mut last_id = String::new();
    loop {
        let page = admin.list_audit_events(request.clone()).await?.into_inner();
        let rows: Vec<Vec<String>> = page.events.iter().take(args.limit - shown).map(event_row).collect();
        shown += rows.len();
        if let Some(event) = page.events.last() {
            last_id = event.id.clone();
        }
        if !rows.is_empty() || !args.follow {
            out.table(&columns, rows);
        }
        if shown >= args.limit {
            return Ok(());
        }
        if !page.next_page_token.is_empty() {
            request.page_token = page.next_page_token;
        } else if args.follow {
            tokio::time::sleep(Duration::from_secs(1)).await;
            request.page_token = last_id.clone();
        } else {
            return Ok(());
        }
    }
}

/// An RFC 3339 instant, or an age ("1h" = an hour ago).
fn instant(text: &str, flag: &str) -> Result<prost_types::Timestamp, Failure> {
    let at = match humantime::parse_duration(text) {
        Ok(age) => SystemTime::now() - age,
        Err(_) => humantime::parse_rfc3339_weak(text)
            .map_err(|_| Failure::usage(format!("{flag} {text:?} is neither an RFC 3339 time nor an age like 1h")))?,
    };
    let since_epoch = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    Ok(prost_types::Timestamp { seconds: since_epoch.as_secs() as i64, nanos: since_epoch.subsec_nanos() as i32 })
}

fn to_system_time(t: &prost_types::Timestamp) -> SystemTime {
    UNIX_EPOCH + Duration::new(t.seconds.max(0) as u64, t.nanos.max(0) as u32)
}

fn age(t: &prost_types::Timestamp) -> String {
    let elapsed = SystemTime::now().duration_since(to_system_time(t)).unwrap_or_default();
    humantime::format_duration(Duration::from_secs(elapsed.as_secs())).to_string()
}

fn time(t: &Option<prost_types::Timestamp>) -> String {
    t.as_ref().map(|t| humantime::format_rfc3339_millis(to_system_time(t)).to_string()).unwrap_or_default()
}

fn record_row(r: &pb::StockRecord) -> Vec<String> {
    vec![
        r.sku.clone(),
        r.warehouse_id.clone(),
        r.available.clone(),
        r.physical.clone(),
        r.reserved.clone(),
        r.in_transit.clone(),
        r.locked.clone(),
        r.oversold.clone(),
        r.live_locks.to_string(),
    ]
}

fn lock_row(l: &pb::Lock) -> Vec<String> {
    let expires_in = l
        .expires_at
        .as_ref()
        .and_then(|t| to_system_time(t).duration_since(SystemTime::now()).ok())
        .map(|d| humantime::format_duration(Duration::from_secs(d.as_secs())).to_string())
        .unwrap_or_else(|| "0s".into());
    vec![
        l.lock_id.clone(),
        l.quantity.clone(),
        l.holder.clone(),
        l.order_id.clone(),
        l.created_at.as_ref().map(age).unwrap_or_default(),
        expires_in,
        l.batch_id.clone(),
    ]
}

fn unlock_row(r: &pb::ForceUnlockRequest) -> Vec<String> {
    let state = match r.state() {
        pb::ForceUnlockState::Pending => "pending",
        pb::ForceUnlockState::Executed if r.single_step => "executed (policy)",
        pb::ForceUnlockState::Executed => "executed",
        pb::ForceUnlockState::Rejected => "rejected",
        pb::ForceUnlockState::Expired => "expired",
        pb::ForceUnlockState::Unspecified => "unknown",
    };
    vec![
        r.id.clone(),
        state.into(),
        r.requester.clone(),
        r.items.len().to_string(),
        r.reason.clone(),
        r.decided_by.clone(),
        r.released_lock_ids.len().to_string(),
        r.created_at.as_ref().map(age).unwrap_or_default(),
    ]
}

fn health_row(c: &pb::LockHealthCell) -> Vec<String> {
    vec![
        c.warehouse_id.clone(),
        time(&c.hour),
        c.attempts.to_string(),
        c.locked.to_string(),
        c.failures.to_string(),
        format!("{:.5}", c.success_rate),
        c.below_target.to_string(),
    ]
}

fn event_row(e: &pb::AuditEvent) -> Vec<String> {
    let mut details: Vec<_> =
        e.details.iter().filter(|(_, v)| !v.is_empty()).map(|(k, v)| format!("{k}={v}")).collect();
    details.sort();
    vec![
        time(&e.at),
        e.action.clone(),
        e.actor.clone(),
        e.sku.clone(),
        e.warehouse_id.clone(),
        e.lock_ids.join(","),
        e.reason.clone(),
        details.join(" "),
    ]
}

/// Prints rows as an aligned table, or as JSON objects (one array per call).
struct Output {
    json: bool,
}

impl Output {
    fn table(&self, columns: &[&str], rows: Vec<Vec<String>>) {
        if self.json {
            let objects: Vec<Value> = rows
                .into_iter()
                .map(|row| {
                    let map: Map<String, Value> =
                        columns.iter().map(|c| (*c).to_owned()).zip(row.into_iter().map(Value::String)).collect();
                    Value::Object(map)
                })
                .collect();
            println!("{}", json!(objects));
            return;
        }
        if rows.is_empty() {
            println!("(none)");
            return;
        }
        let mut widths: Vec<usize> = columns.iter().map(|c| c.len()).collect();
        for row in &rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let line = |cells: Vec<&str>| {
            let padded: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
            println!("{}", padded.join("  ").trim_end());
        };
        line(columns.iter().map(|c| c.to_uppercase()).collect::<Vec<_>>().iter().map(String::as_str).collect());
        for row in &rows {
            line(row.iter().map(String::as_str).collect());
        }
    }
}
