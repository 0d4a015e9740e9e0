//! `lua/set_stock.lua`: an absolute snapshot from the warehouse system.

use super::call::fingerprint;
use super::reply::{Facts, Tag};
use super::{RedisStore, scripts};
use crate::domain::{Error, SetStockCommand, SetStockOutcome};

impl RedisStore {
    /// Writes the snapshot unless a newer one is stored.
    pub(super) async fn write_snapshot(&self, cmd: SetStockCommand) -> Result<SetStockOutcome, Error> {
        let figures = [cmd.physical.0, cmd.reserved.0, cmd.in_transit.0].map(|v| v.to_string());
        let (unit_scale, source_version) = (cmd.unit_scale.get().to_string(), cmd.source_version.to_string());
        let record_id = cmd.record.to_string();
        // Without a request_id nothing is kept: the script takes "" for none.
        let fp = match cmd.request_id {
            Some(_) => fingerprint(&[&record_id, &figures[0], &figures[1], &figures[2], &unit_scale, &source_version]),
            None => String::new(),
        };

        let partition = self.keys.partition_of(&cmd.record.sku);
        let idempotency = cmd.request_id.as_ref().map(|r| ("set_stock", r));
        let mut inv = self.writing(&scripts::SET_STOCK, partition, idempotency);
        inv.key(self.keys.warehouses(&cmd.record.sku)).key(self.keys.records(partition));
        self.add_whole_record(&mut inv, &cmd.record);
        inv.arg(&figures[..])
            .arg(&unit_scale)
            .arg(&source_version)
            .arg(cmd.record.warehouse.as_str())
            .arg(&fp)
            .arg(self.retention_ms)
            .arg(self.retention_ms)
            .arg(&record_id)
            .arg(&cmd.actor)
            .arg(self.audit_max_events)
            .arg(cmd.request_id.as_ref().map_or("", |r| r.as_str()))
            .arg(cmd.record.sku.as_str());
        let mut reply = match &cmd.request_id {
            Some(request_id) => {
                self.claimed("set_stock", request_id, || fp.clone(), self.run_script("set_stock", &inv)).await?
            }
            None => self.run_script("set_stock", &inv).await?,
        };
        let applied = match reply.tag {
            Tag::Ok => true,
            Tag::Stale => false,
            Tag::UnitScaleInUse => {
                let facts = Facts { unit_scale: reply.unit_scale()?.get(), ..Facts::default() };
                return Err(reply.tag.error(facts));
            }
            Tag::IdempotencyKeyReused => {
                let request_id = cmd.request_id.as_ref().map_or_else(String::new, |r| r.to_string());
                return Err(reply.tag.error(Facts { request_id, ..Facts::default() }));
            }
            _ => return Err(reply.unexpected()),
        };
        let record = reply.record(cmd.record)?;
        Ok(SetStockOutcome { applied, record, replayed: reply.replayed })
    }
}
