//! `lua/transfer_lock.lua`: a lock's quantity moved to another warehouse.

use std::time::Duration;

use super::call::fingerprint;
use super::reply::{Facts, Reply, Tag, lock_refusal, malformed};
use super::{RedisStore, scripts, signed_args};
use crate::domain::{
    BatchId, Error, LockId, LockView, RecordKey, Shortage, TransferLockCommand, TransferOutcome, format_scaled,
};

impl RedisStore {
    /// Moves the lock `cmd` names (all of it, or `cmd.quantity`) to
    /// `cmd.to`, in one script. Both records are in the SKU's partition.
    pub(super) async fn transfer(&self, cmd: &TransferLockCommand) -> Result<TransferOutcome, Error> {
        let id = &cmd.lock_id;
        let to = RecordKey::new(id.record.sku.clone(), cmd.to.clone());
        let holder = cmd.holder.as_ref().map_or("", |h| h.as_str());
        let [mantissa, scale] = cmd.quantity.map_or([String::new(), String::new()], |q| signed_args(q.decimal()));
        let (lock_id, to_id) = (id.to_string(), to.to_string());
        let fp = fingerprint(&["transfer_lock", &lock_id, &to_id, &mantissa, &scale, holder]);

        let partition = self.keys.partition_of(&id.record.sku);
        let shard = super::keys::token_shard(id.token);
        // What the first call cannot know: the lock's batch (the script
        // names it), the destination whole (to settle its expired locks),
        // and the session's lease.
        let mut batch: Option<BatchId> = None;
        let mut wide = false;
        let call = |batch: &Option<BatchId>, wide: bool, lease: &str, ended: &str| {
            let mut inv = self.writing(&scripts::TRANSFER_LOCK, partition, Some(("transfer_lock", &cmd.request_id)));
            self.add_lock_record(&mut inv, id);
            inv.key(self.keys.epoch(partition));
            inv.key(batch.as_ref().map_or_else(|| self.keys.unused(partition), |b| self.keys.batch(partition, b)));
            inv.key(
                id.session().map_or_else(
                    || self.keys.unused(partition),
                    |session| self.keys.session_locks(partition, &session),
                ),
            );
            if wide {
                self.add_whole_record(&mut inv, &to);
            } else {
                self.add_record_shard(&mut inv, &to, shard);
            }
            inv.arg(&fp)
                .arg(self.retention_ms)
                .arg(holder)
                .arg(id.record.to_string())
                .arg(id.token)
                .arg(&id.nonce)
                .arg(&to_id)
                .arg(&mantissa)
                .arg(&scale)
                .arg(self.retention_ms)
                .arg(batch.as_ref().map_or("", |b| b.as_str()))
                .arg(&cmd.actor)
                .arg(self.audit_max_events)
                .arg(cmd.request_id.as_str())
                .arg(lease)
                .arg(ended)
                .arg(if wide { "1" } else { "" });
            inv
        };
        let lease = async || match id.session() {
            None => Ok((String::new(), "")),
            Some(session) => self.session_lease(&session).await.map(|(lease, ended)| (lease.to_string(), ended)),
        };
        let run = async {
            let (mut at, mut ended) = lease().await?;
            let mut reply = self.run_script("transfer_lock", &call(&batch, wide, &at, ended)).await?;
            for _ in 0..4 {
                match reply.tag {
                    Tag::Batch => {
                        let named = reply.text()?;
                        batch = Some(BatchId::parse(&named, "batch_id").map_err(|_| malformed("a bad batch id"))?);
                    }
                    Tag::Settle => wide = true,
                    Tag::Lease => (at, ended) = lease().await?,
                    Tag::Epoch => self.link.raise_epoch(&self.keys.epoch(partition)).await?,
                    _ => break,
                }
                // Nothing was written: call again.
                reply = self.run_script("transfer_lock", &call(&batch, wide, &at, ended)).await?;
            }
            Ok::<_, Error>((reply, at))
        };
        let (mut reply, lease) = self.claimed("transfer_lock", &cmd.request_id, || fp.clone(), run).await?;
        let mut facts = Facts { request_id: cmd.request_id.to_string(), lock_id, ..Facts::default() };
        match reply.tag {
            Tag::Ok => {}
            Tag::SkuNotAvailableInWarehouse => {
                facts.record = Some((to, None));
                return Err(reply.tag.error(facts));
            }
            Tag::InsufficientStock => {
                let available = reply.int()?;
                let unit_scale = reply.unit_scale()?;
                let requested = match cmd.quantity {
                    Some(q) => format_scaled(q.decimal().mantissa, q.decimal().scale),
                    None => "the whole lock".to_owned(),
                };
                let available = unit_scale.format(available);
                facts.shortages.push(Shortage { line: 0, record: to, requested, available, exists: true });
                return Err(reply.tag.error(facts));
            }
            _ => return Err(lock_refusal(&mut reply, id, facts)?),
        }
        let mut outcome = outcome(reply, id, to)?;
        // A lock in a session lives to its session's expiry (as Lock and
        // GetLock report it); its own entry is its maximum hold.
        if let Ok(lease) = lease.parse::<i64>() {
            for view in std::iter::once(&mut outcome.moved).chain(outcome.remaining.as_mut()) {
                view.expires_at_ms = view.expires_at_ms.min(lease);
            }
        }
        Ok(outcome)
    }
}

/// The OK reply of transfer_lock.lua (see its header).
fn outcome(mut reply: Reply, id: &LockId, to: RecordKey) -> Result<TransferOutcome, Error> {
    let token = reply.uint()?;
    let (moved, unit_scale) = (reply.int()?, reply.unit_scale()?);
    let (remaining, source_scale) = (reply.int()?, reply.unit_scale()?);
    let expires_at_ms = reply.int()?;
    let max_expires_at_ms = reply.int()?;
    let created_at_ms = reply.int()?;
    let ttl = Duration::from_millis(reply.int()?.unsigned_abs());
    let (holder, order_id, batch_id) = (reply.text()?, reply.text()?, reply.text()?);
    let (source_available, destination_available) = (reply.int()?, reply.int()?);
    let view = |lock_id: LockId, quantity, unit_scale| LockView {
        lock_id,
        quantity,
        unit_scale,
        created_at_ms,
        expires_at_ms,
        max_expires_at_ms,
        ttl,
        order_id: order_id.clone(),
        holder: holder.clone(),
        batch_id: (!batch_id.is_empty()).then(|| batch_id.clone()),
    };
    Ok(TransferOutcome {
        moved: view(LockId { record: to, token, nonce: id.nonce.clone() }, moved, unit_scale),
        remaining: (remaining > 0).then(|| view(id.clone(), remaining, source_scale)),
        source_available,
        source_unit_scale: source_scale,
        destination_available,
        replayed: reply.replayed,
    })
}
