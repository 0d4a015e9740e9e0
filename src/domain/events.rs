//! The lifecycle event stream as the service reads it: events, their
//! positions, and the hub that fans newly appended events out to watchers.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::broadcast;

/// One entry of the lifecycle event stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LifecycleEvent {
    /// The partition whose stream holds it (see [`crate::store::redis::Keys`]).
    pub partition: usize,
    /// The stream entry id, `<ms>-<seq>`, ordered within its partition.
    pub id: EventId,
    /// Its fields as stored: action, record, unit_scale, the figures as
    /// scaled integers, ... (see lua/lib.lua `emit`).
    pub fields: BTreeMap<String, String>,
}

impl LifecycleEvent {
    /// A field as stored, or "" when absent.
    pub fn field(&self, name: &str) -> &str {
        self.fields.get(name).map_or("", String::as_str)
    }

    /// The SKU and warehouse of the record the event is about.
    pub fn record(&self) -> (&str, &str) {
        let record = self.field("record");
        record.split_once('|').unwrap_or((record, ""))
    }

    fn scaled(&self, name: &str) -> Option<i64> {
        self.field(name).parse().ok()
    }

    fn unit_scale(&self) -> u32 {
        self.field("unit_scale").parse().unwrap_or(0)
    }

    /// A figure (physical, locked, quantity, ...) as a decimal, or "" when
    /// the event has none.
    pub fn decimal(&self, name: &str) -> String {
        self.scaled(name).map_or_else(String::new, |v| super::format_scaled(v, self.unit_scale()))
    }

    /// Available after the change: physical - locked - reserved + in_transit,
    /// floored at zero, as a decimal.
    pub fn available(&self) -> String {
        let figure = |name| self.scaled(name).unwrap_or(0);
        let available = figure("physical") - figure("locked") - figure("reserved") + figure("in_transit");
        super::format_scaled(available.max(0), self.unit_scale())
    }

    /// The lock id of a lock event (record|token-nonce), or "".
    pub fn lock_id(&self) -> String {
        match self.field("token") {
            "" => String::new(),
            token => format!("{}|{token}-{}", self.field("record"), self.field("nonce")),
        }
    }
}

/// A stream entry id, ordered as Redis orders them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EventId {
    /// Redis time in ms.
    pub ms: u64,
    /// Sequence within the millisecond.
    pub seq: u64,
}

impl EventId {
    /// Parses `<ms>-<seq>`.
    pub fn parse(text: &str) -> Option<Self> {
        let (ms, seq) = text.split_once('-')?;
        Some(Self { ms: ms.parse().ok()?, seq: seq.parse().ok()? })
    }
}

impl std::fmt::Display for EventId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// Where a watch stands in each partition it follows; what the event ids
/// that WatchAvailability hands out encode. Printed `<ms>-<seq>` when it
/// follows partition 0 alone (every deployment with one partition), else
/// `<partition>/<ms>-<seq>` for each partition, joined by `,`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WatchPosition(BTreeMap<usize, EventId>);

impl WatchPosition {
    /// Parses what [`WatchPosition`]'s `Display` printed.
    pub fn parse(text: &str) -> Option<Self> {
        if let Some(id) = EventId::parse(text) {
            return Some(Self(BTreeMap::from([(0, id)])));
        }
        let mut positions = BTreeMap::new();
        for part in text.split(',') {
            let (partition, id) = part.split_once('/')?;
            positions.insert(partition.parse().ok()?, EventId::parse(id)?);
        }
        Some(Self(positions))
    }

    /// The position in `partition`, if followed.
    pub fn get(&self, partition: usize) -> Option<EventId> {
        self.0.get(&partition).copied()
    }

    /// The partitions followed, in order.
    pub fn partitions(&self) -> impl Iterator<Item = usize> + '_ {
        self.0.keys().copied()
    }

    /// Moves the position in `partition` to `id`.
    pub fn set(&mut self, partition: usize, id: EventId) {
        self.0.insert(partition, id);
    }
}

impl std::fmt::Display for WatchPosition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let [(0, id)] = self.0.iter().collect::<Vec<_>>()[..] {
            return write!(f, "{id}");
        }
        let mut first = true;
        for (partition, id) in &self.0 {
            write!(f, "{}{partition}/{id}", if first { "" } else { "," })?;
            first = false;
        }
        Ok(())
    }
}

