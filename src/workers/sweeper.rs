//! The expiry sweeper: returns the stock of locks that stopped being
//! renewed, and ends the sessions that stopped being kept alive (with
//! their locks).
//!
//! Every script already ignores expired locks of the records it touches, so
//! availability is right without the sweeper; the sweeper makes the stored
//! `locked` figure (and the lock set) right for records nobody touches. Each
//! step is one idempotent script per record, so any number of replicas may
//! sweep the same Redis: a record two replicas sweep at once is swept once.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::MissedTickBehavior;

use crate::domain::StockStore;

/// Sweeps every `interval` until `stop` turns true: expired locks, and
/// sessions whose ttl passed, in two loops of their own, so that a long
/// round of one (an expiry wave, a steady stream of expiring locks) holds
/// back no end of the other.
pub async fn run<S: StockStore>(store: Arc<S>, interval: Duration, batch: usize, stop: watch::Receiver<bool>) {
    let locks = sweep_loop(interval, stop.clone(), "expiry", || store.sweep_expired(batch));
    let sessions = sweep_loop(interval, stop, "session", || store.sweep_sessions(batch));
    tokio::join!(locks, sessions);
}

/// Calls `round` every `interval`, and again at once while it finds work:
/// each round is bounded (a few records or sessions, each call settling a
/// bounded number of locks), so a wave drains as fast as Redis allows,
/// between other calls.
async fn sweep_loop<F, Fut>(interval: Duration, mut stop: watch::Receiver<bool>, what: &'static str, round: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<usize, crate::domain::Error>>,
{
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.changed() => return,
        }
        while !*stop.borrow() {
            match round().await {
                Ok(0) => break,
                Ok(expired) => {
                    crate::metrics::METRICS.expired_locks.inc_by(expired as u64);
                    tracing::debug!(expired, what, "returned expired locks to availability");
                }
                Err(e) => {
                    tracing::warn!(error = %e, what, "sweep failed; retrying next tick");
                    break;
                }
            }
        }
    }
}
