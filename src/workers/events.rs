//! The event tailer: follows every partition's lifecycle event stream into
//! the service's [`EventHub`] while someone watches, and trims each stream
//! by age (and a cap on its length).

use std::time::Duration;

use tokio::sync::watch;

use crate::domain::{Error, EventHub, EventRetention, EventStream};

/// How often an idle tailer looks for watchers.
const IDLE_CHECK: Duration = Duration::from_millis(50);

/// How often each stream is trimmed.
const TRIM_EVERY: Duration = Duration::from_secs(1);

/// How long a failed read waits before the next.
const RETRY: Duration = Duration::from_millis(500);

/// Tails every partition's event stream into `hub` until `stop`, and trims
/// each to what `keep` keeps.
pub async fn run<S: EventStream + Sync + 'static>(
    store: std::sync::Arc<S>,
    hub: EventHub,
    keep: EventRetention,
    stop: watch::Receiver<bool>,
) where
    S::Tail: 'static,
{
    let mut tailers = tokio::task::JoinSet::new();
    for partition in 0..store.partitions() {
        let (store, hub, stop) = (store.clone(), hub.clone(), stop.clone());
        tailers.spawn(async move { tail_partition(store.as_ref(), partition, hub, keep, stop).await });
    }
    while tailers.join_next().await.is_some() {}
}

/// Tails one partition's stream.
async fn tail_partition<S: EventStream>(
    store: &S,
    partition: usize,
    hub: EventHub,
    keep: EventRetention,
    mut stop: watch::Receiver<bool>,
) {
    let mut tail: Option<S::Tail> = None;
    let mut last = None;
    let mut trimmed_at = tokio::time::Instant::now();
    loop {
        if *stop.borrow() {
            return;
        }
        if trimmed_at.elapsed() > TRIM_EVERY {
            trimmed_at = tokio::time::Instant::now();
            if let Err(e) = store.trim_events(partition, keep).await {
                // One per partition each second while Redis is away; health says so once.
                tracing::debug!(error = %e, "trimming the event stream failed");
            }
        }
        if !hub.has_watchers() {
            // Reading and decoding every event for nobody cost the service
            // a tenth of its CPU under load. Watchers catch up from Redis
            // themselves, so the tailer restarts from the newest event.
            if last.take().is_some() {
                hub.uncover(partition);
            }
            tail = None;
            tokio::select! {
                _ = tokio::time::sleep(IDLE_CHECK) => {}
                _ = stop.changed() => return,
            }
            continue;
        }
        let result = async {
            let tail = match &mut tail {
                Some(tail) => tail,
                None => tail.insert(store.open_tail().await?),
            };
            let from = match last {
                Some(id) => id,
                None => {
                    // A new run: every event after this one is published.
                    let newest = store.event_position(partition).await?.last;
                    hub.cover(partition, newest);
                    *last.insert(newest)
                }
            };
            for event in store.tail_events(tail, partition, from).await? {
                last = Some(event.id);
                hub.publish(event);
            }
            Ok::<_, Error>(())
        }
        .await;
        if let Err(e) = result {
            tracing::warn!(error = %e, "event stream tailer: retrying");
            // A new run from the newest event: while this one could not
            // read, its stream may have been trimmed past where it stood,
            // and no watcher may count on it for what it missed.
            if last.take().is_some() {
                hub.uncover(partition);
            }
            tail = None;
            tokio::select! {
                _ = tokio::time::sleep(RETRY) => {}
                _ = stop.changed() => return,
            }
        }
    }
}
