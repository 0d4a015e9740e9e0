//! A client of stocklock that does what the service asks of its callers.
//!
//! Every mutating call carries a `request_id`: one is made up when the
//! caller leaves it empty, and it stays the same for every attempt of the
//! call. A call that fails with a transient error (`UNAVAILABLE`,
//! `DEADLINE_EXCEEDED`, `RESOURCE_EXHAUSTED`, `ABORTED`: Redis away or slow,
//! the service shedding load, an earlier attempt still in progress) is sent
//! again after the server's `RetryInfo` delay, or a jittered exponential
//! backoff, until it answers or the call's deadline passes. A refusal
//! (`INVALID_ARGUMENT`, `FAILED_PRECONDITION`, `NOT_FOUND`, ...) comes back
//! at once. The service keeps each request_id's outcome, so a retried Lock
//! never locks twice and a retried Commit never deducts twice.
//!
//! ```no_run
//! use stocklock_client::{Client, pb};
//!
//! # async fn checkout() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let client = Client::connect("http://127.0.0.1:50051").await?;
//! let locked = client
//!     .lock(pb::LockRequest { candidates: None,
//!         sku: "SKU-1".into(),
//!         warehouse_id: "WH-A".into(),
//!         quantity: "2".into(),
//!         order_id: "order-42".into(),
//!         holder: "checkout".into(),
//!         ..Default::default()
//!     })
//!     .await?;
//! let lock_id = locked.lock.expect("a granted lock").lock_id;
//! client
//!     .commit(pb::CommitRequest { lock_id, holder: "checkout".into(), ..Default::default() })
//!     .await?;
//! # Ok(())
//! # }
//! ```
//!
//! A **session** holds any number of locks with one keep-alive: the client
//! keeps it alive in the background and tells the application when it, or
//! one of its locks, is lost (an operator's forced unlock, the session's
//! expiry), as a future or a watch channel to select on.
//!
//! ```no_run
//! use std::time::Duration;
//! use stocklock_client::{Client, pb};
//!
//! # async fn checkout(pay: impl std::future::Future<Output = bool>) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let client = Client::connect("http://127.0.0.1:50051").await?;
//! let session = client.session("checkout-7", Duration::from_secs(15)).await?;
//! let guard = session
//!     .lock(pb::LockRequest { candidates: None,
//!         sku: "SKU-1".into(),
//!         warehouse_id: "WH-A".into(),
//!         quantity: "2".into(),
//!         order_id: "order-42".into(),
//!         ..Default::default()
//!     })
//!     .await?;
//! tokio::select! {
//!     paid = pay => if paid { guard.commit().await?; } else { guard.release().await?; },
//!     lost = guard.lost() => eprintln!("lost the goods of order-42: {} ({})", lost.reason, lost.detail),
//! }
//! # Ok(())
//! # }
//! ```

mod session;

use std::future::Future;
use std::time::{Duration, Instant};

pub use self::session::{LockGuard, Lost, Session};
pub use stocklock::pb;
use stocklock::pb::inventory_service_client::InventoryServiceClient;
use tonic::metadata::{AsciiMetadataValue, errors::InvalidMetadataValue};
use tonic::transport::Channel;
use tonic::{Code, Status};
use tonic_types::StatusExt;

/// How a call is retried.
#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    /// Every attempt of a call, and the waits between them, end within this.
    pub deadline: Duration,
    /// The first wait after a transient error without a `RetryInfo`.
    pub first_backoff: Duration,
    /// The longest wait; each one doubles up to it (with full jitter).
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            deadline: Duration::from_secs(10),
            first_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_secs(1),
        }
    }
}

/// A stocklock client (cheap to clone: one HTTP/2 channel underneath).
#[derive(Clone, Debug)]
pub struct Client {
    inner: InventoryServiceClient<Channel>,
    policy: RetryPolicy,
    token: Option<AsciiMetadataValue>,
}

