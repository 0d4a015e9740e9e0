//! Overload protection: a concurrency limit with a short bounded queue in
//! front of every unary call, and callers' deadlines honoured before work starts.
//!
//! Past the limit a call waits in the queue for at most `max_wait`; when the
//! queue is full, or the wait runs out, it is shed at once with
//! RESOURCE_EXHAUSTED / `OVERLOADED` and a retry hint. A call whose
//! deadline (`grpc-timeout`) would pass before it could start is answered
//! with DEADLINE_EXCEEDED / `DEADLINE_PASSED` shortly before that deadline,
//! and never started. Either way
//! nothing was done, so retrying with the same request_id is safe. Without
//! this, a burst past capacity queues in front of Redis until every caller
//! times out, and the service does only work nobody waits for any more.
//!
//! Health, reflection and the streams (the watches, KeepAlive) are not limited:
//! probes must answer under load, and a stream holds no store capacity.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::Semaphore;
use tonic::Status;

use super::layer::{BoxFuture, take_ready};
use crate::domain::Error;
use crate::metrics::{METRICS, ShedLabels};

/// How long before a caller's deadline a queued call is refused, so the
/// refusal arrives while the caller still listens.
const ANSWER_MARGIN: Duration = Duration::from_millis(20);

/// The limits.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Calls running at once.
    pub max_in_flight: usize,
    /// Calls waiting for a slot.
    pub max_queued: usize,
    /// Longest wait for a slot.
    pub max_wait: Duration,
}

/// The shared admission state of one server.
pub struct Admission {
    slots: Arc<Semaphore>,
    queued: AtomicUsize,
    limits: Limits,
}

impl Admission {
    /// Admission with `limits`.
    pub fn new(limits: Limits) -> Arc<Self> {
        Arc::new(Self { slots: Arc::new(Semaphore::new(limits.max_in_flight)), queued: AtomicUsize::new(0), limits })
    }

    /// Waits for a slot, or says why the call must not start. The gRPC
    /// server's layer and the HTTP lock routes share one admission.
    pub async fn admit(&self, deadline: Option<Duration>) -> Result<tokio::sync::OwnedSemaphorePermit, Error> {
        if let Ok(permit) = Arc::clone(&self.slots).try_acquire_owned() {
            return Ok(permit);
        }
        let overloaded = Error::Overloaded { retry_after: self.limits.max_wait.max(Duration::from_millis(10)) };
        if self.queued.fetch_add(1, Ordering::AcqRel) >= self.limits.max_queued {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            METRICS.shed.get_or_create(&ShedLabels { reason: "queue_full" }).inc();
            return Err(overloaded);
        }
        // Leaves the queue however the wait ends, also when the caller goes
        // away and this future is dropped mid-wait.
        let _queued = Queued(&self.queued);
        // A caller's deadline shortens the wait, and leaves time for the
        // refusal to reach the caller before it gives up by itself.
        let budget = deadline.map(|d| d.saturating_sub((d / 4).min(ANSWER_MARGIN)));
        let wait = budget.map_or(self.limits.max_wait, |b| b.min(self.limits.max_wait));
        let acquired = tokio::time::timeout(wait, Arc::clone(&self.slots).acquire_owned()).await;
        match acquired {
            Ok(Ok(permit)) => Ok(permit),
            Ok(Err(_closed)) => Err(overloaded),
            Err(_) if budget.is_some_and(|b| b <= self.limits.max_wait) => {
                METRICS.shed.get_or_create(&ShedLabels { reason: "deadline" }).inc();
                Err(Error::DeadlinePassed)
            }
            Err(_) => {
                METRICS.shed.get_or_create(&ShedLabels { reason: "queue_wait" }).inc();
                Err(overloaded)
            }
        }
    }

    /// Calls running now.
    pub fn in_flight(&self) -> usize {
        self.limits.max_in_flight - self.slots.available_permits()
    }
}

/// A place in the queue: given back when dropped.
struct Queued<'a>(&'a AtomicUsize);

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// When the caller's deadline (`grpc-timeout`) passes, as of the request's
/// arrival. The layer puts it in the request's extensions for the calls
/// admitted by their handlers, which read the body first.
#[derive(Clone, Copy, Debug)]
pub struct Deadline(pub std::time::Instant);

impl Deadline {
    /// What is left of the caller's deadline now, if it sent one.
    pub fn remaining<T>(request: &tonic::Request<T>) -> Option<Duration> {
        request.extensions().get::<Deadline>().map(|d| d.0.saturating_duration_since(std::time::Instant::now()))
    }
}

/// The caller's deadline from the `grpc-timeout` header ("250m" is 250 ms).
fn grpc_timeout(headers: &http::HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
    let (amount, unit) = value.split_at(value.len().checked_sub(1)?);
    let amount: u64 = amount.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount.saturating_mul(3600)),
        "M" => Duration::from_secs(amount.saturating_mul(60)),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// Calls this layer does not admit. Streams live as long as their client,
