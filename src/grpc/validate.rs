//! Requests validated at the edge into domain values: every helper fails
//! with [`Error::InvalidArgument`] naming the field at fault.

use std::collections::HashMap;
use std::time::Duration;

use tonic::Request;

use super::convert;
use crate::domain::{
    BatchId, BatchPolicy, Choice, Error, Holder, LockFilter, LockId, LockLine, LockTarget, OrderId, Quantity,
    RecordKey, SessionId, Signed, Sku, Strategy, WarehouseId,
};
use crate::edge::auth::Principal;
use crate::pb;

/// Request limits, from the configuration.
#[derive(Clone, Debug)]
pub struct Limits {
    /// TTL of a lock whose request names none.
    pub default_ttl: Duration,
    /// Shortest TTL a request may ask for.
    pub min_ttl: Duration,
    /// Longest TTL a request may ask for.
    pub max_ttl: Duration,
    /// Most lines in one BatchLock.
    pub max_batch_lines: usize,
    /// Most lock ids in one Renew, and pairs in one BatchGetAvailability.
    pub max_ids_per_call: usize,
    /// Locks older than this are stale.
    pub stale_threshold: Duration,
}

/// Default and largest ListLocks page.
pub(crate) const DEFAULT_PAGE_SIZE: usize = 100;
pub(crate) const MAX_PAGE_SIZE: usize = 1000;

/// A requested TTL, within the limits; `None` when the request names none.
pub(super) fn ttl(
    limits: &Limits,
    ttl: Option<&pbjson_types::Duration>,
    field: &str,
) -> Result<Option<Duration>, Error> {
    let Some(ttl) = ttl else { return Ok(None) };
    let ttl = convert::std_duration(ttl, field)?;
    let Limits { min_ttl, max_ttl, .. } = *limits;
    if ttl < min_ttl || ttl > max_ttl {
        return Err(Error::invalid(
            field,
            format!(
                "is {}; it must be between {} and {}",
                humantime::format_duration(ttl),
                humantime::format_duration(min_ttl),
                humantime::format_duration(max_ttl)
            ),
        ));
    }
    Ok(Some(ttl))
}

/// A lock's TTL: the requested one, or the default.
pub(super) fn lock_ttl(limits: &Limits, ttl: Option<&pbjson_types::Duration>) -> Result<Duration, Error> {
    Ok(self::ttl(limits, ttl, "ttl")?.unwrap_or(limits.default_ttl))
}

/// The session a Lock or BatchLock names, if any; a lock in a session
/// takes the session's ttl, so the request must name none.
pub(super) fn session(session_id: &str, ttl: Option<&pbjson_types::Duration>) -> Result<Option<SessionId>, Error> {
    let session = optional(session_id, |v| SessionId::parse(v, "session_id"))?;
    if session.is_some() && ttl.is_some() {
        return Err(Error::invalid("ttl", "must be empty for a lock in a session: it lives while its session does"));
    }
    Ok(session)
}

/// Lock ids or a batch id, exactly one of the two.
pub(super) fn target(
    limits: &Limits,
    lock_ids: &[String],
    batch_id: &str,
    ids_field: &str,
) -> Result<LockTarget, Error> {
    match (lock_ids.is_empty(), batch_id.is_empty()) {
        (true, true) => Err(Error::invalid(ids_field, "or batch_id is required")),
        (false, false) => Err(Error::invalid("batch_id", format!("cannot be combined with {ids_field}"))),
        (true, false) => Ok(LockTarget::Batch(BatchId::parse(batch_id, "batch_id")?)),
        (false, true) => {
            if lock_ids.len() > limits.max_ids_per_call {
                return Err(Error::invalid(
                    ids_field,
                    format!("has {} ids; the limit is {}", lock_ids.len(), limits.max_ids_per_call),
                ));
            }
            let mut seen = HashMap::new();
            let mut ids = Vec::with_capacity(lock_ids.len());
            for (i, text) in lock_ids.iter().enumerate() {
                let field = if ids_field == "lock_id" { ids_field.to_owned() } else { format!("{ids_field}[{i}]") };
                let id = LockId::parse(text, &field)?;
                if let Some(first) = seen.insert(id.clone(), i) {
                    return Err(Error::invalid(field, format!("repeats {ids_field}[{first}]")));
                }
                ids.push(id);
            }
            Ok(LockTarget::Locks(ids))
        }
    }
}

