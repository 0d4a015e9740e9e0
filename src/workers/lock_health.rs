//! Writes the lock outcomes counted in memory to the store about once a
//! second (and once more at shutdown), off the request path.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::domain::StockStore;

/// How often counts are written.
const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// Flushes every second until `stop`, and once more after it; counts are
/// kept `retention` in the store.
pub async fn run<S: StockStore>(store: Arc<S>, retention: Duration, mut stop: watch::Receiver<bool>) {
    loop {
        let stopping = tokio::select! {
            _ = tokio::time::sleep(FLUSH_EVERY) => false,
            _ = stop.changed() => true,
        };
        if let Err(e) = store.flush_lock_outcomes(retention).await {
            tracing::warn!(error = %e, "lock health counts not written; keeping them for the next flush");
        }
        if stopping {
            return;
        }
    }
}
