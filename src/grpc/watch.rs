//! WatchAvailability: a snapshot (or a resume position), then every change
//! of the watched records, from Redis while catching up and from the
//! service's event hub once live.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use super::{Limits, convert, validate};
use crate::domain::{Error, EventHub, EventId, LifecycleEvent, StockStore, WatchPosition};
use crate::pb;

/// How many events a watcher may fall behind before it is told to catch up.
const WATCH_BUFFER: usize = 256;

/// A watcher that hears nothing from the hub this long looks whether it
/// must read Redis itself.
const WATCH_QUIET: Duration = Duration::from_millis(250);

/// How often a watcher that does not trust the hub for every partition yet
/// looks (in memory) whether a tailer run now covers one: it then reads
/// the gap before the run's start from Redis at once, instead of waiting
/// for a live event or for the quiet to pass.
const COVERAGE_CHECK: Duration = Duration::from_millis(10);

/// Events one replay read takes.
const REPLAY_BATCH: usize = 500;

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
    let wanted: std::collections::HashSet<(String, String)> =
        records.iter().map(|r| (r.sku.to_string(), r.warehouse.to_string())).collect();
    let render = move |e: &LifecycleEvent, at: &WatchPosition| {
        let (sku, warehouse) = e.record();
        wanted.contains(&(sku.to_owned(), warehouse.to_owned())).then(|| convert::availability_event(e, at))
    };
    spawn_follow(store, events, hub, from, render, tx);
    Ok(ReceiverStream::new(rx))
}

/// Spawns [`follow`] of `from` into `tx`, which ends with UNAVAILABLE when
/// the service shuts down, and as soon as the receiver of `tx` is gone.
pub(super) fn spawn_follow<S, T, R>(
    store: &Arc<S>,
    events: &EventHub,
    hub: tokio::sync::broadcast::Receiver<Arc<LifecycleEvent>>,
    from: WatchPosition,
    render: R,
    tx: tokio::sync::mpsc::Sender<Result<T, Status>>,
) where
    S: StockStore,
    T: Send + 'static,
    R: Fn(&LifecycleEvent, &WatchPosition) -> Option<T> + Send + Sync + 'static,
{
    let (closed, store, events) = (events.closed(), store.clone(), events.clone());
    tokio::spawn(async move {
        let gone = tx.clone();
        tokio::select! {
            () = follow(store, events, hub, render, from, tx.clone()) => {}
            // The client left: a watch that has nothing to send would not
            // notice by itself, and would keep the tailers reading for nobody.
            () = gone.closed() => {}
            () = closed => {
                let _ = tx.send(Err(Status::unavailable("the service is shutting down; resume after your last event_id elsewhere"))).await;
            }
        }
    });
}