/// ListLocks' filters; `stale` raises `older_than` to the stale threshold.
pub(super) fn lock_filter(r: &pb::ListLocksRequest, stale_threshold: Duration) -> Result<LockFilter, Error> {
    let mut older_than = r.older_than.as_ref().map(|d| convert::std_duration(d, "older_than")).transpose()?;
    if r.stale {
        older_than = Some(older_than.unwrap_or_default().max(stale_threshold));
    }
    Ok(LockFilter {
        sku: optional(&r.sku, |v| Sku::parse(v, "sku"))?,
        warehouse: optional(&r.warehouse_id, |v| WarehouseId::parse(v, "warehouse_id"))?,
        order_id: optional(&r.order_id, |v| OrderId::parse(v, "order_id"))?,
        holder: optional(&r.holder, |v| Holder::parse(v, "holder"))?,
        older_than,
    })
}

/// A requested page size: the default for 0, at most the maximum.
pub(crate) fn page_size(requested: u32) -> usize {
    match requested as usize {
        0 => DEFAULT_PAGE_SIZE,
        n => n.min(MAX_PAGE_SIZE),
    }
}

/// The caller's principal, when authentication is on.
pub(super) fn principal<T>(request: &Request<T>) -> Option<Principal> {
    request.extensions().get::<Principal>().cloned()
}

/// Who holds the locks a call takes or touches: the authenticated principal,
/// whatever the request says, or (authentication off) the request's `holder`.
pub(super) fn holder(principal: &Option<Principal>, field: &str) -> Result<Holder, Error> {
    match principal {
        Some(p) => Ok(p.name.clone()),
        None => Holder::parse(field, "holder"),
    }
}

/// Like [`holder`], where the request's `holder` is optional.
pub(super) fn optional_holder(principal: &Option<Principal>, field: &str) -> Result<Option<Holder>, Error> {
    match principal {
        Some(p) => Ok(Some(p.name.clone())),
        None => optional(field, |v| Holder::parse(v, "holder")),
    }
}

/// Who a change is attributed to in the audit trail.
pub(crate) fn actor(principal: &Option<Principal>) -> String {
    principal.as_ref().map_or_else(|| "anonymous".to_owned(), |p| p.name.to_string())
}

/// A stock record's key, its fields named with `prefix` (e.g. `lines[2].`).
pub(super) fn record_key(sku: &str, warehouse: &str, prefix: &str) -> Result<RecordKey, Error> {
    Ok(RecordKey::new(
        Sku::parse(sku, &format!("{prefix}sku"))?,
        WarehouseId::parse(warehouse, &format!("{prefix}warehouse_id"))?,
    ))
}

/// `None` for an empty field, else the parsed value.
pub(super) fn optional<T>(value: &str, parse: impl FnOnce(&str) -> Result<T, Error>) -> Result<Option<T>, Error> {
    if value.is_empty() { Ok(None) } else { parse(value).map(Some) }
}

/// A signed decimal, zero when the field is empty.
pub(super) fn signed_or_zero(text: &str, field: &str) -> Result<Signed, Error> {
    if text.is_empty() { Ok(Signed::ZERO) } else { Signed::parse(text, field) }
}

/// The stock keys of a read or a watch: 1 to `max_ids_per_call` of them.
pub(super) fn stock_keys(limits: &Limits, keys: &[pb::StockKey]) -> Result<Vec<RecordKey>, Error> {
    if keys.is_empty() || keys.len() > limits.max_ids_per_call {
        let message = format!("has {} pairs; it must have 1 to {}", keys.len(), limits.max_ids_per_call);
        return Err(Error::invalid("keys", message));
    }
    keys.iter().enumerate().map(|(i, k)| record_key(&k.sku, &k.warehouse_id, &format!("keys[{i}]."))).collect()
}

/// Most candidate warehouses a line may name.
pub(crate) const MAX_CANDIDATES: usize = 16;

