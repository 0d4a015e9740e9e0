//! Replica acknowledgements of changes (`--durability-replicas N`), by group commit.
//!
//! `WAIT` blocks the connection it is sent on, so it cannot go over the
//! multiplexed connection every call shares. It also only covers the writes
//! of its own connection. Both are solved by one dedicated connection that
//! writes a marker (`INCR <prefix>:durability`) and then WAITs: replication is
//! one ordered stream, so once N replicas hold the marker they hold every
//! write the primary executed before it, the callers' scripts included.
//!
//! Callers whose scripts have completed register and wait; one round trip
//! answers all of them that registered before it started, so the cost is
//! one WAIT per replication round trip, not one per call.

use std::sync::{Arc, Weak};
use std::time::Duration;

use super::link::Conn;
use tokio::sync::{mpsc, oneshot};

use super::call::store_error;
use super::link::Link;
use crate::domain::{Durability, Error};

/// How many replicas must hold each change, and how long to wait for them.
#[derive(Clone, Copy, Debug)]
pub struct DurabilitySettings {
    /// Replicas required.
    pub replicas: u32,
    /// Longest wait.
    pub timeout: Duration,
}

/// Hands waiting callers to the group-commit task.
pub(super) struct Waiter {
    settings: DurabilitySettings,
    queue: mpsc::UnboundedSender<oneshot::Sender<u32>>,
}

impl Waiter {
    /// Starts the group-commit task; it ends when the waiter is dropped.
    pub(super) fn start(settings: DurabilitySettings, link: &Arc<Link>, marker_key: String) -> Self {
        let (queue, waiting) = mpsc::unbounded_channel();
        tokio::spawn(group_commit(settings, Arc::downgrade(link), marker_key, waiting));
        Self { settings, queue }
    }

    /// Waits until the required replicas hold every change completed so far.
    pub(super) async fn wait(&self) -> Durability {
        let (tx, rx) = oneshot::channel();
        let acknowledged = if self.queue.send(tx).is_ok() { rx.await.unwrap_or(0) } else { 0 };
        let durability = Durability { acknowledged, required: self.settings.replicas };
        let outcome = if durability.durable() { "durable" } else { "not_durable" };
        crate::metrics::METRICS.durability.get_or_create(&crate::metrics::DurabilityLabels { outcome }).inc();
        durability
    }
}

async fn group_commit(
    settings: DurabilitySettings,
    link: Weak<Link>,
    marker_key: String,
    mut waiting: mpsc::UnboundedReceiver<oneshot::Sender<u32>>,
) {
    // The dedicated connection, and the primary it goes to: after a
    // failover it is opened again to the new primary.
    let mut conn: Option<(String, Conn)> = None;
    let mut batch = Vec::new();
    while waiting.recv_many(&mut batch, usize::MAX).await > 0 {
        let Some(link) = link.upgrade() else { return };
        let acknowledged = match acknowledge(&link, &mut conn, &marker_key, settings).await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "cannot wait for replica acknowledgements");
                conn = None;
                0
            }
        };
        for waiter in batch.drain(..) {
            let _ = waiter.send(acknowledged);
        }
    }
}

/// One marker write and WAIT: how many replicas hold everything before it.
async fn acknowledge(
    link: &Link,
    conn: &mut Option<(String, Conn)>,
    marker_key: &str,
    settings: DurabilitySettings,
) -> Result<u32, Error> {
    // After a failover the connection is opened again, to the new primary.
    let connection = match conn {
        Some((addr, connection)) if link.is_primary(addr) => connection,
        _ => &mut conn.insert(link.dedicated(settings.timeout).await?).1,
    };
    let wait_ms = u64::try_from(settings.timeout.as_millis()).unwrap_or(u64::MAX).max(1);
    let (_, acknowledged): (u64, u32) = redis::pipe()
        .cmd("INCR")
        .arg(marker_key)
        .cmd("WAIT")
        .arg(settings.replicas)
        .arg(wait_ms)
        .query_async(connection)
        .await
        .map_err(store_error)?;
    Ok(acknowledged)
}
