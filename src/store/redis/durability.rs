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
//!
//! A WAIT only speaks for the Redis process it runs on. Each caller
//! registers with the link's era taken before its change (see `Link::era`),
//! and a round answers with its replicas only the callers of its own era,
//! on a primary that still has the scripts (no restart it has not seen) and
//! whose era did not move during the round. Every other caller, whose change
//! went to a primary that failed over or restarted since, is told that its
//! change is not durable: it may have been lost with that primary.

use std::sync::{Arc, Weak};
use std::time::Duration;

use super::link::Conn;
use tokio::sync::{mpsc, oneshot};

use super::call::store_error;
use super::link::Link;
use super::scripts;
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
    queue: mpsc::UnboundedSender<(u64, oneshot::Sender<u32>)>,
}

impl Waiter {
    /// Starts the group-commit task; it ends when the waiter is dropped.
    pub(super) fn start(settings: DurabilitySettings, link: &Arc<Link>, marker_key: String) -> Self {
        let (queue, waiting) = mpsc::unbounded_channel();
        tokio::spawn(group_commit(settings, Arc::downgrade(link), marker_key, waiting));
        Self { settings, queue }
    }

    /// Waits until the required replicas hold every change completed so far
    /// on the primary of era `era` (taken before the change).
    pub(super) async fn wait(&self, era: u64) -> Durability {
        let (tx, rx) = oneshot::channel();
        let acknowledged = if self.queue.send((era, tx)).is_ok() { rx.await.unwrap_or(0) } else { 0 };
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
    mut waiting: mpsc::UnboundedReceiver<(u64, oneshot::Sender<u32>)>,
) {
    // The dedicated connection, and the era it was opened in: after a
    // failover or a restart it is opened again.
    let mut conn: Option<(u64, Conn)> = None;
    let mut batch = Vec::new();
    while waiting.recv_many(&mut batch, usize::MAX).await > 0 {
        let Some(link) = link.upgrade() else { return };
        let (era, acknowledged) = match acknowledge(&link, &mut conn, &marker_key, settings).await {
            Ok(answer) => answer,
            Err(e) => {
                tracing::warn!(error = %e, "cannot wait for replica acknowledgements");
                conn = None;
                (None, 0)
            }
        };
        for (waiter_era, waiter) in batch.drain(..) {
            let _ = waiter.send(if era == Some(waiter_era) { acknowledged } else { 0 });
        }
    }
}

/// One marker write and WAIT: the era it speaks for (None: none, the
/// primary changed or restarted under it) and how many replicas hold
/// everything the primary of that era executed before it.
async fn acknowledge(
    link: &Link,
    conn: &mut Option<(u64, Conn)>,
    marker_key: &str,
    settings: DurabilitySettings,
) -> Result<(Option<u64>, u32), Error> {
    let (era, connection) = match conn {
        Some((era, connection)) if link.era() == *era => (*era, connection),
        _ => {
            let (era, connection) = conn.insert(link.dedicated(settings.timeout).await?);
            (*era, connection)
        }
    };
    let wait_ms = u64::try_from(settings.timeout.as_millis()).unwrap_or(u64::MAX).max(1);
    // Named for the dataset as the era knows it (a recovery moves the era).
    let lock_sha = link.scripts().sha(&scripts::LOCK).to_owned();
    // A primary without the scripts was restarted (and the connection found
    // it again by itself), replaced, or flushed them: the changes before may be lost.
    let (loaded, _, acknowledged): (Vec<bool>, u64, u32) = redis::pipe()
        .cmd("SCRIPT")
        .arg("EXISTS")
        .arg(&lock_sha)
        .cmd("INCR")
        .arg(marker_key)
        .cmd("WAIT")
        .arg(settings.replicas)
        .arg(wait_ms)
        .query_async(connection)
        .await
        .map_err(store_error)?;
    if loaded != [true] || link.era() != era {
        return Ok((None, 0));
    }
    Ok((Some(era), acknowledged))
}