/// A Lock's line, or a BatchLock's with `prefix` `lines[i].`: one
/// warehouse, or candidates (1 to [`MAX_CANDIDATES`] distinct warehouses of
/// the SKU), never both.
pub(super) fn lock_line(
    sku: &str,
    warehouse_id: &str,
    quantity: &str,
    candidates: Option<&pb::Candidates>,
    prefix: &str,
) -> Result<LockLine, Error> {
    let quantity_field = format!("{prefix}quantity");
    let Some(c) = candidates else {
        return Ok(LockLine::new(record_key(sku, warehouse_id, prefix)?, Quantity::parse(quantity, &quantity_field)?));
    };
    let field = format!("{prefix}candidates.warehouse_ids");
    if !warehouse_id.is_empty() {
        return Err(Error::invalid(format!("{prefix}warehouse_id"), "must be empty when candidates are given"));
    }
    if c.warehouse_ids.is_empty() || c.warehouse_ids.len() > MAX_CANDIDATES {
        let message = format!("has {} warehouses; it must have 1 to {MAX_CANDIDATES}", c.warehouse_ids.len());
        return Err(Error::invalid(field, message));
    }
    let sku = Sku::parse(sku, &format!("{prefix}sku"))?;
    let mut records: Vec<RecordKey> = Vec::with_capacity(c.warehouse_ids.len());
    for (i, warehouse) in c.warehouse_ids.iter().enumerate() {
        let record = RecordKey::new(sku.clone(), WarehouseId::parse(warehouse, &format!("{field}[{i}]"))?);
        if let Some(first) = records.iter().position(|r| *r == record) {
            return Err(Error::invalid(format!("{field}[{i}]"), format!("repeats {field}[{first}]")));
        }
        records.push(record);
    }
    let strategy = match pb::AllocationStrategy::try_from(c.strategy) {
        Ok(pb::AllocationStrategy::Unspecified | pb::AllocationStrategy::Priority) => Strategy::Priority,
        Ok(pb::AllocationStrategy::MostAvailable) => Strategy::MostAvailable,
        Err(_) => {
            let message = format!("is {}; it must be PRIORITY or MOST_AVAILABLE", c.strategy);
            return Err(Error::invalid(format!("{prefix}candidates.strategy"), message));
        }
    };
    Ok(LockLine {
        record: records[0].clone(),
        quantity: Quantity::parse(quantity, &quantity_field)?,
        choice: Some(Choice { candidates: records, strategy, split: c.allow_split }),
    })
}

/// A BatchLock's lines: 1 to `max_batch_lines`, naming at most
/// `max_batch_lines` records in all (candidates count each), each record
/// at most once, so one call's script stays bounded.
pub(super) fn batch_lines(limits: &Limits, lines: &[pb::BatchLockLine]) -> Result<Vec<LockLine>, Error> {
    if lines.is_empty() || lines.len() > limits.max_batch_lines {
        return Err(Error::invalid(
            "lines",
            format!("has {} lines; a batch must have 1 to {}", lines.len(), limits.max_batch_lines),
        ));
    }
    let mut seen = HashMap::new();
    let mut parsed = Vec::with_capacity(lines.len());
    let mut records = 0;
    for (i, line) in lines.iter().enumerate() {
        let prefix = format!("lines[{i}].");
        let parsed_line = lock_line(&line.sku, &line.warehouse_id, &line.quantity, line.candidates.as_ref(), &prefix)?;
        records += parsed_line.candidates().len();
        if records > limits.max_batch_lines {
            return Err(Error::invalid(
                "lines",
                format!("name more than {} warehouses in all, counting candidates", limits.max_batch_lines),
            ));
        }
        for record in parsed_line.candidates() {
            if let Some(first) = seen.insert(record.clone(), i) {
                return Err(Error::invalid(
                    format!("lines[{i}]"),
                    format!(
                        "names sku {} in warehouse {} as lines[{first}] does; merge the two lines",
                        record.sku, record.warehouse
                    ),
                ));
            }
        }
        parsed.push(parsed_line);
    }
    Ok(parsed)
}

/// A BatchLock's policy for short lines.
pub(super) fn batch_policy(policy: i32) -> Result<BatchPolicy, Error> {
    match pb::BatchLockPolicy::try_from(policy) {
        Ok(pb::BatchLockPolicy::Unspecified | pb::BatchLockPolicy::AllOrNothing) => Ok(BatchPolicy::AllOrNothing),
        Ok(pb::BatchLockPolicy::PerLine) => Ok(BatchPolicy::PerLine),
        Ok(pb::BatchLockPolicy::Partial) => Ok(BatchPolicy::Partial),
        Err(_) => Err(Error::invalid("policy", format!("is {policy}; it must be ALL_OR_NOTHING, PER_LINE or PARTIAL"))),
    }
}
