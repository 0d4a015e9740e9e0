//! The lock API over HTTP, for callers such as the transfer system that
//! speak HTTP: Lock, BatchLock, Renew, Release, Commit, TransferLock and
//! GetLock, with bodies in the protobuf JSON mapping (field names as in the
//! proto, 64-bit integers and enums as strings; see build.rs).
//!
//! Each route runs the gRPC handler itself, in process: the same
//! validation, roles (the route needs the permission of its gRPC method),
//! idempotency, error reasons and metadata. `request_id` may come in the
//! body or as an `Idempotency-Key` header. A call takes a slot of the
//! gRPC server's admission, so overload sheds HTTP and gRPC callers alike.

use std::net::SocketAddr;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::HeaderMap;
use serde::de::DeserializeOwned;
use tonic::{Request, Response, Status};

use super::{ApiError, HttpState};
use crate::domain::{AdminStore, Error};
use crate::edge::admission::admitted_by_handler;
use crate::pb;
use crate::pb::inventory_service_server::InventoryService;

/// The header a caller may name its request's idempotency key in.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// A request message of a mutating call: where its idempotency key lives.
pub trait Idempotent {
    /// The body's `request_id`.
    fn request_id(&mut self) -> &mut String;
}

macro_rules! idempotent {
    ($($message:ty),*) => {
        $(impl Idempotent for $message {
            fn request_id(&mut self) -> &mut String {
                &mut self.request_id
            }
        })*
    };
}

idempotent!(
    pb::LockRequest,
    pb::BatchLockRequest,
    pb::RenewRequest,
    pb::ReleaseRequest,
    pb::CommitRequest,
    pb::TransferLockRequest
);

/// The body as the message `T`, its `request_id` taken from the
/// `Idempotency-Key` header when the body has none.
fn body<T: DeserializeOwned + Idempotent>(bytes: &Bytes, headers: &HeaderMap, name: &str) -> Result<T, Error> {
    let mut message: T = serde_json::from_slice(bytes)
        .map_err(|e| Error::invalid("body", format!("is not a {name} in the protobuf JSON mapping: {e}")))?;
    if let Some(key) = headers.get(IDEMPOTENCY_KEY) {
        let key = key.to_str().map_err(|_| Error::invalid("Idempotency-Key", "is not text"))?;
        let request_id = message.request_id();
        if request_id.is_empty() {
            key.clone_into(request_id);
        } else if request_id != key {
            return Err(Error::invalid("request_id", "differs from the Idempotency-Key header; send one of them"));
        }
    }
    Ok(message)
}

/// Admits the caller as for the gRPC method `method` and runs `handler`
/// on `message` with the caller's principal, as the gRPC server would.
async fn grpc<S, Req, Resp, Fut>(
    state: &HttpState<S>,
    headers: &HeaderMap,
    peer: SocketAddr,
    method: &str,
    message: Req,
    handler: impl FnOnce(Request<Req>) -> Fut,
) -> Result<Json<Resp>, ApiError>
where
    Fut: Future<Output = Result<Response<Resp>, Status>>,
{
    let path = format!("/stocklock.v1.InventoryService/{method}");
    let principal = super::admit(state, &path, headers, peer)?;
    // A slot of the gRPC server's own concurrency limit: HTTP callers are
    // shed as gRPC callers are (429, OVERLOADED), not let through to Redis.
    // Lock, BatchLock and TransferLock take theirs in the handler, as over
    // gRPC (see `admitted_by_handler`).
    let _slot = match admitted_by_handler(&path) {
        true => None,
        false => Some(state.admission.admit(None).await?),
    };
    let mut request = Request::new(message);
    if let Some(principal) = principal {
        request.extensions_mut().insert(principal);
    }
    Ok(Json(handler(request).await?.into_inner()))
}

macro_rules! route {
    ($(#[$doc:meta])* $name:ident, $path:literal, $method:literal, $call:ident, $request:ty, $response:ty) => {
        $(#[$doc])*
        #[utoipa::path(
            post,
            path = $path,
            summary = $method,
            description = concat!("The gRPC call InventoryService/", $method, ", with the same rules and answers. \
                request_id may also come as an Idempotency-Key header."),
            request_body = $request,
            params(("Idempotency-Key" = Option<String>, Header, description = "The request_id, when the body has none")),
            responses(
                (status = 200, body = $response),
                (status = 413, content_type = "text/plain", description = "The body is larger than --max-request-bytes (a plain-text answer). Nothing changed."),
                super::LockErrors,
            )
        )]
        pub(super) async fn $name<S: AdminStore>(
            State(state): State<HttpState<S>>,
            ConnectInfo(peer): ConnectInfo<SocketAddr>,
            headers: HeaderMap,
            bytes: Bytes,
        ) -> Result<Json<$response>, ApiError> {
            let message: $request = body(&bytes, &headers, stringify!($request))?;
            let api = state.inventory.clone();
            grpc(&state, &headers, peer, $method, message, |r| async move { api.$call(r).await }).await
        }
    };
}

route!(
    /// `POST /stock/lock`: Lock.
    lock, "/stock/lock", "Lock", lock, pb::LockRequest, pb::LockResponse
);
route!(
    /// `POST /stock/lock/batch`: BatchLock.
    batch_lock, "/stock/lock/batch", "BatchLock", batch_lock, pb::BatchLockRequest, pb::BatchLockResponse
);
route!(
    /// `POST /stock/lock/renew`: Renew.
    renew, "/stock/lock/renew", "Renew", renew, pb::RenewRequest, pb::RenewResponse
);
route!(
    /// `POST /stock/lock/release`: Release.
    release, "/stock/lock/release", "Release", release, pb::ReleaseRequest, pb::ReleaseResponse
);
route!(
    /// `POST /stock/lock/commit`: Commit.
    commit, "/stock/lock/commit", "Commit", commit, pb::CommitRequest, pb::CommitResponse
);
route!(
    /// `POST /stock/lock/transfer`: TransferLock.
    transfer_lock, "/stock/lock/transfer", "TransferLock", transfer_lock, pb::TransferLockRequest, pb::TransferLockResponse
);

/// `GET /stock/locks/{lock_id}`: GetLock (the lock id URL-encoded: `|` is `%7C`).
#[utoipa::path(
    get,
    path = "/stock/locks/{lock_id}",
    summary = "GetLock",
    params(("lock_id" = String, Path, description = "The lock id, URL-encoded (| is %7C)")),
    responses(
        (status = 200, body = pb::GetLockResponse),
        super::LockErrors,
    )
)]
pub(super) async fn get_lock<S: AdminStore>(
    State(state): State<HttpState<S>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(lock_id): Path<String>,
) -> Result<Json<pb::GetLockResponse>, ApiError> {
    let api = state.inventory.clone();
    let message = pb::GetLockRequest { lock_id };
    grpc(&state, &headers, peer, "GetLock", message, |r| async move { api.get_lock(r).await }).await
}
