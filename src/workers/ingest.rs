//! Ingestion of stock changes from the warehouse systems, over the store's
//! [`IngestStream`]: a stream read through a consumer group, so several
//! replicas share the work and entries a crashed consumer had read are
//! claimed by another after an idle time.
//!
//! An entry is acknowledged only after it was applied (or dead-lettered), and
//! applying is idempotent: a snapshot carries a source_version (an old or
//! repeated one is ignored, as by SetStock) and a delta an event_id (its
//! idempotency key). So an entry delivered twice changes nothing the second
//! time, and a crash between applying and acknowledging loses nothing.

use std::collections::HashMap;
use std::time::Duration;

use tokio::sync::watch;

use crate::domain::{
    AdjustStockCommand, Error, IngestConsumer, IngestEntry, IngestStream, RecordKey, RequestId, ScaledStock,
    SetStockCommand, Signed, Sku, UnitScale, WarehouseId,
};

/// The actor of audit events written by ingestion.
const ACTOR: &str = "ingest";

/// How long a failed round waits before the next.
const RETRY: Duration = Duration::from_millis(500);

/// Consumes the ingestion stream until `stop`.
pub async fn run<S: IngestStream>(store: &S, consumer: IngestConsumer, mut stop: watch::Receiver<bool>) {
    let mut reader: Option<S::Reader> = None;
    let mut claimed_at: Option<tokio::time::Instant> = None;
    loop {
        if *stop.borrow() {
            return;
        }
        let round = async {
            let reader = match &mut reader {
                Some(reader) => reader,
                None => reader.insert(store.open_ingest(&consumer).await?),
            };
            if claimed_at.is_none_or(|at| at.elapsed() >= consumer.claim_idle / 2) {
                claimed_at = Some(tokio::time::Instant::now());
                claim_stale(store, reader, &consumer).await?;
            }
            let entries = store.read_ingest(reader, &consumer).await?;
            process(store, &consumer, entries).await
        }
        .await;
        if let Err(e) = round {
            tracing::warn!(error = %e, "ingestion: retrying");
            reader = None;
            tokio::select! {
                _ = tokio::time::sleep(RETRY) => {}
                _ = stop.changed() => return,
            }
        }
    }
}

/// Takes over and applies the entries another consumer read but did not
/// acknowledge in time.
async fn claim_stale<S: IngestStream>(
    store: &S,
    reader: &mut S::Reader,
    consumer: &IngestConsumer,
) -> Result<(), Error> {
    let mut start = "0-0".to_owned();
    loop {
        let (entries, next) = store.claim_ingest(reader, consumer, &start).await?;
        if !entries.is_empty() {
            tracing::info!(entries = entries.len(), "ingestion: claimed entries another consumer left pending");
            process(store, consumer, entries).await?;
        }
        match next {
            Some(next) => start = next,
            None => return Ok(()),
        }
    }
}

/// Applies entries and acknowledges each; a transient store error stops
/// the batch, leaving the rest pending for a retry.
async fn process<S: IngestStream>(
    store: &S,
    consumer: &IngestConsumer,
    entries: Vec<IngestEntry>,
) -> Result<(), Error> {
    for entry in entries {
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
    Ok(())
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
