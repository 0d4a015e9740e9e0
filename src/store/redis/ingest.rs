//! The ingestion stream on Redis (see `crate::workers::ingest` for the
//! consumer): a stream read through a consumer group with XREADGROUP,
//! entries another consumer left pending claimed with XAUTOCLAIM, each
//! acknowledged (and dead-lettered when it cannot be applied) atomically.

use std::collections::HashMap;
use std::time::Duration;

use super::link::Conn;
use super::{RedisStore, StreamReader};
use crate::domain::{Error, IngestConsumer, IngestEntry, IngestStats, IngestStream};

/// How long one blocking read waits for new entries.
const BLOCK: Duration = Duration::from_secs(1);

/// Most entries one read or claim returns.
const BATCH: usize = 100;

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

    async fn open_ingest(&self, consumer: &IngestConsumer) -> Result<StreamReader, Error> {
        let mut conn = self.link.dedicated(BLOCK).await?.1;
        self.create_group(&mut conn, &consumer.group).await?;
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
                    .arg(consumer.claim_idle.as_millis() as u64)
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
    ) -> Result<Vec<IngestEntry>, Error> {
        let reply: Option<Vec<(String, Vec<Entry>)>> = super::call::bounded(
            BLOCK + self.timeout,
            redis::cmd("XREADGROUP")
                .arg("GROUP")
                .arg(&consumer.group)
                .arg(&consumer.consumer)
                .arg("COUNT")
                .arg(BATCH)
                .arg("BLOCK")
                .arg(BLOCK.as_millis() as u64)
                .arg("STREAMS")
                .arg(self.keys.ingest())
                .arg(">")
                .query_async(&mut reader.0),
        )
        .await?;
        Ok(reply.unwrap_or_default().into_iter().flat_map(|(_, raw)| entries(raw)).collect())
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
            pipe.cmd("XADD")
                .arg(self.keys.dead_letters())
                .arg("*")
                .arg("dead.reason")
                .arg(e.reason())
                .arg("dead.error")
                .arg(e.to_string())
                .arg("dead.entry_id")
                .arg(&entry.id)
                .arg(&flat[..])
                .ignore();
        }
        pipe.cmd("XACK").arg(self.keys.ingest()).arg(&consumer.group).arg(&entry.id).ignore();
        self.query_pipe(&pipe).await
    }
}

impl RedisStore {
    async fn create_group(&self, conn: &mut Conn, group: &str) -> Result<(), Error> {
        // From the start of the stream: a backlog that predates the group is applied too.
        let created: Result<(), Error> = self
            .bounded(
                redis::cmd("XGROUP")
                    .arg("CREATE")
                    .arg(self.keys.ingest())
                    .arg(group)
                    .arg("0")
                    .arg("MKSTREAM")
                    .query_async(conn),
            )
            .await;
        match created {
            Err(Error::Internal { detail }) if detail.contains("BUSYGROUP") => Ok(()),
            other => other,
        }
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