impl Client {
    /// Connects to the service at `url` (`http://host:port`).
    pub async fn connect(url: impl Into<String>) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        let channel = Channel::from_shared(url.into())?.connect().await?;
        Ok(Self::new(channel))
    }

    /// A client over an existing channel (for TLS, or a custom endpoint).
    pub fn new(channel: Channel) -> Self {
        Self { inner: InventoryServiceClient::new(channel), policy: RetryPolicy::default(), token: None }
    }

    /// The same client with another retry policy.
    #[must_use]
    pub fn with_policy(mut self, policy: RetryPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// The same client, authenticating with the bearer `token`.
    pub fn with_token(mut self, token: &str) -> Result<Self, InvalidMetadataValue> {
        self.token = Some(format!("Bearer {token}").parse()?);
        Ok(self)
    }

    /// Lock: `quantity` of one record for `ttl`.
    pub async fn lock(&self, mut request: pb::LockRequest) -> Result<pb::LockResponse, Status> {
        ensure_request_id(&mut request.request_id);
        self.retrying(request, |mut c, r| async move { c.lock(r).await }).await
    }

    /// BatchLock: every line, or none.
    pub async fn batch_lock(&self, mut request: pb::BatchLockRequest) -> Result<pb::BatchLockResponse, Status> {
        ensure_request_id(&mut request.request_id);
        self.retrying(request, |mut c, r| async move { c.batch_lock(r).await }).await
    }

    /// Renew: the heartbeat (a retry renews again from now).
    pub async fn renew(&self, mut request: pb::RenewRequest) -> Result<pb::RenewResponse, Status> {
        ensure_request_id(&mut request.request_id);
        self.retrying(request, |mut c, r| async move { c.renew(r).await }).await
    }

    /// Release (a retry after it went through answers `ALREADY_RELEASED`).
    pub async fn release(&self, mut request: pb::ReleaseRequest) -> Result<pb::ReleaseResponse, Status> {
        ensure_request_id(&mut request.request_id);
        self.retrying(request, |mut c, r| async move { c.release(r).await }).await
    }

    /// Commit (a retry after it went through answers `committed_now: false`).
    pub async fn commit(&self, mut request: pb::CommitRequest) -> Result<pb::CommitResponse, Status> {
        ensure_request_id(&mut request.request_id);
        self.retrying(request, |mut c, r| async move { c.commit(r).await }).await
    }

    /// SetStock (its `source_version` makes a retry safe without a request_id).
    pub async fn set_stock(&self, request: pb::SetStockRequest) -> Result<pb::SetStockResponse, Status> {
        self.retrying(request, |mut c, r| async move { c.set_stock(r).await }).await
    }

    /// AdjustStock.
    pub async fn adjust_stock(&self, mut request: pb::AdjustStockRequest) -> Result<pb::AdjustStockResponse, Status> {
        ensure_request_id(&mut request.request_id);
        self.retrying(request, |mut c, r| async move { c.adjust_stock(r).await }).await
    }

    /// GetAvailability (a read: retried the same way).
    pub async fn get_availability(
        &self,
        request: pb::GetAvailabilityRequest,
    ) -> Result<pb::GetAvailabilityResponse, Status> {
        self.retrying(request, |mut c, r| async move { c.get_availability(r).await }).await
    }

    /// Sends `request` through `call` until it answers with something other
    /// than a transient error, or the policy's deadline passes. Each attempt
    /// carries what is left of the deadline (`grpc-timeout`), so the service
    /// does not start work the caller will no longer wait for.
    async fn retrying<Req, Resp, F, Fut>(&self, request: Req, call: F) -> Result<Resp, Status>
    where
        Req: Clone,
        F: Fn(InventoryServiceClient<Channel>, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
    {
        let started = Instant::now();
        let mut backoff = self.policy.first_backoff;
        loop {
            let left = self.policy.deadline.saturating_sub(started.elapsed());
            let mut attempt = tonic::Request::new(request.clone());
            attempt.set_timeout(left);
            self.authorize(&mut attempt);
            let status = match tokio::time::timeout(left, call(self.inner.clone(), attempt)).await {
                Ok(Ok(response)) => return Ok(response.into_inner()),
                Ok(Err(status)) => status,
                Err(_) => Status::deadline_exceeded("stocklock did not answer within the call's deadline"),
            };
            if !transient(&status) {
                return Err(status);
            }
            let wait = status
                .get_details_retry_info()
                .and_then(|info| info.retry_delay)
                .unwrap_or_else(|| backoff.mul_f64(rand::random::<f64>()));
            backoff = (backoff * 2).min(self.policy.max_backoff);
            if started.elapsed() + wait >= self.policy.deadline {
                return Err(status);
            }
            tokio::time::sleep(wait).await;
        }
    }
}

impl Client {
    /// Puts the client's token, if any, on `request`.
    fn authorize<T>(&self, request: &mut tonic::Request<T>) {
        if let Some(token) = &self.token {
            request.metadata_mut().insert("authorization", token.clone());
        }
    }
}

/// Whether another attempt with the same request_id may succeed: the
/// service or its store was away, slow or busy, or an earlier attempt was
/// still running. Never a refusal of the request itself.
pub fn transient(status: &Status) -> bool {
    matches!(status.code(), Code::Unavailable | Code::DeadlineExceeded | Code::ResourceExhausted | Code::Aborted)
}

/// Gives a call without a request_id one of its own, for all its attempts.
fn ensure_request_id(request_id: &mut String) {
    if request_id.is_empty() {
        *request_id = new_request_id();
    }
}

/// A request_id of the client's own making.
fn new_request_id() -> String {
    format!("cl-{:016x}{:016x}", rand::random::<u64>(), rand::random::<u64>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_not_retried() {
        assert!(transient(&Status::unavailable("store away")));
        assert!(transient(&Status::resource_exhausted("overloaded")));
        assert!(!transient(&Status::failed_precondition("insufficient stock")));
        assert!(!transient(&Status::invalid_argument("bad quantity")));
        assert!(!transient(&Status::not_found("no such lock")));
    }

    #[test]
    fn a_call_keeps_the_request_id_it_was_given() {
        let mut given = "order-42".to_owned();
        ensure_request_id(&mut given);
        assert_eq!(given, "order-42");
        let mut empty = String::new();
        ensure_request_id(&mut empty);
        assert!(empty.starts_with("cl-") && empty.len() == 35);
    }
}