/// Follows, into `tx`, the event stream of each partition `from` has a position in
/// (what `render` makes of each event, where it makes something):
/// reads what it missed from Redis, then takes new events from the hub,
/// going back to Redis whenever it falls behind. Each event sent carries the
/// whole position after it, so a watcher resumes from any event it received.
/// Returns when the watcher disconnects.
///
/// The tailers run only while someone watches, so one may start after this
/// watcher read Redis, from the newest event then: events between the two
/// reach this watcher only from Redis. A partition is trusted, read from the
/// hub alone, once the tailer run that covers it started at or before this
/// watcher's position there (see [`crate::domain::Coverage`]); until then, the first live
/// event of a partition fills the gap from Redis, and a quiet hub sends the
/// watcher back to Redis for the partitions it does not trust. An idle
/// watcher of trusted partitions makes no Redis call at all.
async fn follow<S: StockStore, T>(
    store: Arc<S>,
    hub: EventHub,
    mut receiver: tokio::sync::broadcast::Receiver<Arc<LifecycleEvent>>,
    render: impl Fn(&LifecycleEvent, &WatchPosition) -> Option<T>,
    mut from: WatchPosition,
    tx: tokio::sync::mpsc::Sender<Result<T, Status>>,
) {
    use tokio::sync::broadcast::error::RecvError;
    // Partition -> the tailer run it is trusted under.
    let mut trusted: HashMap<usize, u64> = HashMap::new();
    let mut catch_up: Vec<usize> = from.partitions().collect();
    loop {
        // Catch up from Redis where the hub alone may not do.
        for partition in catch_up.drain(..) {
            if !replay(store.as_ref(), partition, &mut from, None, &render, &tx).await {
                return;
            }
            trust(&hub, partition, &from, &mut trusted);
        }
        let mut gap_checked: HashMap<usize, Option<u64>> = HashMap::new();
        let mut heard = tokio::time::Instant::now();
        loop {
            let untrusted: Vec<usize> = from.partitions().filter(|p| !trust(&hub, *p, &from, &mut trusted)).collect();
            let wait = if untrusted.is_empty() { WATCH_QUIET } else { COVERAGE_CHECK };
            let Ok(received) = tokio::time::timeout(wait, receiver.recv()).await else {
                // A tailer run started after this watcher's position: the
                // events between are read from Redis now, and the hub
                // brings the rest.
                let gaps: Vec<usize> = untrusted.iter().copied().filter(|p| hub.coverage(*p).is_some()).collect();
                if !gaps.is_empty() {
                    catch_up = gaps;
                    break;
                }
                // Quiet: look in Redis only where no tailer run vouches for the hub.
                if heard.elapsed() >= WATCH_QUIET {
                    catch_up = untrusted;
                    break;
                }
                continue;
            };
            heard = tokio::time::Instant::now();
            match received {
                Ok(event) => {
                    let Some(at) = from.get(event.partition) else { continue };
                    if event.id <= at {
                        continue;
                    }
                    // Trusted under the run that covers the partition now,
                    // not one that ended since (a tailer restarts after going idle).
                    let covered = hub.coverage(event.partition).map(|c| c.run);
                    let trusted_now = covered.is_some() && trusted.get(&event.partition) == covered.as_ref();
                    // The gap is filled once per tailer run: a new run may
                    // have started after events the last one never sent.
                    if !trusted_now && gap_checked.insert(event.partition, covered) != Some(covered) {
                        // Fill the gap before this event from Redis; the
                        // replay sends the event too.
                        if !replay(store.as_ref(), event.partition, &mut from, Some(event.id), &render, &tx).await {
                            return;
                        }
                        continue;
                    }
                    from.set(event.partition, event.id);
                    if let Some(out) = render(&event, &from)
                        && tx.send(Ok(out)).await.is_err()
                    {
                        return;
                    }
                }
                Err(RecvError::Lagged(_)) => {
                    // Fell behind the hub: everything from Redis again.
                    trusted.clear();
                    catch_up = from.partitions().collect();
                    break;
                }
                Err(RecvError::Closed) => {
                    let _ = tx.send(Err(Status::unavailable("the service is shutting down; resume elsewhere"))).await;
                    return;
                }
            }
        }
    }
}

/// Whether the hub alone brings every event of `partition` after this
/// watcher's position: the tailer run covering it now is the one it was
/// trusted under, or one that started at or before the position (recorded
/// as trusted). A partition no run covers is not trusted.
fn trust(hub: &EventHub, partition: usize, from: &WatchPosition, trusted: &mut HashMap<usize, u64>) -> bool {
    let (Some(coverage), Some(at)) = (hub.coverage(partition), from.get(partition)) else {
        trusted.remove(&partition);
        return false;
    };
    if trusted.get(&partition) == Some(&coverage.run) {
        return true;
    }
    if coverage.after <= at {
        trusted.insert(partition, coverage.run);
        return true;
    }
    trusted.remove(&partition);
    false
}

/// Whether every event of `partition` after `after` was still in Redis
/// when the read before this returned: nothing after it was trimmed (or
/// deleted) by now. Otherwise the watcher is told, and the watch ends.
async fn still_retained<S: StockStore, T>(
    store: &S,
    partition: usize,
    after: EventId,
    tx: &tokio::sync::mpsc::Sender<Result<T, Status>>,
) -> bool {
    let lost = match store.event_position(partition).await {
        Ok(position) => position.trimmed_through > after,
        Err(e) => {
            let _ = tx.send(Err(e.into())).await;
            return false;
        }
    };
    if lost {
        let lost = "events this watch had not read yet were trimmed; start again without after_event_id";
        let _ = tx.send(Err(Status::out_of_range(lost))).await;
    }
    !lost
}

