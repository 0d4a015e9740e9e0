//! The HTTP listener: availability and the lock API in JSON for the
//! transfer system (see [`locks`]), the OpenAPI description of it, probes,
//! and ingestion statistics.
//!
//! It applies the same validation, error reasons, authentication and rate
//! limits as the gRPC API: a request becomes the same domain call, and an
//! error becomes the same status, rendered as JSON with the conventional
//! HTTP code.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Json;
use axum::extract::{ConnectInfo, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tonic::Code;
use tonic_types::StatusExt;

use crate::domain::{AdminStore, BinlogState, BinlogStatus, Error, RecordKey, Sku, StockView, WarehouseId};
use crate::edge::auth::{Access, Principal};
use crate::grpc::{InventoryApi, convert};
use crate::pb;

pub mod locks;

/// The permission an availability query needs: the same as the gRPC call.
const QUERY_PERMISSION: &str = "/stocklock.v1.InventoryService/BatchGetAvailability";

/// The permission ingestion statistics need: operators'.
const STATS_PERMISSION: &str = "/stocklock.v1.AdminService/GetLockStats";

/// What the handlers share.
pub struct HttpState<S> {
    /// The store.
    pub store: Arc<S>,
    /// Authentication and rate limits.
    pub access: Arc<Access>,
    /// True while Redis answers and the scripts are loaded.
    pub ready: Arc<AtomicBool>,
    /// Most SKUs in one query.
    pub max_skus: usize,
    /// The ingestion consumer group, for its statistics.
    pub ingest_group: String,
    /// The binlog follower's name, when one is configured, for its status.
    pub binlog: Option<String>,
    /// The gRPC inventory service, which the lock routes call in process.
    pub inventory: Arc<InventoryApi<S>>,
    /// The gRPC server's admission (concurrency limit and queue), which the
    /// lock routes take a slot of too.
    pub admission: Arc<crate::edge::admission::Admission>,
    /// Largest request body.
    pub max_request_bytes: usize,
}

// Derived Clone would ask S to be Clone; only the Arc is cloned.
impl<S> Clone for HttpState<S> {
    fn clone(&self) -> Self {
        Self {
            inventory: self.inventory.clone(),
            admission: self.admission.clone(),
            max_request_bytes: self.max_request_bytes,
            store: self.store.clone(),
            access: self.access.clone(),
            ready: self.ready.clone(),
            max_skus: self.max_skus,
            ingest_group: self.ingest_group.clone(),
            binlog: self.binlog.clone(),
        }
    }
}

/// The routes.
pub fn router<S: AdminStore + BinlogState>(state: HttpState<S>) -> axum::Router {
    axum::Router::new()
        .route("/stock/available", get(available::<S>))
        .route("/stock/lock", post(locks::lock::<S>))
        .route("/stock/lock/batch", post(locks::batch_lock::<S>))
        .route("/stock/lock/renew", post(locks::renew::<S>))
        .route("/stock/lock/release", post(locks::release::<S>))
        .route("/stock/lock/commit", post(locks::commit::<S>))
        .route("/stock/lock/transfer", post(locks::transfer_lock::<S>))
        .route("/stock/locks/{lock_id}", get(locks::get_lock::<S>))
        .route("/ingest/stats", get(ingest_stats::<S>))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz::<S>))
        .route("/openapi.json", get(|| async { Json(openapi()) }))
        .layer(axum::extract::DefaultBodyLimit::max(state.max_request_bytes))
        .with_state(state)
}

/// The OpenAPI document of this listener, generated from its handlers and
/// the types they carry (served at `/openapi.json`).
pub fn openapi() -> utoipa::openapi::OpenApi {
    use utoipa::OpenApi as _;
    ApiDoc::openapi()
}

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "stocklock HTTP API",
        description = "Availability and the lock API for the transfer system, probes, and ingestion statistics. \
            Bodies are the gRPC messages of package stocklock.v1 in the protobuf JSON mapping, with the field \
            names of the proto. The same validation, error reasons, idempotency, authentication \
            (Authorization: Bearer <token>) and rate limits as the gRPC API."
    ),
    paths(
        available,
        locks::lock,
        locks::batch_lock,
        locks::renew,
        locks::release,
        locks::commit,
        locks::transfer_lock,
        locks::get_lock,
        ingest_stats,
        healthz,
        readyz
    ),
    servers(
        (url = "http://127.0.0.1:8080", description = "The default --http-listen (`make run`)"),
        (url = "{scheme}://{host}:{port}", description = "A deployment",
            variables(
                ("scheme" = (default = "https", enum_values("https", "http"))),
                ("host" = (default = "stocklock")),
                ("port" = (default = "8080"))
            )
        )
    ),
    components(schemas(ErrorDetail)),
    security(("bearer" = [])),
    modifiers(&BearerTokens)
)]
struct ApiDoc;

