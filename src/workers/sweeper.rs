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

/// Sweeps every `interval` until `stop` turns true.
pub async fn run<S: StockStore>(store: Arc<S>, interval: Duration, batch: usize, mut stop: watch::Receiver<bool>) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.changed() => return,
        }
        // Sessions first: their end puts their locks' stock back, a bounded
        // number of locks a session each round (the rest the next round).
        match store.sweep_sessions(batch).await {
            Ok(0) => {}
            Ok(expired) => {
                crate::metrics::METRICS.expired_locks.inc_by(expired as u64);
                tracing::debug!(expired, "ended expired sessions' locks");
            }
            Err(e) => tracing::warn!(error = %e, "session sweep failed; retrying next tick"),
        }
        // Each round is bounded (a few records, each call settling a bounded
        // number of locks); rounds follow each other while there is work, so
        // an expiry wave drains as fast as Redis allows, between other calls.
        while !*stop.borrow() {
            match store.sweep_expired(batch).await {
                Ok(0) => break,
                Ok(expired) => {
                    crate::metrics::METRICS.expired_locks.inc_by(expired as u64);
                    tracing::debug!(expired, "returned expired locks to availability");
                }
                Err(e) => {
                    tracing::warn!(error = %e, "expiry sweep failed; retrying next tick");
                    break;
                }
            }
        }
    }
}
