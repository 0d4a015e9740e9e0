//! `lua/adjust_stock.lua`: signed deltas to a record's figures.

use super::call::fingerprint;
use super::reply::{Facts, Tag};
use super::{RedisStore, scripts, signed_args};
use crate::domain::{AdjustOutcome, AdjustStockCommand, Error};

impl RedisStore {
    /// Applies the deltas of `cmd`, all or none.
    pub(super) async fn apply_deltas(&self, cmd: AdjustStockCommand) -> Result<AdjustOutcome, Error> {
        let deltas = [cmd.physical, cmd.reserved, cmd.in_transit].map(signed_args);
        let record_id = cmd.record.to_string();
        let mut parts = vec![record_id.as_str()];
        parts.extend(deltas.iter().flatten().map(String::as_str));
        parts.push(&cmd.reason);
        let fp = fingerprint(&parts);

        let partition = self.keys.partition_of(&cmd.record.sku);
        let mut inv = self.writing(&scripts::ADJUST_STOCK, partition, Some(("adjust_stock", &cmd.request_id)));
        self.add_whole_record(&mut inv, &cmd.record);
        inv.arg(&fp).arg(self.retention_ms);
        for delta in &deltas {
            inv.arg(&delta[..]);
        }
        inv.arg(&cmd.actor)
            .arg(self.audit_max_events)
            .arg(cmd.request_id.as_str())
            .arg(cmd.record.sku.as_str())
            .arg(cmd.record.warehouse.as_str())
            .arg(&cmd.reason);
        let mut reply =
            self.claimed("adjust_stock", &cmd.request_id, || fp.clone(), self.run_script("adjust_stock", &inv)).await?;
        let mut facts = Facts { request_id: cmd.request_id.to_string(), ..Facts::default() };
        match reply.tag {
            Tag::Ok => {}
            Tag::IdempotencyKeyReused => return Err(reply.tag.error(facts)),
            Tag::SkuNotAvailableInWarehouse => {
                facts.record = Some((cmd.record, None));
                return Err(reply.tag.error(facts));
            }
            Tag::InvalidQuantityScale | Tag::QuantityOutOfRange | Tag::NegativeStock => {
                facts.field = format!("{}_delta", reply.text()?);
                match reply.tag {
                    Tag::InvalidQuantityScale => facts.unit_scale = reply.unit_scale()?.get(),
                    Tag::QuantityOutOfRange => facts.detail = "takes the figure out of range".into(),
                    _ => {}
                }
                return Err(reply.tag.error(facts));
            }
            _ => return Err(reply.unexpected()),
        }
        let replayed = reply.replayed;
        Ok(AdjustOutcome { record: reply.record(cmd.record)?, replayed })
    }
}
