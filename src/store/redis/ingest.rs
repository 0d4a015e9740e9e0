//! The ingestion stream on Redis (see `crate::workers::ingest` for the
//! consumer): a stream read through a consumer group with XREADGROUP by the
//! holder of the group's lease, entries left pending taken over with
//! XAUTOCLAIM, each acknowledged (and dead-lettered when it cannot be
//! applied) atomically, and the stream trimmed by age behind every group.

use std::collections::HashMap;
use std::time::Duration;

use super::call::Invocation;
use super::link::Conn;
use super::reply::malformed;
use super::{RedisStore, StreamReader, scripts};
use crate::domain::{Error, IngestConsumer, IngestEntry, IngestStats, IngestStream};

/// Most entries one read or claim returns.
const BATCH: usize = 100;

/// Most entries one trim removes (whole stream nodes, so about).
const TRIM_LIMIT: usize = 10_000;

type Entry = (String, Vec<String>);

fn entries(raw: Vec<Entry>) -> Vec<IngestEntry> {
    raw.into_iter()
        .map(|(id, flat)| IngestEntry {
            id,
            fields: flat.chunks(2).filter(|kv| kv.len() == 2).map(|kv| (kv[0].clone(), kv[1].clone())).collect(),
        })
        .collect()
}

impl IngestStream for RedisStore {
    type Reader = StreamReader;

    async fn lead_ingest(&self, consumer: &IngestConsumer) -> Result<bool, Error> {
        Ok(self.ingest_lease(consumer, millis(consumer.lease).max(1)).await? == consumer.consumer)
    }

    async fn resign_ingest(&self, consumer: &IngestConsumer) -> Result<(), Error> {
        self.ingest_lease(consumer, 0).await.map(drop)
    }

    async fn open_ingest(&self, consumer: &IngestConsumer) -> Result<StreamReader, Error> {
        let mut conn = self.link.dedicated(consumer.lease).await?.1;
        self.create_group(&mut conn, consumer).await?;
        Ok(StreamReader(conn))
    }

    async fn claim_ingest(
        &self,
        reader: &mut StreamReader,
        consumer: &IngestConsumer,
        start: &str,
    ) -> Result<(Vec<IngestEntry>, Option<String>), Error> {
        let (next, claimed, _deleted): (String, Vec<Entry>, redis::Value) = self
            .bounded(
                redis::cmd("XAUTOCLAIM")
                    .arg(self.keys.ingest())
                    .arg(&consumer.group)
                    .arg(&consumer.consumer)
                    .arg(0)
                    .arg(start)
                    .arg("COUNT")
                    .arg(BATCH)
                    .query_async(&mut reader.0),
            )
            .await?;
        Ok((entries(claimed), (next != "0-0").then_some(next)))
    }

    async fn read_ingest(
        &self,
        reader: &mut StreamReader,
        consumer: &IngestConsumer,
        block: Duration,
    ) -> Result<(), Error> {
        // The entries come again from the pending list, in order with any
        // a stale reader took.
        let _: redis::Value = super::call::bounded(
            block + self.timeout,
            redis::cmd("XREADGROUP")
                .arg("GROUP")
                .arg(&consumer.group)
                .arg(&consumer.consumer)
                .arg("COUNT")
                .arg(BATCH)
                .arg("BLOCK")
                .arg(block.as_millis().max(1) as u64)
                .arg("STREAMS")
                .arg(self.keys.ingest())
                .arg(">")
                .query_async(&mut reader.0),
        )
        .await?;
        Ok(())
    }

    async fn settle_ingest(
        &self,
        consumer: &IngestConsumer,
        entry: &IngestEntry,
        dead: Option<&Error>,
    ) -> Result<(), Error> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        if let Some(e) = dead {
            let flat: Vec<&str> = entry.fields.iter().flat_map(|(k, v)| [k.as_str(), v.as_str()]).collect();
            let mut letter = self.dead_letter(e);
            letter.arg("dead.entry_id").arg(&entry.id).arg(&flat[..]);
            pipe.add_command(letter).ignore();
        }
        pipe.cmd("XACK").arg(self.keys.ingest()).arg(&consumer.group).arg(&entry.id).ignore();
        self.query_pipe(&pipe).await
    }

    async fn trim_ingest(&self, consumer: &IngestConsumer) -> Result<(), Error> {
        // Below every group's oldest unacknowledged entry and its last read
        // one (entries only come after both), and older than the retention.
        let mut below = StreamId::at(self.redis_ms().await?.saturating_sub(millis(consumer.retention)));
        for group in self.ingest_groups().await? {
            below = below.min(group.last_delivered);
            let summary: (u64, Option<String>, redis::Value, redis::Value) =
                self.query(redis::cmd("XPENDING").arg(self.keys.ingest()).arg(&group.name)).await?;
            if let Some(oldest) = summary.1.as_deref().and_then(StreamId::parse) {
                below = below.min(oldest);
            }
        }
        let mut trim = redis::cmd("XTRIM");
        trim.arg(self.keys.ingest()).arg("MINID").arg("~").arg(below.to_string()).arg("LIMIT").arg(TRIM_LIMIT);
        let trimmed: u64 = self.query(&trim).await?;
        if trimmed > 0 {
            tracing::debug!(trimmed, below = %below, "ingestion: trimmed applied entries past the retention");
        }
        Ok(())
    }
}

/// A stream entry id, ordered as Redis orders them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct StreamId(u64, u64);

impl StreamId {
    fn at(ms: u64) -> Self {
        Self(ms, 0)
    }

    fn parse(text: &str) -> Option<Self> {
        let (ms, seq) = text.split_once('-')?;
        Some(Self(ms.parse().ok()?, seq.parse().ok()?))
    }
}

