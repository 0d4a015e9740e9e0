//! The gRPC health status (and the HTTP readiness flag) follows the store:
//! NOT_SERVING while it does not answer, and while the service drains.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::watch;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::domain::StockStore;

/// How often the store is checked.
const HEALTH_INTERVAL: Duration = Duration::from_secs(1);

/// The health service name of InventoryService.
const INVENTORY: &str = "stocklock.v1.InventoryService";

/// Reports NOT_SERVING while the store does not answer, and prepares it
/// again (a restarted Redis has no scripts) before reporting SERVING.
pub async fn run<S: StockStore>(
    store: Arc<S>,
    health: HealthReporter,
    ready: Arc<AtomicBool>,
    mut stop: watch::Receiver<bool>,
) {
    let mut serving = true;
    let mut ticker = tokio::time::interval(HEALTH_INTERVAL);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.changed() => break,
        }
        let ok = match store.ping().await {
            Ok(()) if !serving => store.prepare().await.is_ok(),
            Ok(()) => true,
            Err(_) => false,
        };
        if ok != serving {
            serving = ok;
            ready.store(ok, Ordering::Relaxed);
            let status = if ok { ServingStatus::Serving } else { ServingStatus::NotServing };
            if ok {
                tracing::info!("Redis answers again: SERVING");
            } else {
                tracing::warn!("Redis does not answer: NOT_SERVING");
            }
            health.set_service_status("", status).await;
            health.set_service_status(INVENTORY, status).await;
        }
    }
    // Tell load balancers to stop sending calls while the server drains.
    ready.store(false, Ordering::Relaxed);
    health.set_service_status("", ServingStatus::NotServing).await;
    health.set_service_status(INVENTORY, ServingStatus::NotServing).await;
}