/// The failures of the lock routes, each HTTP code with the gRPC codes it
/// stands for (see `http_code`).
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
pub enum LockErrors {
    /// INVALID_ARGUMENT: a field is malformed or out of bounds (`field` names it). Nothing changed.
    #[response(status = 400)]
    BadRequest(#[to_schema] ErrorBody),
    /// UNAUTHENTICATED: the bearer token is missing or unknown.
    #[response(status = 401)]
    Unauthorized(#[to_schema] ErrorBody),
    /// PERMISSION_DENIED: the caller's role may not call this, or the lock is another holder's.
    #[response(status = 403)]
    Forbidden(#[to_schema] ErrorBody),
    /// NOT_FOUND: no such record, lock, batch or session.
    #[response(status = 404)]
    NotFound(#[to_schema] ErrorBody),
    /// FAILED_PRECONDITION, ALREADY_EXISTS, ABORTED: e.g. INSUFFICIENT_STOCK, LOCK_EXPIRED,
    /// IDEMPOTENCY_KEY_REUSED, REQUEST_IN_PROGRESS (`reason` says which). Nothing changed.
    #[response(status = 409)]
    Conflict(#[to_schema] ErrorBody),
    /// RESOURCE_EXHAUSTED: OVERLOADED or RATE_LIMITED (retry after the Retry-After header),
    /// or STORE_OUT_OF_MEMORY. Not started.
    #[response(status = 429)]
    TooManyRequests(#[to_schema] ErrorBody),
    /// INTERNAL: a bug; the detail is in the service's log.
    #[response(status = 500)]
    Internal(#[to_schema] ErrorBody),
    /// UNAVAILABLE: Redis is unreachable, loading or failing over. Retry with the same request_id.
    #[response(status = 503)]
    Unavailable(#[to_schema] ErrorBody),
    /// DEADLINE_EXCEEDED: INV_LOCK_TIMEOUT, Redis did not answer in time; the change may or may
    /// not have happened: retry with the same request_id.
    #[response(status = 504)]
    Timeout(#[to_schema] ErrorBody),
}

/// The failures of the read routes (availability, statistics).
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
pub enum ReadErrors {
    /// INVALID_ARGUMENT: a parameter is malformed or out of bounds (`field` names it).
    #[response(status = 400)]
    BadRequest(#[to_schema] ErrorBody),
    /// UNAUTHENTICATED: the bearer token is missing or unknown.
    #[response(status = 401)]
    Unauthorized(#[to_schema] ErrorBody),
    /// PERMISSION_DENIED: the caller's role may not call this.
    #[response(status = 403)]
    Forbidden(#[to_schema] ErrorBody),
    /// RESOURCE_EXHAUSTED: RATE_LIMITED (retry after the Retry-After header).
    #[response(status = 429)]
    TooManyRequests(#[to_schema] ErrorBody),
    /// INTERNAL: a bug; the detail is in the service's log.
    #[response(status = 500)]
    Internal(#[to_schema] ErrorBody),
    /// UNAVAILABLE: Redis is unreachable, loading or failing over.
    #[response(status = 503)]
    Unavailable(#[to_schema] ErrorBody),
    /// DEADLINE_EXCEEDED: Redis did not answer within --store-timeout.
    #[response(status = 504)]
    Timeout(#[to_schema] ErrorBody),
}

/// Adds the bearer-token scheme the routes are secured with.
struct BearerTokens;

impl utoipa::Modify for BearerTokens {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let scheme = HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .description(Some(
                "A token from the service's --auth-tokens file, as `Authorization: Bearer <token>`. \
                 Required when the service runs with --auth-tokens; without it authentication is off.",
            ))
            .build();
        doc.components.get_or_insert_with(Default::default).add_security_scheme("bearer", SecurityScheme::Http(scheme));
    }
}

/// Every failed call: the gRPC status as JSON, with the HTTP code
/// conventional for its gRPC code.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    error: ErrorDetail,
}

/// What went wrong.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// The gRPC code, e.g. InvalidArgument.
    code: String,
    /// The stable reason (google.rpc.ErrorInfo), e.g. INSUFFICIENT_STOCK.
    reason: String,
    /// For people.
    message: String,
    /// The ErrorInfo metadata, e.g. sku, warehouse_id, requested, available.
    metadata: std::collections::HashMap<String, String>,
    /// The request field at fault, for bad input.
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<String>,
}

/// A probe's answer.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Probe {
    /// ok, ready or not ready.
    status: String,
}

/// Availability of each SKU asked for.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Availability {
    /// One per SKU, in the order asked.
    results: Vec<SkuAvailability>,
    /// Pairs asked for by warehouse that have no record.
    missing: Vec<pb::StockKey>,
}

/// One SKU's records.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct SkuAvailability {
    sku: String,
    /// Its records (the one asked for, or every warehouse's).
    records: Vec<pb::StockRecord>,
    /// The sum of their available.
    total_available: String,
}

/// The stock-change ingestion's backlog: the stream's, and the binlog
/// follower's when one is configured.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct IngestBacklog {
    /// Entries not yet delivered to the group (None when Redis cannot say).
    lag: Option<u64>,
    /// Entries delivered but not acknowledged.
    pending: u64,
    /// Entries in the dead-letter stream (the binlog follower's rows too).
    dead_letters: u64,
    /// The binlog follower, as its leader last reported it: absent when no
    /// follower is configured, null when no replica has reported for a few
    /// seconds (none follows).
    #[serde(skip_serializing_if = "Option::is_none")]
    binlog: Option<Option<BinlogStatus>>,
}

/// An error as JSON, with the HTTP code conventional for its gRPC code.
pub struct ApiError(tonic::Status);

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        Self(e.into())
    }
}

impl From<tonic::Status> for ApiError {
    fn from(status: tonic::Status) -> Self {
        Self(status)
    }
}

fn http_code(code: Code) -> StatusCode {
    match code {
        Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::FailedPrecondition => StatusCode::CONFLICT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.0;
        let info = status.get_details_error_info();
        let field =
            status.get_details_bad_request().and_then(|b| b.field_violations.into_iter().next()).map(|v| v.field);
        let retry_after = status.get_details_retry_info().and_then(|r| r.retry_delay);
        let body = ErrorBody {
            error: ErrorDetail {
                code: format!("{:?}", status.code()),
                reason: info.as_ref().map_or_else(String::new, |i| i.reason.clone()),
                message: status.message().to_owned(),
                metadata: info.map(|i| i.metadata).unwrap_or_default(),
                field,
            },
        };
        let mut response = (http_code(status.code()), Json(body)).into_response();
        if let Some(delay) = retry_after {
            let seconds = delay.as_secs_f64().ceil().max(1.0) as u64;
            response.headers_mut().insert(header::RETRY_AFTER, seconds.into());
        }
        response
    }
}

fn admit<S>(
    state: &HttpState<S>,
    permission: &str,
    headers: &HeaderMap,
    peer: SocketAddr,
) -> Result<Option<Principal>, Error> {
    state.access.admit_call(permission, headers, Some(peer.ip()))
}

/// `GET /stock/available?sku=X[&sku=Y...][&warehouse_id=A]` (`warehouse` is an alias)
#[utoipa::path(
    get,
    path = "/stock/available",
    summary = "Available stock of one or more SKUs, in one warehouse or in all",
    params(
        ("sku" = Vec<String>, Query, description = "Repeat for several SKUs (up to --max-ids-per-call)", explode),
        ("warehouse_id" = Option<String>, Query, description = "Only this warehouse; without it, every warehouse that has the SKU"),
        ("warehouse" = Option<String>, Query, description = "An alias of warehouse_id", deprecated),
    ),
    responses(
        (status = 200, body = Availability),
        (status = 404, body = ErrorBody, description = "SKU_NOT_AVAILABLE_IN_WAREHOUSE: the SKU has no record in the warehouse asked for"),
        ReadErrors,
    )
)]
async fn available<S: AdminStore>(
    State(state): State<HttpState<S>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Json<Availability>, ApiError> {
    admit(&state, QUERY_PERMISSION, &headers, peer)?;
    let mut skus = Vec::new();
    let mut warehouse = None;
    for (name, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match name.as_ref() {
            "sku" => skus.push(Sku::parse(&value, "sku")?),
            // warehouse_id as in the rest of the API; warehouse, as the
            // transfer system first called it, stays an alias.
            "warehouse_id" | "warehouse" if warehouse.is_none() => {
                warehouse = Some(WarehouseId::parse(&value, &name)?);
            }
            "warehouse_id" | "warehouse" => {
                return Err(Error::invalid(name, "may be given once (warehouse is an alias of warehouse_id)").into());
            }
            other => return Err(Error::invalid(other, "is not a parameter; use sku and warehouse_id").into()),
        }
    }
    if skus.is_empty() || skus.len() > state.max_skus {
        return Err(Error::invalid(
            "sku",
            format!("is given {} times; give it 1 to {} times", skus.len(), state.max_skus),
        )
        .into());
    }
    let mut results = Vec::with_capacity(skus.len());
    let mut missing = Vec::new();
    for sku in skus {
        let records: Vec<RecordKey> = match &warehouse {
            Some(w) => vec![RecordKey::new(sku.clone(), w.clone())],
            None => {
                state.store.warehouses_of(&sku).await?.into_iter().map(|w| RecordKey::new(sku.clone(), w)).collect()
            }
        };
        let views = state.store.get_stock(&records).await?;
        for (record, view) in records.iter().zip(&views) {
            if view.is_none() {
                missing.push(record.clone());
            }
        }
        let views: Vec<StockView> = views.into_iter().flatten().collect();
        results.push(SkuAvailability {
            sku: sku.to_string(),
            records: views.iter().map(convert::record).collect(),
            total_available: convert::total_available(&views),
        });
    }
    // Like GetAvailability: one named record that does not exist is a 404.
    if let ([_], [record]) = (results.as_slice(), missing.as_slice())
        && warehouse.is_some()
    {
        return Err(Error::NotAvailable { record: record.clone(), line: None }.into());
    }
    let missing = missing
        .into_iter()
        .map(|r| pb::StockKey { sku: r.sku.to_string(), warehouse_id: r.warehouse.to_string() })
        .collect();
    Ok(Json(Availability { results, missing }))
}

/// `GET /healthz`: 200 while the process runs.
#[utoipa::path(
    get,
    path = "/healthz",
    summary = "The process is alive",
    responses((status = 200, body = Probe)),
    security(())
)]
async fn healthz() -> Json<Probe> {
    Json(Probe { status: "ok".into() })
}

/// `GET /metrics`: OpenMetrics to a scraper that asks for it (Prometheus
/// does, in its Accept header), the classic text format's content type to
/// others. The body is the same: it uses only the types the classic format
/// has (counter, gauge, histogram), which its parsers read, `# EOF` and all
/// (a test checks the types).
async fn metrics(headers: HeaderMap) -> Response {
    let openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    let content_type = match openmetrics {
        true => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        false => "text/plain; version=0.0.4; charset=utf-8",
    };
    ([(header::CONTENT_TYPE, content_type)], crate::metrics::METRICS.encode()).into_response()
}

/// `GET /readyz`: 200 while Redis answers and the scripts are loaded.
#[utoipa::path(
    get,
    path = "/readyz",
    summary = "Redis answers and the scripts are loaded",
    responses((status = 200, body = Probe, description = "Ready"), (status = 503, body = Probe, description = "Not ready")),
    security(())
)]
async fn readyz<S: AdminStore>(State(state): State<HttpState<S>>) -> Response {
    let ready = state.ready.load(Ordering::Relaxed) && state.store.ping().await.is_ok();
    let (code, status) = if ready { (StatusCode::OK, "ready") } else { (StatusCode::SERVICE_UNAVAILABLE, "not ready") };
    (code, Json(Probe { status: status.into() })).into_response()
}

/// `GET /ingest/stats`: the ingestion backlog.
#[utoipa::path(
    get,
    path = "/ingest/stats",
    summary = "Backlog of the stock-change ingestion (operator role)",
    responses((status = 200, body = IngestBacklog), ReadErrors)
)]
async fn ingest_stats<S: AdminStore + BinlogState>(
    State(state): State<HttpState<S>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Result<Json<IngestBacklog>, ApiError> {
    admit(&state, STATS_PERMISSION, &headers, peer)?;
    let stats = state.store.ingest_stats(&state.ingest_group).await?;
    let binlog = match &state.binlog {
        Some(name) => Some(state.store.binlog_status(name).await?),
        None => None,
    };
    Ok(Json(IngestBacklog { lag: stats.lag, pending: stats.pending, dead_letters: stats.dead_letters, binlog }))
}