impl std::fmt::Display for StreamId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.0, self.1)
    }
}

/// A consumer group of the ingestion stream, as XINFO GROUPS tells it.
struct Group {
    name: String,
    last_delivered: StreamId,
}

pub(super) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl RedisStore {
    /// Creates `consumer`'s group unless it exists. It starts a retention
    /// back by Redis time (entry ids are Redis times): entries since then
    /// may have been applied through another group, and their dedup records
    /// still say so; older ones may have been applied too, and nothing
    /// would say so any more.
    async fn create_group(&self, conn: &mut Conn, consumer: &IngestConsumer) -> Result<(), Error> {
        let start = StreamId::at(self.redis_ms().await?.saturating_sub(millis(consumer.retention)));
        let created: Result<(), Error> = self
            .bounded(
                redis::cmd("XGROUP")
                    .arg("CREATE")
                    .arg(self.keys.ingest())
                    .arg(&consumer.group)
                    .arg(start.to_string())
                    .arg("MKSTREAM")
                    .query_async(conn),
            )
            .await;
        match created {
            Err(Error::Internal { detail }) if detail.contains("BUSYGROUP") => Ok(()),
            other => other,
        }
    }

    /// Takes, keeps (`lease_ms` > 0) or gives up (0) `consumer`'s reader
    /// lease; who holds it after.
    async fn ingest_lease(&self, consumer: &IngestConsumer, lease_ms: u64) -> Result<String, Error> {
        self.lease(self.keys.ingest_lease(&consumer.group), &consumer.consumer, lease_ms).await
    }

    /// Takes, keeps (`lease_ms` > 0) or gives up (0) the one-holder lease
    /// at `key` for `holder` (`lead_ingest.lua`: the ingestion reader's, the
    /// binlog follower's); who holds it after.
    pub(super) async fn lease(&self, key: String, holder: &str, lease_ms: u64) -> Result<String, Error> {
        let mut inv = Invocation::new(&scripts::LEAD_INGEST);
        inv.key(key).arg(holder).arg(lease_ms);
        self.eval(&inv).await?.text()
    }

    /// Redis's clock, in unix ms.
    async fn redis_ms(&self) -> Result<u64, Error> {
        let (secs, micros): (u64, u64) = self.query(&redis::cmd("TIME")).await?;
        Ok(secs * 1000 + micros / 1000)
    }

    /// The ingestion stream's consumer groups (none before the stream exists).
    async fn ingest_groups(&self) -> Result<Vec<Group>, Error> {
        let groups: Result<Vec<HashMap<String, redis::Value>>, Error> =
            self.query(redis::cmd("XINFO").arg("GROUPS").arg(self.keys.ingest())).await;
        let groups = match groups {
            Ok(groups) => groups,
            Err(Error::Internal { detail }) if detail.contains("no such key") => Vec::new(),
            Err(e) => return Err(e),
        };
        let text = |g: &HashMap<String, redis::Value>, name: &str| {
            g.get(name).and_then(|v| redis::from_redis_value::<String>(v.clone()).ok())
        };
        groups
            .iter()
            .map(|g| {
                let name = text(g, "name").ok_or_else(|| malformed("a consumer group without a name"))?;
                let last_delivered = text(g, "last-delivered-id")
                    .as_deref()
                    .and_then(StreamId::parse)
                    .ok_or_else(|| malformed("a consumer group without a last-delivered-id"))?;
                Ok(Group { name, last_delivered })
            })
            .collect()
    }

    /// Ingestion's backlog.
    pub(super) async fn read_ingest_stats(&self, group: &str) -> Result<IngestStats, Error> {
        let mut conn = self.link.conn();
        let groups: Result<Vec<HashMap<String, redis::Value>>, Error> =
            self.bounded(redis::cmd("XINFO").arg("GROUPS").arg(self.keys.ingest()).query_async(&mut conn)).await;
        let groups = match groups {
            Ok(groups) => groups,
            Err(Error::Internal { detail }) if detail.contains("no such key") => Vec::new(),
            Err(e) => return Err(e),
        };
        let dead_letters: u64 =
            self.bounded(redis::cmd("XLEN").arg(self.keys.dead_letters()).query_async(&mut conn)).await?;
        let mut stats = IngestStats { dead_letters, ..IngestStats::default() };
        let number = |g: &HashMap<String, redis::Value>, name: &str| {
            g.get(name).and_then(|v| redis::from_redis_value::<u64>(v.clone()).ok())
        };
        if let Some(ours) = groups.iter().find(|g| {
            g.get("name").and_then(|v| redis::from_redis_value::<String>(v.clone()).ok()).as_deref() == Some(group)
        }) {
            stats.pending = number(ours, "pending").unwrap_or(0);
            stats.lag = number(ours, "lag");
        }
        Ok(stats)
    }
}

/// The fields of a dead letter that say why it was set aside; the rest are
/// the change's own (see [`RedisStore::dead_letter`]).
pub(super) const DEAD_REASON: &str = "dead.reason";
/// See [`DEAD_REASON`].
pub(super) const DEAD_ERROR: &str = "dead.error";

impl RedisStore {
    /// The XADD of a dead letter for `error`: why it was refused, to which
    /// the caller appends the change as it came.
    pub(super) fn dead_letter(&self, error: &Error) -> redis::Cmd {
        let mut cmd = redis::cmd("XADD");
        cmd.arg(self.keys.dead_letters())
            .arg("*")
            .arg(DEAD_REASON)
            .arg(error.reason())
            .arg(DEAD_ERROR)
            .arg(error.to_string());
        cmd
    }
}
