//! [`AdminStore`] on Redis: forced-unlock requests (a hash each, and an
//! index by creation time), the audit stream, and lock statistics.
//!
//! All of them are per partition. A forced-unlock request has one part in
//! each partition of the locks it unlocks, each decided by one atomic script
//! with the releases of its locks; its id ends in `.<p>+<p>...` when there
//! are several partitions, and it is listed in the first. The listings merge
//! the partitions in time order.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use super::call::millis;
use super::reply::malformed;
use super::request_force_unlock::Part;
use super::{Partition, RedisStore};
use crate::domain::{
    AdminStore, Approval, AuditEvent, AuditFilter, DeadLetter, Error, EventId, ForceUnlockItem, ForceUnlockState,
    ForceUnlockView, IngestStats, LockId, LockStats, LockView, RecordCheck, RecordKey, Repair, RequestId, StockStore,
    WarehouseId,
};

/// How many index entries or stream events one round trip reads.
const CHUNK: usize = 200;

impl RedisStore {
    /// The partitions of a forced-unlock request's parts, from its id, the
    /// first the one it is listed in; `None` for an id this store cannot have issued.
    fn force_unlock_parts(&self, id: &str) -> Option<Vec<Partition>> {
        if self.keys.partitions() == 1 {
            return Some(vec![0]);
        }
        let parts: Vec<Partition> = id.rsplit_once('.')?.1.split('+').map(|p| p.parse().ok()).collect::<Option<_>>()?;
        (!parts.is_empty() && parts.iter().all(|&p| p < self.keys.partitions())).then_some(parts)
    }

    /// A request's parts, read and merged into one view.
    async fn force_unlock_view(&self, id: &str) -> Result<ForceUnlockView, Error> {
        let not_found = || Error::ForceUnlockNotFound { id: id.to_owned() };
        let mut parts = Vec::new();
        for partition in self.force_unlock_parts(id).ok_or_else(not_found)? {
            parts.extend(self.force_unlock_hashes(partition, &[id.to_owned()]).await?);
        }
        merge_parts(parts).ok_or_else(not_found)
    }

    /// Runs a decision (`decide`) on each part of request `id`. The first
    /// part's refusal is the request's (the parts share requester, expiry and
    /// state); a later part already decided (by an earlier, interrupted
    /// decision) is skipped, so a repeated decision completes the request.
    async fn decide_parts<Fut>(
        &self,
        id: &str,
        done: &str,
        mut decide: impl FnMut(Partition) -> Fut,
    ) -> Result<(), Error>
    where
        Fut: std::future::Future<Output = Result<(), Error>>,
    {
        let parts = self.force_unlock_parts(id).ok_or_else(|| Error::ForceUnlockNotFound { id: id.to_owned() })?;
        // A part already decided this way, at any position, is skipped: a
        // decision retried after it was cut short completes the rest. If
        // every part was, the decision was made before: say so.
        let mut already = None;
        let mut acted = false;
        for partition in parts {
            match decide(partition).await {
                Ok(()) => acted = true,
                Err(e @ Error::ForceUnlockNotPending { .. }) if matches!(&e, Error::ForceUnlockNotPending { state, .. } if state == done) =>
                {
                    already.get_or_insert(e);
                }
                Err(e) => return Err(e),
            }
        }
        match already {
            Some(e) if !acted => Err(e),
            _ => Ok(()),
        }
    }

    /// The requests `ids` (all of one partition) that still exist, in order.
    async fn force_unlock_hashes(&self, partition: Partition, ids: &[String]) -> Result<Vec<ForceUnlockView>, Error> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for id in ids {
            pipe.hgetall(self.keys.force_unlock(partition, id));
        }
        pipe.cmd("TIME");
        let mut conn = self.link.conn();
        let mut replies: Vec<redis::Value> = self.bounded(pipe.query_async(&mut conn)).await?;
        let time: (i64, i64) = redis::from_redis_value(replies.pop().ok_or_else(|| malformed("no TIME"))?)
            .map_err(|e| malformed(&e.to_string()))?;
        let now = time.0 * 1000 + time.1 / 1000;
        let mut views = Vec::with_capacity(ids.len());
        for (id, reply) in ids.iter().zip(replies) {
            let fields: HashMap<String, String> =
                redis::from_redis_value(reply).map_err(|e| malformed(&e.to_string()))?;
            if !fields.is_empty() {
                views.push(parse_force_unlock(id, &fields, now)?);
            }
        }
        Ok(views)
    }
}

