//! Ingestion of stock changes from the warehouse systems: a Redis Stream read
//! through a consumer group, so several replicas share the work and entries a
//! crashed consumer had read are claimed by another after an idle time.
//!
//! An entry is acknowledged only after it was applied (or dead-lettered), and
//! applying is idempotent: a snapshot carries a source_version (an old or
//! repeated one is ignored, as by SetStock) and a delta an event_id (its
//! idempotency key). So an entry delivered twice changes nothing the second
//! time, and a crash between applying and acknowledging loses nothing.

use std::collections::HashMap;
use std::time::Duration;

use super::link::Conn;
use tokio::sync::watch;

use super::RedisStore;
use crate::domain::{
    AdjustStockCommand, Error, RecordKey, RequestId, ScaledStock, SetStockCommand, Signed, Sku, StockStore, UnitScale,
    WarehouseId,
};

/// How long one blocking read waits for new entries.
const BLOCK: Duration = Duration::from_secs(1);

/// Most entries one read or claim returns.
const BATCH: usize = 100;

/// The actor of audit events written by ingestion.
const ACTOR: &str = "ingest";

/// How ingestion runs.
#[derive(Clone, Debug)]
pub struct IngestSettings {
    /// The consumer group every replica joins.
    pub group: String,
    /// This consumer's name, unique per process.
    pub consumer: String,
    /// Entries pending this long with another consumer are claimed.
    pub claim_idle: Duration,
}

/// Ingestion's backlog, for operators and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IngestStats {
    /// Entries not yet delivered to the group (None when Redis cannot tell).
    pub lag: Option<u64>,
    /// Entries delivered but not yet acknowledged.
    pub pending: u64,
    /// Entries in the dead-letter stream.
    pub dead_letters: u64,
}

/// What one entry asks for.
enum Change {
    Snapshot(SetStockCommand),
    Delta(AdjustStockCommand),
}

fn field<'a>(fields: &'a HashMap<String, String>, name: &str) -> Result<&'a str, Error> {
    fields.get(name).map(String::as_str).ok_or_else(|| Error::invalid(name, "is missing"))
}

fn optional<'a>(fields: &'a HashMap<String, String>, name: &str) -> &'a str {
    fields.get(name).map_or("", String::as_str)
}

/// Parses an entry with the same rules as the gRPC API.
fn parse(fields: &HashMap<String, String>) -> Result<Change, Error> {
    let record = RecordKey::new(
        Sku::parse(field(fields, "sku")?, "sku")?,
        WarehouseId::parse(field(fields, "warehouse_id")?, "warehouse_id")?,
    );
    match field(fields, "type")? {
        "snapshot" => {
            let scale_text = optional(fields, "unit_scale");
            let scale = if scale_text.is_empty() {
                0
            } else {
                scale_text.parse().map_err(|_| Error::invalid("unit_scale", "is not a number"))?
            };
            let unit_scale = UnitScale::new(scale, "unit_scale")?;
            let source_version: u64 = field(fields, "source_version")?
                .parse()
                .map_err(|_| Error::invalid("source_version", "is not a whole number"))?;
            if source_version > crate::domain::MAX_SCALED as u64 {
                return Err(Error::invalid("source_version", "must be below 2^53"));
            }
            Ok(Change::Snapshot(SetStockCommand {
                record,
                physical: ScaledStock::parse(field(fields, "physical")?, unit_scale, "physical")?,
                reserved: ScaledStock::parse(optional(fields, "reserved"), unit_scale, "reserved")?,
                in_transit: ScaledStock::parse(optional(fields, "in_transit"), unit_scale, "in_transit")?,
                unit_scale,
                source_version,
                request_id: None,
                actor: ACTOR.into(),
            }))
        }
        "delta" => {
            let event_id = field(fields, "event_id")?;
            let delta = |name: &str| {
                let text = optional(fields, name);
                if text.is_empty() { Ok(Signed::ZERO) } else { Signed::parse(text, name) }
            };
            let cmd = AdjustStockCommand {
                record,
                physical: delta("physical_delta")?,
                reserved: delta("reserved_delta")?,
                in_transit: delta("in_transit_delta")?,
                request_id: RequestId::parse(&format!("ingest-{event_id}"), "event_id")?,
                reason: optional(fields, "reason").to_owned(),
                actor: ACTOR.into(),
            };
            cmd.check_not_empty()?;
            Ok(Change::Delta(cmd))
        }
        other => Err(Error::invalid("type", format!("{other:?} is not snapshot or delta"))),
    }
}

/// Whether an error is the entry's fault (dead-letter it) or the store's (retry).
fn is_transient(e: &Error) -> bool {
    matches!(e, Error::StoreTimeout | Error::StoreUnavailable { .. } | Error::StoreOutOfMemory | Error::Internal { .. })
}

type Entry = (String, Vec<String>);

