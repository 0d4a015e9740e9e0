//! The lifecycle event streams on Redis, one per partition: reading them,
//! tailing them into the [`EventHub`], and trimming each to its configured
//! length.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::sync::watch;

use super::call::bounded;
use super::link::Conn;
use super::reply::malformed;
use super::{Partition, RedisStore};
use crate::domain::{Error, EventHub, EventId, LifecycleEvent, StreamPosition};

/// How long one blocking read of the tailer waits for new events.
const BLOCK: Duration = Duration::from_secs(1);

/// Most events one read returns.
const BATCH: usize = 1000;

/// How often an idle tailer looks for watchers.
const IDLE_CHECK: Duration = Duration::from_millis(50);

/// A stream entry as Redis sends it: id, then field, value, field, value...
pub(super) type StreamEntry = (String, Vec<String>);

pub(super) fn parse_entries(partition: Partition, entries: Vec<StreamEntry>) -> Result<Vec<LifecycleEvent>, Error> {
    entries
        .into_iter()
        .map(|(id, flat)| {
            let id = EventId::parse(&id).ok_or_else(|| malformed("a bad event id"))?;
            let mut fields = BTreeMap::new();
            let mut pairs = flat.into_iter();
            while let (Some(name), Some(value)) = (pairs.next(), pairs.next()) {
                fields.insert(name, value);
            }
            Ok(LifecycleEvent { partition, id, fields })
        })
        .collect()
}

impl RedisStore {
    pub(super) async fn read_events_after(
        &self,
        partition: Partition,
        after: EventId,
        count: usize,
    ) -> Result<Vec<LifecycleEvent>, Error> {
        let mut conn = self.link.conn();
        let entries: Vec<(String, Vec<String>)> = self
            .bounded(
                redis::cmd("XRANGE")
                    .arg(self.keys.events(partition))
                    .arg(format!("({after}"))
                    .arg("+")
                    .arg("COUNT")
                    .arg(count)
                    .query_async(&mut conn),
            )
            .await?;
        parse_entries(partition, entries)
    }

    pub(super) async fn read_event_position(&self, partition: Partition) -> Result<StreamPosition, Error> {
        let mut conn = self.link.conn();
        let reply: Result<redis::Value, Error> = self
            .bounded(redis::cmd("XINFO").arg("STREAM").arg(self.keys.events(partition)).query_async(&mut conn))
            .await;
        let info = match reply {
            Ok(info) => info,
            // No stream yet: nothing was ever appended or trimmed.
            Err(Error::Internal { detail }) if detail.contains("no such key") => {
                return Ok(StreamPosition { last: EventId::default(), trimmed_through: EventId::default() });
            }
            Err(e) => return Err(e),
        };
        let pairs: Vec<(String, redis::Value)> = match info {
            redis::Value::Map(map) => {
                map.into_iter().filter_map(|(k, v)| redis::from_redis_value::<String>(k).ok().map(|k| (k, v))).collect()
            }
            redis::Value::Array(items) => items
                .chunks(2)
                .filter_map(|kv| redis::from_redis_value::<String>(kv[0].clone()).ok().map(|k| (k, kv[1].clone())))
                .collect(),
            _ => return Err(malformed("an XINFO reply that is not a map")),
        };
        let id = |name: &str| {
            pairs
                .iter()
                .find(|(k, _)| k == name)
                .and_then(|(_, v)| redis::from_redis_value::<String>(v.clone()).ok())
                .and_then(|s| EventId::parse(&s))
                .unwrap_or_default()
        };
        let number = |name: &str| {
            pairs
                .iter()
                .find(|(k, _)| k == name)
                .and_then(|(_, v)| redis::from_redis_value::<u64>(v.clone()).ok())
                .unwrap_or(0)
        };
        // Trimming (unlike XDEL) leaves max-deleted-entry-id alone: when
        // entries were removed, everything before the first kept one is gone.
        let removed = number("entries-added") > number("length");
        let first = id("recorded-first-entry-id");
        let trimmed_through = match (removed, first) {
            (false, _) => EventId::default(),
            (true, EventId { ms, seq: 0 }) => EventId { ms: ms.saturating_sub(1), seq: u64::MAX },
            (true, EventId { ms, seq }) => EventId { ms, seq: seq - 1 },
        };
        let trimmed_through = trimmed_through.max(id("max-deleted-entry-id"));
        Ok(StreamPosition { last: id("last-generated-id"), trimmed_through })
    }