/// One view of a request's parts: the items, releases and skips of all,
/// pending while any part is, executed when any part was executed and none is pending.
fn merge_parts(parts: Vec<ForceUnlockView>) -> Option<ForceUnlockView> {
    let mut parts = parts.into_iter();
    let mut view = parts.next()?;
    for part in parts {
        view.items.extend(part.items);
        view.released.extend(part.released);
        view.skipped.extend(part.skipped);
        view.created_at_ms = view.created_at_ms.min(part.created_at_ms);
        view.expires_at_ms = view.expires_at_ms.min(part.expires_at_ms);
        view.decided_at_ms = view.decided_at_ms.max(part.decided_at_ms);
        view.state = match (view.state, part.state) {
            (ForceUnlockState::Pending, _) | (_, ForceUnlockState::Pending) => ForceUnlockState::Pending,
            (ForceUnlockState::Executed, _) | (_, ForceUnlockState::Executed) => ForceUnlockState::Executed,
            (state, _) => state,
        };
    }
    Some(view)
}

fn parse_force_unlock(id: &str, f: &HashMap<String, String>, now_ms: i64) -> Result<ForceUnlockView, Error> {
    let text = |name: &str| f.get(name).cloned().unwrap_or_default();
    let int = |name: &str| f.get(name).and_then(|v| v.parse::<i64>().ok());
    let list = |name: &str| -> Vec<String> {
        f.get(name).map(|v| v.split(',').filter(|s| !s.is_empty()).map(str::to_owned).collect()).unwrap_or_default()
    };
    let expires_at_ms = int("expires").ok_or_else(|| malformed("a force-unlock request without expiry"))?;
    let state = match f.get("state").map(String::as_str) {
        Some("PENDING") if now_ms >= expires_at_ms => ForceUnlockState::Expired,
        Some("PENDING") => ForceUnlockState::Pending,
        Some("EXECUTED") => ForceUnlockState::Executed,
        Some("REJECTED") => ForceUnlockState::Rejected,
        other => return Err(malformed(&format!("the force-unlock state {other:?}"))),
    };
    let mut items = Vec::new();
    for line in f.get("items").map(String::as_str).unwrap_or("").lines() {
        let [lock_id, quantity, holder, order_id, created] = line.split('\t').collect::<Vec<_>>()[..] else {
            return Err(malformed("a bad force-unlock item"));
        };
        items.push(ForceUnlockItem {
            lock_id: LockId::parse(lock_id, "lock_id").map_err(|_| malformed("a bad force-unlock lock id"))?,
            quantity: quantity.to_owned(),
            holder: holder.to_owned(),
            order_id: order_id.to_owned(),
            created_at_ms: created.parse().map_err(|_| malformed("a bad force-unlock item time"))?,
        });
    }
    Ok(ForceUnlockView {
        id: id.to_owned(),
        state,
        requester: text("requester"),
        reason: text("reason"),
        items,
        created_at_ms: int("created").unwrap_or_default(),
        expires_at_ms,
        decided_at_ms: int("decided_at"),
        decided_by: text("decided_by"),
        decision_reason: text("decision_reason"),
        single_step: text("single_step") == "1",
        released: list("released"),
        skipped: list("skipped"),
    })
}

fn parse_event(id: String, fields: Vec<String>) -> Result<AuditEvent, Error> {
    let at_ms = id.split_once('-').and_then(|(ms, _)| ms.parse().ok()).ok_or_else(|| malformed("a bad stream id"))?;
    let mut event = AuditEvent {
        id,
        at_ms,
        action: String::new(),
        actor: String::new(),
        sku: String::new(),
        warehouse_id: String::new(),
        lock_ids: Vec::new(),
        reason: String::new(),
        request_id: String::new(),
        details: BTreeMap::new(),
    };
    let mut pairs = fields.into_iter();
    while let (Some(name), Some(value)) = (pairs.next(), pairs.next()) {
        match name.as_str() {
            "action" => event.action = value,
            "actor" => event.actor = value,
            "sku" => event.sku = value,
            "warehouse_id" => event.warehouse_id = value,
            "lock_ids" => event.lock_ids = value.split(',').filter(|s| !s.is_empty()).map(str::to_owned).collect(),
            "reason" => event.reason = value,
            "request_id" => event.request_id = value,
            other => {
                let key = other.strip_prefix("d.").unwrap_or(other).to_owned();
                event.details.insert(key, value);
            }
        }
    }
    Ok(event)
}

