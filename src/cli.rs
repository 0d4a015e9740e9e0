//! `stocklock admin`: the operator's command line against a running service.
//!
//! Tables for people by default, `--json` for scripts, and exit codes that
//! scripts can rely on (see [`exit`]). Every error says what to do next.

mod args;
pub mod heatmap;
mod output;

pub use self::args::{AdminArgs, AdminCommand, AuditArgs, HealthArgs, LockFilterArgs, StateArg, UnlockCommand};
use self::output::*;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic::{Code, Status};
use tonic_types::StatusExt;

use crate::domain::reason;
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
            Code::Unauthenticated | Code::PermissionDenied if reason != reason::TWO_PERSON_RULE => exit::DENIED,
            // Cancelled: the client's own --timeout passed.
            Code::Unavailable | Code::DeadlineExceeded | Code::ResourceExhausted | Code::Cancelled => exit::UNAVAILABLE,
            _ => exit::REFUSED,
        };
        let hint = match reason.as_str() {
            reason::UNAUTHENTICATED => Some("pass --token (or set STOCKLOCK_TOKEN) with an operator token"),
            reason::ROLE_NOT_ALLOWED => Some("this token's role may not do that; use an operator (or admin) token"),
            reason::TWO_PERSON_RULE => {
                Some("a colleague has to approve: they run `stocklock admin unlock approve <id>`")
            }
            reason::FORCE_UNLOCK_EXPIRED => Some("the request was not approved in time; request it again"),
            reason::FORCE_UNLOCK_NOT_PENDING => Some("see its state with `stocklock admin unlock list`"),
            reason::NO_LOCKS_MATCHED => Some("check what the filter selects with `stocklock admin locks ...`"),
            _ if status.code() == Code::Unavailable => Some("is the service running at --addr, and its Redis up?"),
            _ if status.code() == Code::Cancelled => {
                Some("no answer within --timeout: is the service or its Redis slow?")
            }
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
        .timeout(args.timeout);
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
            out.show(
                &response,
                &["sku", "warehouse", "available", "physical", "reserved", "in_transit", "locked", "oversold", "locks"],
                || response.records.iter().map(record_row).collect(),
            );
            if !args.json {
                println!("total available: {}", response.total_available);
            }
        }
        AdminCommand::Locks(filter) => {
            let limit = filter.limit;
            let locks = list_locks(&mut inventory, filter.into_request(), limit).await?;
            out.show(&locks, &["lock_id", "quantity", "holder", "order", "age", "expires_in", "batch"], || {
                locks.iter().map(lock_row).collect()
            });
        }
        AdminCommand::GetLock { lock_id } => {
            let lock = inventory.get_lock(pb::GetLockRequest { lock_id }).await?.into_inner().lock.unwrap_or_default();
            out.show(&lock, &["lock_id", "quantity", "holder", "order", "age", "expires_in", "batch"], || {
                vec![lock_row(&lock)]
            });
        }
        AdminCommand::LockStats => {
            let stats = admin.get_lock_stats(pb::GetLockStatsRequest {}).await?.into_inner();
            let threshold = stats
                .stale_threshold
                .map(|d| humantime::format_duration(Duration::from_secs(d.seconds as u64)).to_string());
            let oldest = stats.oldest_created_at.map(|t| age(&t)).unwrap_or_default();
            out.show(&stats, &["live", "stale", "stale_threshold", "oldest_age"], || {
                vec![vec![
                    stats.live_locks.to_string(),
                    stats.stale_locks.to_string(),
                    threshold.unwrap_or_default(),
                    oldest,
                ]]
            });
        }
        AdminCommand::Unlock(command) => unlock(&mut admin, command, operator, &out).await?,
        AdminCommand::Repair { sku, warehouse, reason } => {
            let request =
                pb::RepairRecordRequest { sku, warehouse_id: warehouse, reason, request_id: request_id(), operator };
            let repair = admin.repair_record(request).await?.into_inner();
            let record = repair.record.clone().unwrap_or_default();
            out.show(
                &repair,
                &[
                    "sku",
                    "warehouse",
                    "locked_before",
                    "locked_after",
                    "fixed_expiries",
                    "dropped_expiries",
                    "available",
                ],
                || {
                    vec![vec![
                        record.sku,
                        record.warehouse_id,
                        repair.locked_before.clone(),
                        repair.locked_after.clone(),
                        repair.fixed_expiries.to_string(),
                        repair.dropped_expiries.to_string(),
                        record.available,
                    ]]
                },
            );
        }
        AdminCommand::Audit(audit) => audit_events(&mut admin, audit, &out).await?,
        AdminCommand::DeadLetters { limit } => {
            let mut request = pb::ListDeadLettersRequest::default();
            let mut letters = Vec::new();
            while letters.len() < limit {
                // Pages of 200: a letter carries a whole row, and a page must
                // stay under the client's 4 MiB message limit.
                request.page_size = (limit - letters.len()).min(200) as u32;
                let page = admin.list_dead_letters(request.clone()).await?.into_inner();
                letters.extend(page.letters);
                if page.next_page_token.is_empty() {
                    break;
                }
                request.page_token = page.next_page_token;
            }
            out.show(&letters, &["at", "reason", "error", "change"], || letters.iter().map(letter_row).collect());
        }
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
                out.show(&response, &[], Vec::new);
            } else {
                print!("{}", map.terminal(std::io::IsTerminal::is_terminal(&std::io::stdout())));
            }
        }
    }
    Ok(())
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
            out.show(&all, &UNLOCK_COLUMNS, || all.iter().map(unlock_row).collect());
            return Ok(());
        }
    };
    let request = request.ok_or_else(|| Failure {
        code: exit::REFUSED,
        message: "the service answered without the request".into(),
        hint: None,
    })?;
    out.show(&request, &UNLOCK_COLUMNS, || vec![unlock_row(&request)]);
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
        let events = &page.events[..page.events.len().min(args.limit - shown)];
        shown += events.len();
        if let Some(event) = page.events.last() {
            last_id = event.id.clone();
        }
        if args.follow && out.json {
            // A stream, for `| jq` or a log shipper: one event per line.
            for event in events {
                out.show(event, &[], Vec::new);
            }
        } else if !events.is_empty() || !args.follow {
            out.show(events, &columns, || events.iter().map(event_row).collect());
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
fn instant(text: &str, flag: &str) -> Result<pbjson_types::Timestamp, Failure> {
    let at = match humantime::parse_duration(text) {
        Ok(age) => SystemTime::now() - age,
        Err(_) => humantime::parse_rfc3339_weak(text)
            .map_err(|_| Failure::usage(format!("{flag} {text:?} is neither an RFC 3339 time nor an age like 1h")))?,
    };
    let since_epoch = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    Ok(pbjson_types::Timestamp { seconds: since_epoch.as_secs() as i64, nanos: since_epoch.subsec_nanos() as i32 })
}