impl RedisStore {
    /// Consumes the ingestion stream until `stop`.
    pub async fn consume_ingest(&self, settings: IngestSettings, mut stop: watch::Receiver<bool>) {
        let mut conn: Option<Conn> = None;
        let mut claimed_at: Option<tokio::time::Instant> = None;
        loop {
            if *stop.borrow() {
                return;
            }
            let round = async {
                let conn = match &mut conn {
                    Some(conn) => conn,
                    None => {
                        let fresh = self.link.dedicated(BLOCK).await?.1;
                        let c = conn.insert(fresh);
                        self.create_group(c, &settings.group).await?;
                        c
                    }
                };
                if claimed_at.is_none_or(|at| at.elapsed() >= settings.claim_idle / 2) {
                    claimed_at = Some(tokio::time::Instant::now());
                    self.claim_stale(conn, &settings).await?;
                }
                let reply: Option<Vec<(String, Vec<Entry>)>> = super::call::bounded(
                    BLOCK + self.timeout,
                    redis::cmd("XREADGROUP")
                        .arg("GROUP")
                        .arg(&settings.group)
                        .arg(&settings.consumer)
                        .arg("COUNT")
                        .arg(BATCH)
                        .arg("BLOCK")
                        .arg(BLOCK.as_millis() as u64)
                        .arg("STREAMS")
                        .arg(self.keys.ingest())
                        .arg(">")
                        .query_async(conn),
                )
                .await?;
                for (_, entries) in reply.unwrap_or_default() {
                    self.process(&settings.group, entries).await?;
                }
                Ok::<_, Error>(())
            }
            .await;
            if let Err(e) = round {
                tracing::warn!(error = %e, "ingestion: retrying");
                conn = None;
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    _ = stop.changed() => return,
                }
            }
        }
    }

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

    /// Takes over entries another consumer read but did not acknowledge in time.
    async fn claim_stale(&self, conn: &mut Conn, settings: &IngestSettings) -> Result<(), Error> {
        let mut start = "0-0".to_owned();
        loop {
            let (next, entries, _deleted): (String, Vec<Entry>, redis::Value) = self
                .bounded(
                    redis::cmd("XAUTOCLAIM")
                        .arg(self.keys.ingest())
                        .arg(&settings.group)
                        .arg(&settings.consumer)
                        .arg(settings.claim_idle.as_millis() as u64)
                        .arg(&start)
                        .arg("COUNT")
                        .arg(BATCH)
                        .query_async(conn),
                )
                .await?;
            if !entries.is_empty() {
                tracing::info!(entries = entries.len(), "ingestion: claimed entries another consumer left pending");
                self.process(&settings.group, entries).await?;
            }
            if next == "0-0" {
                return Ok(());
            }
            start = next;
        }
    }

    /// Applies entries and acknowledges each; a transient store error stops
    /// the batch, leaving the rest pending for a retry.
    async fn process(&self, group: &str, entries: Vec<Entry>) -> Result<(), Error> {
        for (id, flat) in entries {
            let fields: HashMap<String, String> =
                flat.chunks(2).filter(|kv| kv.len() == 2).map(|kv| (kv[0].clone(), kv[1].clone())).collect();
            let outcome = match parse(&fields) {
                Err(e) => Err(e),
                Ok(Change::Snapshot(cmd)) => self.set_stock(cmd).await.map(drop),
                Ok(Change::Delta(cmd)) => self.adjust_stock(cmd).await.map(drop),
            };
            let mut pipe = redis::pipe();
            pipe.atomic();
            match outcome {
                Ok(()) => {}
                Err(e) if is_transient(&e) => return Err(e),
                Err(e) => {
                    tracing::warn!(entry = %id, reason = e.reason(), error = %e, "ingestion: dead-lettered an entry");
                    pipe.cmd("XADD")
                        .arg(self.keys.dead_letters())
                        .arg("*")
                        .arg("dead.reason")
                        .arg(e.reason())
                        .arg("dead.error")
                        .arg(e.to_string())
                        .arg("dead.entry_id")
                        .arg(&id)
                        .arg(&flat[..])
                        .ignore();
                }
            }
            pipe.cmd("XACK").arg(self.keys.ingest()).arg(group).arg(&id).ignore();
            let mut main = self.link.conn();
            let () = self.bounded(pipe.query_async(&mut main)).await?;
        }
        Ok(())
    }

    /// Ingestion's backlog.
    pub async fn ingest_stats(&self, group: &str) -> Result<IngestStats, Error> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn parses_snapshots_and_deltas() {
        let snapshot = entry(&[
            ("type", "snapshot"),
            ("sku", "S"),
            ("warehouse_id", "W"),
            ("physical", "2.5"),
            ("unit_scale", "1"),
            ("source_version", "7"),
        ]);
        let Ok(Change::Snapshot(cmd)) = parse(&snapshot) else { panic!("not a snapshot") };
        assert_eq!((cmd.physical.0, cmd.source_version), (25, 7));
        let delta = entry(&[
            ("type", "delta"),
            ("sku", "S"),
            ("warehouse_id", "W"),
            ("event_id", "e1"),
            ("reserved_delta", "-1"),
        ]);
        let Ok(Change::Delta(cmd)) = parse(&delta) else { panic!("not a delta") };
        assert_eq!(cmd.request_id.as_str(), "ingest-e1");
    }

    #[test]
    fn names_what_is_wrong() {
        for (pairs, field) in [
            (vec![("type", "bogus"), ("sku", "S"), ("warehouse_id", "W")], "type"),
            (vec![("type", "snapshot"), ("sku", "S"), ("warehouse_id", "W"), ("source_version", "1")], "physical"),
            (
                vec![
                    ("type", "snapshot"),
                    ("sku", "S"),
                    ("warehouse_id", "W"),
                    ("physical", "x"),
                    ("source_version", "1"),
                ],
                "physical",
            ),
            (
                vec![
                    ("type", "snapshot"),
                    ("sku", "S"),
                    ("warehouse_id", "W"),
                    ("physical", "1"),
                    ("unit_scale", "9"),
                    ("source_version", "1"),
                ],
                "unit_scale",
            ),
            (vec![("type", "delta"), ("sku", "S"), ("warehouse_id", "W")], "event_id"),
            (vec![("type", "delta"), ("warehouse_id", "W"), ("event_id", "e")], "sku"),
        ] {
            match parse(&entry(&pairs)) {
                Err(Error::InvalidArgument { field: f, .. }) => assert_eq!(f, field, "{pairs:?}"),
                _ => panic!("{pairs:?} was accepted"),
            }
        }
    }
}