/// so they would hold a slot for good: the watches, and KeepAlive (one
/// write a session every third of its ttl). Lock, BatchLock and
/// TransferLock are admitted by their handlers, once the request is read,
/// so that a refusal is counted against the warehouses it names like any
/// other lock outcome (the success rate must show an overload).
fn exempt(path: &str) -> bool {
    path.starts_with("/grpc.")
        || matches!(
            path,
            "/stocklock.v1.InventoryService/WatchAvailability"
                | "/stocklock.v1.InventoryService/KeepAlive"
                | "/stocklock.v1.InventoryService/WatchHolder"
        )
        || admitted_by_handler(path)
}

/// Calls whose handler admits them itself, once the request is read, so
/// that a refusal is counted against the warehouses it names.
pub fn admitted_by_handler(path: &str) -> bool {
    matches!(
        path,
        "/stocklock.v1.InventoryService/Lock"
            | "/stocklock.v1.InventoryService/BatchLock"
            | "/stocklock.v1.InventoryService/TransferLock"
    )
}

/// The tower layer applying an [`Admission`] to every call.
#[derive(Clone)]
pub struct AdmissionLayer {
    admission: Arc<Admission>,
}

impl AdmissionLayer {
    /// A layer for `admission`.
    pub fn new(admission: Arc<Admission>) -> Self {
        Self { admission }
    }
}

impl<S> tower::Layer<S> for AdmissionLayer {
    type Service = AdmissionService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AdmissionService { inner, admission: self.admission.clone() }
    }
}

/// The service [`AdmissionLayer`] wraps around the gRPC services.
#[derive(Clone)]
pub struct AdmissionService<S> {
    inner: S,
    admission: Arc<Admission>,
}

impl<S, B> tower::Service<http::Request<B>> for AdmissionService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let mut inner = take_ready(&mut self.inner);
        if admitted_by_handler(request.uri().path())
            && let Some(timeout) = grpc_timeout(request.headers())
        {
            request.extensions_mut().insert(Deadline(std::time::Instant::now() + timeout));
        }
        if exempt(request.uri().path()) {
            return Box::pin(inner.call(request));
        }
        let admission = self.admission.clone();
        let deadline = grpc_timeout(request.headers());
        Box::pin(async move {
            match admission.admit(deadline).await {
                Ok(permit) => {
                    let response = inner.call(request).await;
                    drop(permit);
                    response
                }
                Err(error) => Ok(Status::from(error).into_http()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_grpc_timeouts() {
        let mut headers = http::HeaderMap::new();
        for (value, expected) in [
            ("250m", Some(Duration::from_millis(250))),
            ("2S", Some(Duration::from_secs(2))),
            ("1H", Some(Duration::from_secs(3600))),
            ("500u", Some(Duration::from_micros(500))),
            ("7x", None),
            ("m", None),
        ] {
            headers.insert("grpc-timeout", value.parse().unwrap());
            assert_eq!(grpc_timeout(&headers), expected, "{value}");
        }
        assert_eq!(grpc_timeout(&http::HeaderMap::new()), None);
    }

    #[tokio::test]
    async fn sheds_past_the_queue_and_honours_deadlines() {
        let admission = Admission::new(Limits { max_in_flight: 1, max_queued: 1, max_wait: Duration::from_secs(5) });
        let held = admission.admit(None).await.unwrap();
        assert_eq!(admission.in_flight(), 1);
        // One waits in the queue; the next finds it full and is shed at once.
        let waiting = tokio::spawn({
            let admission = Arc::clone(&admission);
            async move { admission.admit(None).await.map(drop) }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        let started = std::time::Instant::now();
        assert!(matches!(admission.admit(None).await, Err(Error::Overloaded { .. })));
        assert!(started.elapsed() < Duration::from_millis(50));
        drop(held);
        waiting.await.unwrap().unwrap();

        // A deadline shorter than the wait: not started, and said so.
        let _held = admission.admit(None).await.unwrap();
        let result = admission.admit(Some(Duration::from_millis(30))).await;
        assert!(matches!(result, Err(Error::DeadlinePassed)));
    }

    /// A caller that goes away while queued gives its place back: the
    /// queue must not shrink for good with every cancelled call.
    #[tokio::test]
    async fn a_cancelled_wait_leaves_the_queue() {
        let admission = Admission::new(Limits { max_in_flight: 1, max_queued: 1, max_wait: Duration::from_secs(5) });
        let held = admission.admit(None).await.unwrap();
        let gave_up = tokio::time::timeout(Duration::from_millis(20), admission.admit(None)).await;
        assert!(gave_up.is_err(), "it was still waiting");
        assert_eq!(admission.queued.load(Ordering::Acquire), 0);
        // So the next caller may queue, and gets the slot when it frees.
        let next = tokio::spawn({
            let admission = Arc::clone(&admission);
            async move { admission.admit(None).await.map(drop) }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(held);
        next.await.unwrap().unwrap();
    }
}
