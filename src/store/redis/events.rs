//! The lifecycle event streams on Redis, one per partition: reading them,
//! and the [`EventStream`] port the tailer (`crate::workers::events`)
//! follows them through.

use std::collections::BTreeMap;
use std::time::Duration;

use super::call::bounded;
use super::reply::malformed;
use super::{Partition, RedisStore, StreamReader};
use crate::domain::{Error, EventId, EventRetention, EventStream, LifecycleEvent, StreamPosition};

/// How long one blocking read of the tailer waits for new events.
const BLOCK: Duration = Duration::from_secs(1);

/// Most trim calls per stream each time it is trimmed (about once a second).
const TRIM_CALLS: usize = 20;

/// What one approximate XTRIM removes at most (Redis's default limit with
/// `~`: 100 nodes of 100 entries); a call that removed this much may have
/// left more.
const TRIM_FULL: u64 = 10_000;

/// Most events one read returns.
const BATCH: usize = 1000;

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
}

impl EventStream for RedisStore {
    type Tail = StreamReader;

    async fn open_tail(&self) -> Result<StreamReader, Error> {
        // A connection of its own: a blocking read would stall every call
        // sharing the main one.
        Ok(StreamReader(self.link.dedicated(BLOCK).await?.1))
    }

    async fn tail_events(
        &self,
        tail: &mut StreamReader,
        partition: usize,
        after: EventId,
    ) -> Result<Vec<LifecycleEvent>, Error> {
        let reply: Option<Vec<(String, Vec<StreamEntry>)>> = bounded(
            BLOCK + self.timeout,
            redis::cmd("XREAD")
                .arg("COUNT")
                .arg(BATCH)
                .arg("BLOCK")
                .arg(BLOCK.as_millis() as u64)
                .arg("STREAMS")
                .arg(self.keys.events(partition))
                .arg(after.to_string())
                .query_async(&mut tail.0),
        )
        .await?;
        let mut events = Vec::new();
        for (_, entries) in reply.unwrap_or_default() {
            events.extend(parse_entries(partition, entries)?);
        }
        Ok(events)
    }

    async fn trim_events(&self, partition: usize, keep: EventRetention) -> Result<(), Error> {
        // Entry ids are Redis time; this replica's clock is near enough for a
        // retention of minutes or more. With `~`, Redis drops whole nodes and
        // at most 100 nodes' worth (10,000 entries) a call: bounded work, so
        // a busy stream is trimmed in several calls.
        let oldest = super::lock::unix_ms().saturating_sub(u64::try_from(keep.max_age.as_millis()).unwrap_or(u64::MAX));
        let key = self.keys.events(partition);
        for _ in 0..TRIM_CALLS {
            let mut pipe = redis::pipe();
            pipe.cmd("XTRIM").arg(&key).arg("MINID").arg("~").arg(oldest);
            pipe.cmd("XTRIM").arg(&key).arg("MAXLEN").arg("~").arg(keep.max_len);
            let (by_age, by_count): (u64, u64) = self.query_pipe(&pipe).await?;
            if by_age + by_count < TRIM_FULL {
                break;
            }
        }
        Ok(())
    }
}
