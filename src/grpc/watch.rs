//! WatchAvailability: a snapshot (or a resume position), then every change
//! of the watched records, from Redis while catching up and from the
//! service's event hub once live.

use std::sync::Arc;
use std::time::Duration;

use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use super::{Limits, convert, validate};
use crate::domain::{Error, EventHub, EventId, LifecycleEvent, StockStore, WatchPosition};
use crate::pb;

/// How many events a watcher may fall behind before it is told to catch up.
const WATCH_BUFFER: usize = 256;

/// A watcher that hears nothing from the hub this long reads Redis itself.
const WATCH_QUIET: Duration = Duration::from_millis(250);

/// Starts a watch of `r`'s records: validates it, subscribes to `events`,
/// and spawns the task that feeds the returned stream.
pub(super) async fn watch<S: StockStore>(
    store: &Arc<S>,
    events: &EventHub,
    limits: &Limits,
    r: pb::WatchAvailabilityRequest,
) -> Result<ReceiverStream<Result<pb::AvailabilityEvent, Status>>, Status> {
    let records = validate::stock_keys(limits, &r.keys)?;
    // Subscribe before reading anything, so nothing falls between.
    let hub = events.subscribe();
    let mut partitions: Vec<usize> = records.iter().map(|r| store.partition_of(&r.sku)).collect();
    partitions.sort_unstable();
    partitions.dedup();
    let mut positions = Vec::with_capacity(partitions.len());
    for &partition in &partitions {
        positions.push((partition, store.event_position(partition).await?));
    }
    let (tx, rx) = tokio::sync::mpsc::channel(WATCH_BUFFER + records.len());
    let from = if r.after_event_id.is_empty() {
        // A snapshot of each record, stamped with the newest position.
        let mut now = WatchPosition::default();
        for (partition, position) in &positions {
            now.set(*partition, position.last);
        }
        let views = store.get_stock(&records).await?;
        for view in views.iter().flatten() {
            // The channel has room for every snapshot: this cannot wait.
            let _ = tx.send(Ok(convert::snapshot_event(view, &now))).await;
        }
        now
    } else {
        let not_ours = || Error::invalid("after_event_id", "is not an event id received from WatchAvailability");
        let after = WatchPosition::parse(&r.after_event_id).ok_or_else(not_ours)?;
        let mut from = WatchPosition::default();
        for (partition, position) in &positions {
            // A watch of the same records resumes from their partitions.
            let at = after.get(*partition).ok_or_else(|| {
                Error::invalid(
                    "after_event_id",
                    "comes from a watch of other records; resume with the same keys, or start without it",
                )
            })?;
            if at < position.trimmed_through {
                return Err(Error::invalid(
                    "after_event_id",
                    format!(
                        "is older than the retained events (trimmed through {}); start again without it",
                        position.trimmed_through
                    ),
                )
                .into());
            }
            from.set(*partition, at);
        }
        from
    };
    let wanted = records.iter().map(|r| (r.sku.to_string(), r.warehouse.to_string())).collect();
    let (closed, store) = (events.closed(), store.clone());
    tokio::spawn(async move {
        tokio::select! {
            () = follow(store, hub, wanted, from, tx.clone()) => {}
            () = closed => {
                let _ = tx.send(Err(Status::unavailable("the service is shutting down; resume after your last event_id elsewhere"))).await;
            }
        }
    });
    Ok(ReceiverStream::new(rx))
}

/// Follows, into `tx`, the event stream of each partition `from` has a position in:
/// reads what it missed from Redis, then takes new events from the hub,
/// going back to Redis whenever it falls behind. Each event sent carries the
/// whole position after it, so a watcher resumes from any event it received.
/// Returns when the watcher disconnects.
async fn follow<S: StockStore>(
    store: Arc<S>,
    mut hub: tokio::sync::broadcast::Receiver<Arc<LifecycleEvent>>,
    records: std::collections::HashSet<(String, String)>,
    mut from: WatchPosition,
    tx: tokio::sync::mpsc::Sender<Result<pb::AvailabilityEvent, Status>>,
) {
    use tokio::sync::broadcast::error::RecvError;
    let wanted = |e: &LifecycleEvent| {
        let (sku, warehouse) = e.record();
        records.contains(&(sku.to_owned(), warehouse.to_owned()))
    };
    loop {
        // Catch up from Redis.
        let partitions: Vec<usize> = from.partitions().collect();
        for partition in partitions {
            if !replay(store.as_ref(), partition, &mut from, None, &wanted, &tx).await {
                return;
            }
        }
        // Then live, until the hub says we fell behind or stays quiet. The
        // tailers run only while someone watches, so one may have started
        // after our catch-up read: the first live event of each partition
        // fills any gap between the two from Redis, and a quiet hub sends us
        // back to Redis to look.
        let mut gap_checked = std::collections::HashSet::new();
        loop {
            let Ok(received) = tokio::time::timeout(WATCH_QUIET, hub.recv()).await else { break };
            match received {
                Ok(event) => {
                    let Some(at) = from.get(event.partition) else { continue };
                    if event.id <= at {
                        continue;
                    }
                    if gap_checked.insert(event.partition) {
                        if !replay(store.as_ref(), event.partition, &mut from, Some(event.id), &wanted, &tx).await {
                            return;
                        }
                        continue;
                    }
                    from.set(event.partition, event.id);
                    if wanted(&event) && tx.send(Ok(convert::availability_event(&event, &from))).await.is_err() {
                        return;
                    }
                }
                Err(RecvError::Lagged(_)) => break,
                Err(RecvError::Closed) => {
                    let _ = tx.send(Err(Status::unavailable("the service is shutting down; resume elsewhere"))).await;
                    return;
                }
            }
        }
    }
}

/// Sends the wanted events of `partition` after `from` from Redis, up to and
/// including `upto` (to the end when `None`), moving `from` along. False
/// when the watch is over: the watcher left, or Redis failed (the watcher
/// was told).
async fn replay<S: StockStore>(
    store: &S,
    partition: usize,
    from: &mut WatchPosition,
    upto: Option<EventId>,
    wanted: &impl Fn(&LifecycleEvent) -> bool,
    tx: &tokio::sync::mpsc::Sender<Result<pb::AvailabilityEvent, Status>>,
) -> bool {
    loop {
        let after = from.get(partition).unwrap_or_default();
        let batch = match store.events_after(partition, after, 500).await {
            Ok(batch) => batch,
            Err(e) => {
                let _ = tx.send(Err(e.into())).await;
                return false;
            }
        };
        let done = batch.len() < 500;
        for event in batch.into_iter().take_while(|e| upto.is_none_or(|upto| e.id <= upto)) {
            from.set(partition, event.id);
            if wanted(&event) && tx.send(Ok(convert::availability_event(&event, from))).await.is_err() {
                return false;
            }
        }
        let reached = from.get(partition).unwrap_or_default();
        if done || upto.is_some_and(|upto| reached >= upto) {
            return true;
        }
    }
}