fn audit_matches(filter: &AuditFilter, event: &AuditEvent) -> bool {
    filter.actor.as_ref().is_none_or(|a| *a == event.actor)
        && filter.sku.as_ref().is_none_or(|s| *s == event.sku)
        && filter.action.as_ref().is_none_or(|a| *a == event.action)
}

impl AdminStore for RedisStore {
    async fn request_force_unlock(
        &self,
        id: &str,
        items: &[LockView],
        requester: &str,
        reason: &str,
        request_id: &RequestId,
    ) -> Result<String, Error> {
        // The first attempt's selection is the request's: a retry records
        // the rest of it, under the same id, whatever the selector finds
        // now (a lock may have ended, another begun, in between).
        let chosen: Vec<String> = items.iter().map(|l| l.lock_id.to_string()).collect();
        let claim = self.keys.force_unlock_of_request(request_id);
        let selected: Vec<LockId> = match self.set_or_get(&claim, &chosen.join(","), self.retention_ms).await? {
            None => items.iter().map(|l| l.lock_id.clone()).collect(),
            Some(first) => first
                .split(',')
                .map(|id| LockId::parse(id, "lock_id").map_err(|_| malformed("a bad recorded lock id")))
                .collect::<Result<_, _>>()?,
        };
        // What each selected lock looks like now; one that ended since has
        // nothing left to release and no line.
        let mut views: Vec<Option<LockView>> = Vec::with_capacity(selected.len());
        for lock_id in &selected {
            views.push(match items.iter().find(|l| &l.lock_id == lock_id) {
                Some(view) => Some(view.clone()),
                None => self.get_lock(lock_id).await.ok(),
            });
        }
        let by_part = super::cross::by_partition(&self.keys, selected.iter().map(|l| &l.record.sku));
        let mut parts: Vec<Partition> = by_part.iter().map(|(p, _)| *p).collect();
        parts.sort_unstable();
        let id = if self.keys.partitions() == 1 {
            id.to_owned()
        } else {
            format!("{id}.{}", parts.iter().map(Partition::to_string).collect::<Vec<_>>().join("+"))
        };
        let mut stored_id = None;
        for (partition, numbers) in by_part {
            let lock_ids: Vec<&LockId> = numbers.iter().map(|&i| &selected[i]).collect();
            let locks: Vec<&LockView> = numbers.iter().filter_map(|&i| views[i].as_ref()).collect();
            let part = Part { id: &id, lock_ids: &lock_ids, locks: &locks, listed: partition == parts[0] };
            // A retry replays each part with the first attempt's id.
            let stored = self.request_part(partition, part, requester, reason, request_id).await?;
            stored_id.get_or_insert(stored);
        }
        stored_id.ok_or_else(|| Error::invalid("lock_ids", "select no lock"))
    }

    async fn approve_force_unlock(
        &self,
        request: &ForceUnlockView,
        approver: &str,
        approval: Approval,
        comment: &str,
        request_id: &RequestId,
    ) -> Result<(), Error> {
        self.decide_parts(&request.id, "EXECUTED", |partition| {
            self.execute_part(partition, request, approver, approval, comment, request_id)
        })
        .await
    }

    async fn reject_force_unlock(
        &self,
        id: &str,
        actor: &str,
        reason: &str,
        request_id: &RequestId,
    ) -> Result<(), Error> {
        self.decide_parts(id, "REJECTED", |partition| self.reject_part(partition, id, actor, reason, request_id)).await
    }

    async fn get_force_unlock(&self, id: &str) -> Result<ForceUnlockView, Error> {
        self.force_unlock_view(id).await
    }

