//! What the tower layers in front of the gRPC services (telemetry, access,
//! admission) share.

/// The future every layer's service returns.
pub(crate) type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

/// The inner service to call now. Only the instance `poll_ready` was called
/// on is ready, so it is taken for this call and a fresh clone left in its place.
pub(crate) fn take_ready<S: Clone>(inner: &mut S) -> S {
    let clone = inner.clone();
    std::mem::replace(inner, clone)
}
