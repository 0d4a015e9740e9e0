//! The HTTP listener: availability in JSON for the transfer system, the
//! OpenAPI description of it, probes, and ingestion statistics.
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
use axum::routing::get;
use serde_json::{Value, json};
use tonic::Code;
use tonic_types::StatusExt;

use crate::domain::{AdminStore, Error, RecordKey, Sku, StockView, WarehouseId};
use crate::edge::auth::{Access, Principal};
use crate::grpc::convert;

/// The OpenAPI description of this listener, served at `/openapi.json`.
pub const OPENAPI: &str = include_str!("../openapi/stocklock-http.json");

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
}

// Derived Clone would ask S to be Clone; only the Arc is cloned.
impl<S> Clone for HttpState<S> {
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            access: self.access.clone(),
            ready: self.ready.clone(),
            max_skus: self.max_skus,
            ingest_group: self.ingest_group.clone(),
        }
    }
}

/// The routes.
pub fn router<S: AdminStore + Send + Sync + 'static>(state: HttpState<S>) -> axum::Router {
    axum::Router::new()
        .route("/stock/available", get(available::<S>))
        .route("/ingest/stats", get(ingest_stats::<S>))
        .route(
            "/metrics",
            get(|| async { ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], crate::metrics::METRICS.encode()) }),
        )
        .route("/healthz", get(|| async { Json(json!({ "status": "ok" })) }))
        .route("/readyz", get(readyz::<S>))
        .route("/openapi.json", get(|| async { ([(header::CONTENT_TYPE, "application/json")], OPENAPI) }))
        .with_state(state)
}

/// An error as JSON, with the HTTP code conventional for its gRPC code.
struct ApiError(Error);

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        Self(e)
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
        let status: tonic::Status = self.0.into();
        let info = status.get_details_error_info();
        let field =
            status.get_details_bad_request().and_then(|b| b.field_violations.into_iter().next()).map(|v| v.field);
        let retry_after = status.get_details_retry_info().and_then(|r| r.retry_delay);
        let mut body = json!({
            "error": {
                "code": format!("{:?}", status.code()),
                "reason": info.as_ref().map_or("", |i| i.reason.as_str()),
                "message": status.message(),
                "metadata": info.as_ref().map(|i| json!(i.metadata)).unwrap_or_else(|| json!({})),
            }
        });
        if let Some(field) = field {
            body["error"]["field"] = json!(field);
        }
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

fn record_json(view: &StockView) -> Value {
    let r = convert::record(view);
    json!({
        "sku": r.sku,
        "warehouse_id": r.warehouse_id,
        "available": r.available,
        "physical": r.physical,
        "reserved": r.reserved,
        "in_transit": r.in_transit,
        "locked": r.locked,
        "oversold": r.oversold,
        "unit_scale": r.unit_scale,
        "version": r.version,
        "source_version": r.source_version,
        "live_locks": r.live_locks,
    })
}

/// `GET /stock/available?sku=X[&sku=Y...][&warehouse=A]`
async fn available<S: AdminStore>(
    State(state): State<HttpState<S>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, ApiError> {
    admit(&state, QUERY_PERMISSION, &headers, peer)?;
    let mut skus = Vec::new();
    let mut warehouse = None;
    for (name, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match name.as_ref() {
            "sku" => skus.push(Sku::parse(&value, "sku")?),
            "warehouse" if warehouse.is_none() => warehouse = Some(WarehouseId::parse(&value, "warehouse")?),
            "warehouse" => return Err(Error::invalid("warehouse", "may be given once").into()),
            other => return Err(Error::invalid(other, "is not a parameter; use sku and warehouse").into()),
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
                missing.push(json!({ "sku": record.sku.as_str(), "warehouse_id": record.warehouse.as_str() }));
            }
        }
        let views: Vec<StockView> = views.into_iter().flatten().collect();
        results.push(json!({
            "sku": sku.as_str(),
            "records": views.iter().map(record_json).collect::<Vec<_>>(),
            "total_available": convert::total_available(&views),
        }));
    }
    // Like GetAvailability: one named record that does not exist is a 404.
    if let ([_], [_], Some(w)) = (results.as_slice(), missing.as_slice(), &warehouse) {
        let sku = Sku::parse(missing[0]["sku"].as_str().unwrap_or_default(), "sku")?;
        return Err(Error::NotAvailable { record: RecordKey::new(sku, w.clone()), line: None }.into());
    }
    Ok(Json(json!({ "results": results, "missing": missing })))
}

/// `GET /readyz`: 200 while Redis answers and the scripts are loaded.
async fn readyz<S: AdminStore>(State(state): State<HttpState<S>>) -> Response {
    let ready = state.ready.load(Ordering::Relaxed) && state.store.ping().await.is_ok();
    let (code, status) = if ready { (StatusCode::OK, "ready") } else { (StatusCode::SERVICE_UNAVAILABLE, "not ready") };
    (code, Json(json!({ "status": status }))).into_response()
}

/// `GET /ingest/stats`: the ingestion backlog.
async fn ingest_stats<S: AdminStore>(
    State(state): State<HttpState<S>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    admit(&state, STATS_PERMISSION, &headers, peer)?;
    let stats = state.store.ingest_stats(&state.ingest_group).await?;
    Ok(Json(json!({ "lag": stats.lag, "pending": stats.pending, "dead_letters": stats.dead_letters })))
}