    async fn list_force_unlocks(
        &self,
        state: Option<ForceUnlockState>,
        page_size: usize,
        page_token: Option<String>,
    ) -> Result<(Vec<ForceUnlockView>, Option<String>), Error> {
        let bad = || Error::invalid("page_token", "is not a token returned by ListForceUnlockRequests");
        let mut offset: usize = match page_token {
            Some(token) => token.parse().map_err(|_| bad())?,
            None => 0,
        };
        let mut found = Vec::new();
        loop {
            // Newest first over every partition: the newest offset + CHUNK
            // entries of each partition hold the merged window.
            let mut merged: Vec<(f64, Partition, String)> = Vec::new();
            for partition in 0..self.keys.partitions() {
                let mut conn = self.link.conn();
                let entries: Vec<(String, f64)> = self
                    .bounded(
                        redis::cmd("ZREVRANGE")
                            .arg(self.keys.force_unlock_index(partition))
                            .arg(0)
                            .arg(offset + CHUNK - 1)
                            .arg("WITHSCORES")
                            .query_async(&mut conn),
                    )
                    .await?;
                merged.extend(entries.into_iter().map(|(id, created)| (created, partition, id)));
            }
            merged.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(b.2.cmp(&a.2)));
            let window: Vec<(Partition, String)> =
                merged.into_iter().skip(offset).take(CHUNK).map(|(_, p, id)| (p, id)).collect();
            let exhausted = window.len() < CHUNK;
            // Read every part of the window's requests, a partition at a time.
            let mut wanted: BTreeMap<Partition, Vec<String>> = BTreeMap::new();
            for (_, id) in &window {
                for partition in self.force_unlock_parts(id).unwrap_or_default() {
                    wanted.entry(partition).or_default().push(id.clone());
                }
            }
            let mut parts: HashMap<String, Vec<ForceUnlockView>> = HashMap::new();
            for (partition, ids) in wanted {
                for view in self.force_unlock_hashes(partition, &ids).await? {
                    parts.entry(view.id.clone()).or_default().push(view);
                }
            }
            for (i, (_, id)) in window.iter().enumerate() {
                let Some(view) = parts.remove(id).and_then(merge_parts) else { continue };
                if state.is_none_or(|s| s == view.state) {
                    found.push(view);
                    if found.len() == page_size {
                        // Index positions may shift as requests age out; a
                        // page boundary is a best effort, like any offset.
                        return Ok((found, Some((offset + i + 1).to_string())));
                    }
                }
            }
            if exhausted {
                return Ok((found, None));
            }
            offset += CHUNK;
        }
    }

    async fn list_audit(
        &self,
        filter: &AuditFilter,
        page_size: usize,
        page_token: Option<String>,
    ) -> Result<(Vec<AuditEvent>, Option<String>), Error> {
        let bad = || Error::invalid("page_token", "is not a token returned by ListAuditEvents");
        // Events are ordered by (stream id, partition) across partitions.
        let mut after: Option<(EventId, Partition)> = match page_token {
            Some(token) => {
                let (id, partition) = token.split_once('.').unwrap_or((&token, "0"));
                let partition: Partition = partition.parse().map_err(|_| bad())?;
                if partition >= self.keys.partitions() {
                    return Err(bad());
                }
                Some((EventId::parse(id).ok_or_else(bad)?, partition))
            }
            None => None,
        };
        let since = filter.since_ms.map_or_else(|| "-".to_owned(), |ms| ms.to_string());
        let end = filter.until_ms.map_or_else(|| "+".to_owned(), |ms| ms.to_string());
        let token = |(id, partition): (EventId, Partition)| {
            if self.keys.partitions() == 1 { id.to_string() } else { format!("{id}.{partition}") }
        };
        let mut events = Vec::new();
        // Bound the work of one call; a short page with a token is a valid page.
        for _ in 0..50 {
            let mut merged: Vec<(EventId, Partition, AuditEvent)> = Vec::new();
            // Events up to the horizon are complete in every partition.
            let mut horizon: Option<(EventId, Partition)> = None;
            for partition in 0..self.keys.partitions() {
                let start = match after {
                    Some((id, p)) if partition > p => id.to_string(),
                    Some((id, _)) => format!("({id}"),
                    None => since.clone(),
                };
                let mut conn = self.link.conn();
                let entries: Vec<(String, Vec<String>)> = self
                    .bounded(
                        redis::cmd("XRANGE")
                            .arg(self.keys.audit(partition))
                            .arg(&start)
                            .arg(&end)
                            .arg("COUNT")
                            .arg(CHUNK)
                            .query_async(&mut conn),
                    )
                    .await?;
                let full = entries.len() == CHUNK;
                for (id, fields) in entries {
                    let position = EventId::parse(&id).ok_or_else(|| malformed("a bad audit event id"))?;
                    merged.push((position, partition, parse_event(id, fields)?));
                }
                if full && let Some((last, _, _)) = merged.last() {
                    horizon = Some(horizon.map_or((*last, partition), |h| h.min((*last, partition))));
                }
            }
            merged.sort_by_key(|(id, partition, _)| (*id, *partition));
            let exhausted = horizon.is_none();
            for (id, partition, event) in merged {
                if horizon.is_some_and(|h| (id, partition) > h) {
                    break;
                }
                after = Some((id, partition));
                if audit_matches(filter, &event) {
                    events.push(event);
                    if events.len() == page_size {
                        return Ok((events, Some(token((id, partition)))));
                    }
                }
            }
            if exhausted {
                return Ok((events, None));
            }
        }
        Ok((events, after.map(token)))
    }

    async fn lock_health(
        &self,
        from_ms: i64,
        to_ms: i64,
        warehouse: Option<&str>,
    ) -> Result<Vec<crate::domain::LockHealthCell>, Error> {
        self.read_lock_health(from_ms, to_ms, warehouse).await
    }

    async fn check_records(
        &self,
        cursor: u64,
        count: usize,
        warehouse: Option<&WarehouseId>,
    ) -> Result<(Vec<RecordCheck>, u64), Error> {
        // The cursor walks the partitions' record sets in turn: the partition
        // is `cursor % partitions`, the SSCAN cursor in it `cursor / partitions`.
        let partitions = self.keys.partitions() as u64;
        let (partition, scan) = ((cursor % partitions) as Partition, cursor / partitions);
        let mut conn = self.link.conn();
        let mut sscan = redis::cmd("SSCAN");
        sscan.arg(self.keys.records(partition)).arg(scan).arg("COUNT").arg(count);
        if let Some(warehouse) = warehouse {
            // Record ids are "sku|warehouse"; a warehouse id may hold glob
            // characters, which must match themselves.
            sscan.arg("MATCH").arg(format!("*|{}", glob_literal(warehouse.as_str())));
        }
        let (next, ids): (u64, Vec<String>) = self.bounded(sscan.query_async(&mut conn)).await?;
        let next = match next {
            0 if partition as u64 + 1 == partitions => 0,
            0 => partition as u64 + 1,
            next => next
                .checked_mul(partitions)
                .map(|n| n + partition as u64)
                .ok_or_else(|| malformed("an SSCAN cursor past 2^64 / partitions"))?,
        };
        let mut checks = Vec::with_capacity(ids.len());
        for record in ids.iter().filter_map(|id| RecordKey::parse_id(id)) {
            checks.extend(self.check_record(record).await?);
        }
        Ok((checks, next))
    }

    async fn repair_record(
        &self,
        record: &RecordKey,
        actor: &str,
        reason: &str,
        request_id: &RequestId,
    ) -> Result<Repair, Error> {
        self.repair(record, actor, reason, request_id).await
    }

    async fn ingest_stats(&self, group: &str) -> Result<IngestStats, Error> {
        self.read_ingest_stats(group).await
    }

    async fn dead_letters(
        &self,
        limit: usize,
        before: Option<&str>,
    ) -> Result<(Vec<DeadLetter>, Option<String>), Error> {
        let end = match before {
            None => "+".to_owned(),
            Some(id) => match EventId::parse(id) {
                Some(id) => format!("({id}"),
                None => return Err(Error::invalid("page_token", "is not a next_page_token received before")),
            },
        };
        let mut conn = self.link.conn();
        let entries: Vec<(String, Vec<(String, String)>)> = self
            .bounded(
                redis::cmd("XREVRANGE")
                    .arg(self.keys.dead_letters())
                    .arg(end)
                    .arg("-")
                    .arg("COUNT")
                    .arg(limit)
                    .query_async(&mut conn),
            )
            .await?;
        let next = (entries.len() == limit).then(|| entries.last().map(|(id, _)| id.clone())).flatten();
        let letters = entries
            .into_iter()
            .map(|(id, fields)| {
                let mut letter = DeadLetter { id, ..DeadLetter::default() };
                for (name, value) in fields {
                    match name.as_str() {
                        super::ingest::DEAD_REASON => letter.reason = value,
                        super::ingest::DEAD_ERROR => letter.error = value,
                        _ => letter.fields.push((name, value)),
                    }
                }
                letter
            })
            .collect();
        Ok((letters, next))
    }

    async fn try_lease(&self, name: &str, ttl: Duration) -> Result<bool, Error> {
        let mut conn = self.link.conn();
        let taken: Option<String> = self
            .bounded(
                redis::cmd("SET")
                    .arg(self.keys.lease(name))
                    .arg(std::process::id())
                    .arg("NX")
                    .arg("PX")
                    .arg(millis(ttl).max(1))
                    .query_async(&mut conn),
            )
            .await?;
        Ok(taken.is_some())
    }

    async fn lock_stats(&self, stale_after: Duration) -> Result<LockStats, Error> {
        self.index_stats(stale_after).await
    }
}

/// `text` as a Redis glob pattern that matches only itself.
fn glob_literal(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod glob_tests {
    use super::glob_literal;

    #[test]
    fn glob_characters_match_themselves() {
        assert_eq!(glob_literal("WH-A"), "WH-A");
        assert_eq!(glob_literal("W[1]*?\\"), "W\\[1\\]\\*\\?\\\\");
    }
}