    /// Trims a partition's event stream to about `max_len` events.
    async fn trim_events(&self, partition: Partition, max_len: u64) -> Result<(), Error> {
        let mut conn = self.link.conn();
        let mut trim = redis::cmd("XTRIM");
        trim.arg(self.keys.events(partition)).arg("MAXLEN").arg("~").arg(max_len);
        let _: i64 = self.bounded(trim.query_async(&mut conn)).await?;
        Ok(())
    }

    /// Tails every partition's event stream into `hub` until `stop`, and
    /// trims each to about `max_len` events.
    pub async fn tail_events(&self, hub: EventHub, max_len: u64, stop: watch::Receiver<bool>) {
        let mut tailers = tokio::task::JoinSet::new();
        for partition in 0..self.keys.partitions() {
            let (store, hub, stop) = (self.clone(), hub.clone(), stop.clone());
            tailers.spawn(async move { store.tail_partition(partition, hub, max_len, stop).await });
        }
        while tailers.join_next().await.is_some() {}
    }

    /// Tails one partition's stream, on a connection of its own (a blocking
    /// read would stall every call sharing the main one).
    async fn tail_partition(&self, partition: Partition, hub: EventHub, max_len: u64, mut stop: watch::Receiver<bool>) {
        let mut conn: Option<Conn> = None;
        let mut last = None;
        let mut trimmed_at = tokio::time::Instant::now();
        loop {
            if *stop.borrow() {
                return;
            }
            if trimmed_at.elapsed() > Duration::from_secs(1) {
                trimmed_at = tokio::time::Instant::now();
                if let Err(e) = self.trim_events(partition, max_len).await {
                    // One per partition each second while Redis is away; health says so once.
                    tracing::debug!(error = %e, "trimming the event stream failed");
                }
            }
            if !hub.has_watchers() {
                // Reading and decoding every event for nobody cost the service
                // a tenth of its CPU under load. Watchers catch up from Redis
                // themselves, so the tailer restarts from the newest event.
                last = None;
                conn = None;
                tokio::select! {
                    _ = tokio::time::sleep(IDLE_CHECK) => {}
                    _ = stop.changed() => return,
                }
                continue;
            }
            let result = async {
                let conn = match &mut conn {
                    Some(conn) => conn,
                    None => conn.insert(self.link.dedicated(BLOCK).await?.1),
                };
                let from = match last {
                    Some(id) => id,
                    None => *last.insert(self.read_event_position(partition).await?.last),
                };
                let reply: Option<Vec<(String, Vec<StreamEntry>)>> = bounded(
                    BLOCK + self.timeout,
                    redis::cmd("XREAD")
                        .arg("COUNT")
                        .arg(BATCH)
                        .arg("BLOCK")
                        .arg(BLOCK.as_millis() as u64)
                        .arg("STREAMS")
                        .arg(self.keys.events(partition))
                        .arg(from.to_string())
                        .query_async(conn),
                )
                .await?;
                for (_, entries) in reply.unwrap_or_default() {
                    for event in parse_entries(partition, entries)? {
                        last = Some(event.id);
                        hub.publish(event);
                    }
                }
                Ok::<_, Error>(())
            }
            .await;
            if let Err(e) = result {
                tracing::warn!(error = %e, "event stream tailer: retrying");
                conn = None;
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    _ = stop.changed() => return,
                }
            }
        }
    }
}