/// Where the stream stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamPosition {
    /// The newest id ever appended (0-0 for a new stream).
    pub last: EventId,
    /// Events up to this id were trimmed away; resuming before it would miss some.
    pub trimmed_through: EventId,
}

/// Fans newly appended events out to every watcher of this process.
#[derive(Clone)]
pub struct EventHub {
    sender: broadcast::Sender<Arc<LifecycleEvent>>,
    /// Turns true when the service shuts down, so watchers end their streams
    /// instead of holding the drain open.
    closing: tokio::sync::watch::Sender<bool>,
    /// Per partition, the run of its tailer that publishes every event, if
    /// one does (see [`Coverage`]).
    coverage: Arc<std::sync::Mutex<std::collections::HashMap<usize, Coverage>>>,
}

/// One uninterrupted run of a partition's tailer: it publishes every event
/// of the partition after `after`, in order, for as long as the run lasts.
/// A watcher that has every event up to `after` or later, and subscribed
/// before it read them, gets every later one from the hub while the same
/// run covers the partition, with no read of Redis of its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Coverage {
    /// Tells one run from another.
    pub run: u64,
    /// The run publishes every event after this one.
    pub after: EventId,
}

/// Numbers the runs of every hub's tailers.
static RUNS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl EventHub {
    /// A hub that buffers `capacity` events per slow watcher before it lags.
    pub fn new(capacity: usize) -> Self {
        Self {
            sender: broadcast::channel(capacity).0,
            closing: tokio::sync::watch::channel(false).0,
            coverage: Arc::default(),
        }
    }

    /// A tailer starts publishing every event of `partition` after `after`.
    pub fn cover(&self, partition: usize, after: EventId) {
        let run = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.coverage.lock().expect("coverage lock poisoned").insert(partition, Coverage { run, after });
    }

    /// The tailer of `partition` stopped: events after its last may be missed.
    pub fn uncover(&self, partition: usize) {
        self.coverage.lock().expect("coverage lock poisoned").remove(&partition);
    }

    /// The run that covers `partition` now, if any.
    pub fn coverage(&self, partition: usize) -> Option<Coverage> {
        self.coverage.lock().expect("coverage lock poisoned").get(&partition).copied()
    }

    /// Tells every watcher the service is shutting down.
    pub fn close(&self) {
        self.closing.send_replace(true);
    }

    /// Completes once [`EventHub::close`] was called.
    pub fn closed(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut closing = self.closing.subscribe();
        async move {
            let _ = closing.wait_for(|closed| *closed).await;
        }
    }

    /// Delivers an event to the current watchers.
    pub fn publish(&self, event: LifecycleEvent) {
        // No watcher is not an error.
        let _ = self.sender.send(Arc::new(event));
    }

    /// Whether anyone is watching: with no watcher there is nothing to fan out.
    pub fn has_watchers(&self) -> bool {
        self.sender.receiver_count() > 0
    }

    /// A new watcher's receiver: it sees events published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<LifecycleEvent>> {
        self.sender.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_order_like_redis() {
        let a = EventId::parse("1700000000000-9").unwrap();
        let b = EventId::parse("1700000000001-0").unwrap();
        assert!(a < b);
        assert_eq!(a.to_string(), "1700000000000-9");
        assert!(EventId::parse("17-x").is_none());
    }

    #[test]
    fn watch_positions_print_as_they_parse() {
        let one = WatchPosition::parse("1700000000000-9").unwrap();
        assert_eq!(one.to_string(), "1700000000000-9");
        assert_eq!(one.get(0), EventId::parse("1700000000000-9"));
        let mut two = WatchPosition::default();
        two.set(3, EventId { ms: 5, seq: 1 });
        two.set(0, EventId { ms: 7, seq: 0 });
        assert_eq!(two.to_string(), "0/7-0,3/5-1");
        assert_eq!(WatchPosition::parse(&two.to_string()), Some(two));
        for bad in ["", "x", "3/", "a/1-0", "1/1-0,", "1-0,2/1-0"] {
            assert_eq!(WatchPosition::parse(bad), None, "{bad}");
        }
    }
}
