//! Ingestion of stock changes from the warehouse systems, over the store's
//! [`IngestStream`]: a stream read through a consumer group by one replica
//! at a time, the holder of the group's lease, which applies the entries in
//! stream order. Order matters: a snapshot counts the deltas written before
//! it, and a release of a reservation follows the reservation. Each round
//! reads new entries into the group's pending list, then applies every
//! pending entry in id order, whoever read it: what a previous reader left,
//! and what a reader that lost its lease took with a late read.
//!
//! An entry is acknowledged only after it was applied (or dead-lettered), and
//! applying is idempotent: a snapshot carries a source_version (an old or
//! repeated one is ignored, as by SetStock) and a delta an event_id (its
//! idempotency key). So an entry delivered twice changes nothing the second
//! time, a crash between applying and acknowledging loses nothing, and a
//! reader that lost its lease while paused repeats work, never reorders it.

use std::collections::HashMap;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::domain::{
    AdjustStockCommand, Error, IngestConsumer, IngestEntry, IngestStream, RecordKey, RequestId, ScaledStock,
    SetStockCommand, Signed, Sku, UnitScale, WarehouseId,
};

/// The actor of audit events written by ingestion.
const ACTOR: &str = "ingest";

/// How long a failed round waits before the next.
const RETRY: Duration = Duration::from_millis(500);

/// The longest one read waits for new entries.
const MAX_BLOCK: Duration = Duration::from_secs(1);

/// How often the reader trims the stream.
const TRIM_EVERY: Duration = Duration::from_secs(60);

/// Consumes the ingestion stream until `stop`.
pub async fn run<S: IngestStream>(store: &S, consumer: IngestConsumer, mut stop: watch::Receiver<bool>) {
    let mut reader: Option<S::Reader> = None;
    // The lease is renewed at least this often, so it never lapses while
    // this replica reads: at every round, and between entries.
    let renew_every = consumer.lease / 3;
    let block = MAX_BLOCK.min(renew_every);
    let mut lease = Lease { renewed: None, renew_every };
    let mut trimmed_at: Option<Instant> = None;
    loop {
        if *stop.borrow() {
            break;
        }
        let round = async {
            if !lease.renew(store, &consumer).await? {
                return Ok(false);
            }
            let reader = match &mut reader {
                Some(reader) => reader,
                None => reader.insert(store.open_ingest(&consumer).await?),
            };
            if trimmed_at.is_none_or(|at| at.elapsed() >= TRIM_EVERY) {
                trimmed_at = Some(Instant::now());
                store.trim_ingest(&consumer).await?;
            }
            // Reading only moves new entries to the group's pending list;
            // then every pending entry is applied in id order, whoever read
            // it: a previous reader's, and one a reader that lost its lease
            // took with a read that reached Redis late, which may come
            // before the entries this reader just read.
            store.read_ingest(reader, &consumer, block).await?;
            apply_pending(store, reader, &consumer, &mut lease).await
        }
        .await;
        let pause = match round {
            Ok(true) => continue,
            Ok(false) => {
                // Another replica reads; whatever this one read but did not
                // acknowledge is the next reader's to apply first.
                reader = None;
                renew_every
            }
            Err(e) => {
                tracing::warn!(error = %e, "ingestion: retrying");
                reader = None;
                RETRY
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stop.changed() => break,
        }
    }
    if lease.renewed.is_some()
        && let Err(e) = store.resign_ingest(&consumer).await
    {
        tracing::warn!(error = %e, "ingestion: cannot give the reader lease up; it lapses by itself");
    }
}

/// The reader lease as this replica last renewed it.
struct Lease {
    renewed: Option<Instant>,
    renew_every: Duration,
}

impl Lease {
    /// Takes or keeps the lease; whether this replica holds it.
    async fn renew<S: IngestStream>(&mut self, store: &S, consumer: &IngestConsumer) -> Result<bool, Error> {
        self.renewed = None;
        let held = store.lead_ingest(consumer).await?;
        if held {
            self.renewed = Some(Instant::now());
        }
        Ok(held)
    }

    /// Renews the lease when it is due; whether this replica still holds it.
    async fn keep<S: IngestStream>(&mut self, store: &S, consumer: &IngestConsumer) -> Result<bool, Error> {
        match self.renewed {
            Some(at) if at.elapsed() < self.renew_every => Ok(true),
            _ => self.renew(store, consumer).await,
        }
    }
}

/// Applies, in stream order, every entry the group delivered and nobody
/// acknowledged: this reader's latest read, a previous reader's, or a
/// stale one's. False if the lease was lost on the way.
async fn apply_pending<S: IngestStream>(
    store: &S,
    reader: &mut S::Reader,
    consumer: &IngestConsumer,
    lease: &mut Lease,
) -> Result<bool, Error> {
    let mut start = "0-0".to_owned();
    loop {
        let (entries, next) = store.claim_ingest(reader, consumer, &start).await?;
        if !entries.is_empty() && !process(store, consumer, entries, lease).await? {
            return Ok(false);
        }
        match next {
            Some(next) => start = next,
            None => return Ok(true),
        }
    }
}

/// Applies entries in order and acknowledges each. A transient store error
/// stops the batch, and so does a lost lease (then the answer is false),
/// leaving the rest pending for the next reader, which starts with them.
async fn process<S: IngestStream>(
    store: &S,
    consumer: &IngestConsumer,
    entries: Vec<IngestEntry>,
    lease: &mut Lease,
) -> Result<bool, Error> {
    for entry in entries {
        if !lease.keep(store, consumer).await? {
            tracing::warn!("ingestion: another replica took the reader lease; it applies the rest");
            return Ok(false);
        }
        let fields: HashMap<String, String> = entry.fields.iter().cloned().collect();
        let outcome = match parse(&fields) {
            Err(e) => Err(e),
            Ok(Change::Snapshot(cmd)) => store.set_stock(cmd).await.map(drop),
            Ok(Change::Delta(cmd)) => store.adjust_stock(cmd).await.map(drop),
        };
        match outcome {
            Ok(()) => store.settle_ingest(consumer, &entry, None).await?,
            Err(e) if is_transient(&e) => return Err(e),
            Err(e) => {
                tracing::warn!(entry = %entry.id, reason = e.reason(), error = %e, "ingestion: dead-lettered an entry");
                store.settle_ingest(consumer, &entry, Some(&e)).await?;
            }
        }
    }
    Ok(true)
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
            let cmd = SetStockCommand {
                record,
                physical: ScaledStock::parse(field(fields, "physical")?, unit_scale, "physical")?,
                reserved: ScaledStock::parse(optional(fields, "reserved"), unit_scale, "reserved")?,
                in_transit: ScaledStock::parse(optional(fields, "in_transit"), unit_scale, "in_transit")?,
                unit_scale,
                source_version,
                request_id: None,
                actor: ACTOR.into(),
            };
            cmd.check_in_range()?;
            Ok(Change::Snapshot(cmd))
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
pub(crate) fn is_transient(e: &Error) -> bool {
    matches!(e, Error::StoreTimeout | Error::StoreUnavailable { .. } | Error::StoreOutOfMemory | Error::Internal { .. })
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