/// Sends what `render` makes of the events of `partition` after `from` from Redis, up to and
/// including `upto` (to the end when `None`), moving `from` along. False
/// when the watch is over: the watcher left, Redis failed, or the events up
/// to `upto` are no longer in Redis (trimmed before this watcher read
/// them), and the watcher was told.
async fn replay<S: StockStore, T>(
    store: &S,
    partition: usize,
    from: &mut WatchPosition,
    upto: Option<EventId>,
    render: &impl Fn(&LifecycleEvent, &WatchPosition) -> Option<T>,
    tx: &tokio::sync::mpsc::Sender<Result<T, Status>>,
) -> bool {
    loop {
        let after = from.get(partition).unwrap_or_default();
        let batch = match store.events_after(partition, after, REPLAY_BATCH).await {
            Ok(batch) => batch,
            Err(e) => {
                let _ = tx.send(Err(e.into())).await;
                return false;
            }
        };
        if after != EventId::default() && !still_retained(store, partition, after, tx).await {
            return false;
        }
        let short = batch.len() < REPLAY_BATCH;
        for event in batch {
            if upto.is_some_and(|upto| event.id > upto) {
                break;
            }
            from.set(partition, event.id);
            if let Some(out) = render(&event, from)
                && tx.send(Ok(out)).await.is_err()
            {
                return false;
            }
        }
        let reached = from.get(partition).unwrap_or_default();
        match upto {
            Some(upto) if reached >= upto => return true,
            // Redis holds nothing more up to `upto`: trimmed away unread.
            Some(_) if short || reached == after => {
                let lost = "events this watch had not read yet were trimmed; start again without after_event_id";
                let _ = tx.send(Err(Status::out_of_range(lost))).await;
                return false;
            }
            None if short => return true,
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{RecordKey, ScaledStock, SetStockCommand, Sku, UnitScale, WarehouseId};
    use crate::store::redis::{RedisSettings, RedisStore, Topology};

    /// Against a real Redis: the events between a watcher's position and
    /// the live event it was handed are gone (trimmed), and more than a
    /// read's worth of newer ones are there. The replay must end the watch
    /// and say why, not read the same batch forever.
    #[tokio::test]
    async fn a_replay_past_events_trimmed_unread_ends_the_watch_instead_of_spinning() {
        let redis = crate::embedded_redis::EmbeddedRedis::start(std::path::Path::new("redis-server")).await.unwrap();
        let settings = RedisSettings {
            topology: Topology::Standalone { url: redis.url() },
            timeout: Duration::from_secs(2),
            max_hold: Duration::from_secs(3600),
            retention: Duration::from_secs(3600),
            key_prefix: "sl".into(),
            partitions: 1,
            request_id_claims: false,
            audit_max_events: 1000,
            force_unlock_ttl: Duration::from_secs(3600),
            durability: None,
        };
        let store = RedisStore::connect(&settings).await.unwrap();
        let record = RecordKey::new(Sku::parse("S", "sku").unwrap(), WarehouseId::parse("W", "warehouse_id").unwrap());
        for version in 1..=(REPLAY_BATCH as u64 + 100) {
            let cmd = SetStockCommand {
                record: record.clone(),
                physical: ScaledStock(version as i64),
                reserved: ScaledStock(0),
                in_transit: ScaledStock(0),
                unit_scale: UnitScale::new(0, "unit_scale").unwrap(),
                source_version: version,
                request_id: None,
                actor: "test".into(),
            };
            store.set_stock(cmd).await.unwrap();
        }
        let events = store.events_after(0, EventId::default(), REPLAY_BATCH * 2).await.unwrap();
        let client = redis::Client::open(redis.url()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let gone: Vec<String> = events[1..=10].iter().map(|e| e.id.to_string()).collect();
        let _: u64 = redis::cmd("XDEL").arg("sl:{p0.0}:events").arg(&gone).query_async(&mut conn).await.unwrap();

        let mut from = WatchPosition::default();
        from.set(0, events[0].id);
        let (tx, mut rx) = tokio::sync::mpsc::channel(REPLAY_BATCH * 2);
        let all = |e: &LifecycleEvent, at: &WatchPosition| Some(convert::availability_event(e, at));
        let replayed = replay(&store, 0, &mut from, Some(events[5].id), &all, &tx);
        let ended = tokio::time::timeout(Duration::from_secs(5), replayed).await;
        assert_eq!(ended, Ok(false), "the replay went on");
        let status = rx.recv().await.unwrap().unwrap_err();
        assert_eq!(status.code(), tonic::Code::OutOfRange, "{status:?}");
        assert_eq!(from.get(0), Some(events[0].id), "nothing was sent");

        // A catch-up (to the end) past the same gap must not skip it either.
        let (tx, mut rx) = tokio::sync::mpsc::channel(REPLAY_BATCH * 2);
        let replayed = replay(&store, 0, &mut from, None, &all, &tx);
        let ended = tokio::time::timeout(Duration::from_secs(5), replayed).await;
        assert_eq!(ended, Ok(false), "the catch-up went past trimmed events");
        let status = rx.recv().await.unwrap().unwrap_err();
        assert_eq!(status.code(), tonic::Code::OutOfRange, "{status:?}");
    }
}
