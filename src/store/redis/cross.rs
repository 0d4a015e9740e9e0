//! Calls whose locks or records fall in several partitions (so, on Redis
//! Cluster, possibly on several shards): one script per partition.
//!
//! A BatchLock stays all or nothing for the caller: if a partition's script
//! fails, the partitions already locked are released, and their idempotency
//! records deleted, before the error returns. Renew, Release and reads are
//! atomic per partition (see "What it guarantees" in the README).

use std::future::Future;

use super::call::Invocation;
use super::lock::{Ticket, request_digest};
use super::reply::malformed;
use super::{Partition, RedisStore, scripts};
use crate::domain::{
    BatchId, BatchPolicy, CandidateFigure, Error, Granted, LockCommand, LockId, LockOutcome, LockTarget, RecordKey,
    ReleaseCommand, RequestId, Shortage, Sku, StockView, UnitScale, format_scaled, new_nonce,
};

/// Item positions grouped by the partition of their SKU, partitions in the
/// order of their first item.
pub(super) fn by_partition<'a>(
    keys: &super::Keys,
    skus: impl IntoIterator<Item = &'a Sku>,
) -> Vec<(Partition, Vec<usize>)> {
    let mut groups: Vec<(Partition, Vec<usize>)> = Vec::new();
    for (i, sku) in skus.into_iter().enumerate() {
        let partition = keys.partition_of(sku);
        match groups.iter_mut().find(|(p, _)| *p == partition) {
            Some((_, members)) => members.push(i),
            None => groups.push((partition, vec![i])),
        }
    }
    groups
}

impl RedisStore {
    /// Runs `run` on each partition's share of the items whose SKUs are
    /// `skus`, one partition after another, and puts the answers back in the
    /// items' order. Also says whether every partition's call was a replay.
    pub(super) async fn scatter<'a, T, Fut>(
        &self,
        skus: impl IntoIterator<Item = &'a Sku>,
        mut run: impl FnMut(Partition, Vec<usize>) -> Fut,
    ) -> Result<(Vec<T>, bool), Error>
    where
        Fut: Future<Output = Result<(Vec<T>, bool), Error>>,
    {
        let groups = by_partition(&self.keys, skus);
        let mut answers: Vec<Option<T>> = (0..groups.iter().map(|(_, n)| n.len()).sum()).map(|_| None).collect();
        let mut replayed = true;
        for (partition, numbers) in groups {
            let (found, was_replay) = run(partition, numbers.clone()).await?;
            replayed &= was_replay;
            for (i, answer) in numbers.into_iter().zip(found) {
                answers[i] = Some(answer);
            }
        }
        let answers: Vec<T> = answers.into_iter().flatten().collect();
        Ok((answers, replayed))
    }

    /// A BatchLock when there are several partitions, one attempt of its
    /// request_id at a time: a retry that arrives while an earlier attempt
    /// still runs is answered REQUEST_IN_PROGRESS, for it could replay a
    /// partition the earlier attempt is about to undo. The hold lasts as
    /// long as the attempt may (each partition's lock and undo within the
    /// store timeout), so a crashed attempt does not block its retries long.
    pub(super) async fn lock_across_partitions(
        &self,
        cmd: &LockCommand,
        groups: &[(Partition, Vec<usize>)],
        ticket: &Ticket,
    ) -> Result<LockOutcome, Error> {
        let ticket = &Ticket { across_partitions: true, ..ticket.clone() };
        let nonce = ticket.nonce.as_str();
        let in_flight = self.keys.request_in_flight(&cmd.request_id);
        // Each partition takes a few calls to lock (settling, a generation
        // turning) and one to undo, each within the store timeout.
        let budget = self.timeout.as_millis() as u64 * 4 * (groups.len() as u64 + 1);
        if self.set_or_get(&in_flight, nonce, budget).await?.is_some() {
            return Err(Error::RequestInProgress { request_id: cmd.request_id.to_string() });
        }
        let (outcome, settled) = self.lock_each_partition(cmd, groups, ticket).await;
        let faulted = matches!(outcome, Err(Error::StoreTimeout | Error::StoreUnavailable { .. }));
        if settled && !faulted {
            // Otherwise the hold stays to its end: the attempt's last
            // writes (or an undo that timed out) may still be on their way.
            let mut drop = Invocation::new(&scripts::DROP_HOLD);
            drop.key(&in_flight).arg(nonce);
            let _: Result<_, Error> = self.eval(&drop).await;
        }
        outcome
    }

    /// A BatchLock across partitions, under its in-flight hold. The
    /// partitions its lines fall in are written down first, so that Renew
    /// and Release find them by batch id and a crash halfway still says
    /// where the batch's locks are; then each partition is locked by one
    /// script. Also says whether nothing of the attempt is left on its way
    /// (false when an undo failed).
    async fn lock_each_partition(
        &self,
        cmd: &LockCommand,
        groups: &[(Partition, Vec<usize>)],
        ticket: &Ticket,
    ) -> (Result<LockOutcome, Error>, bool) {
        let mut settled = true;
        let outcome = self.lock_each_partition_settling(cmd, groups, ticket, &mut settled).await;
        (outcome, settled)
    }

    async fn lock_each_partition_settling(
        &self,
        cmd: &LockCommand,
        groups: &[(Partition, Vec<usize>)],
        ticket: &Ticket,
        settled: &mut bool,
    ) -> Result<LockOutcome, Error> {
        let chosen = cmd.batch_id.as_ref().ok_or_else(|| malformed("a one-line Lock in several partitions"))?;
        // A retry must lock its remaining partitions under the batch id of
        // the first attempt (whose partitions replay theirs), not a new one.
        let claim = self.keys.batch_of_request(&cmd.request_id);
        let claimed = self.set_or_get(&claim, chosen.as_str(), self.retention_ms).await?;
        let batch_id = &match claimed {
            Some(first) => BatchId::parse(&first, "batch_id").map_err(|_| malformed("a bad claimed batch id"))?,
            None => chosen.clone(),
        };
        let cmd = &LockCommand { batch_id: Some(batch_id.clone()), ..cmd.clone() };
        let partitions: Vec<String> = groups.iter().map(|(p, _)| p.to_string()).collect();
        let mut write = redis::cmd("SET");
        write.arg(self.keys.batch_partitions(batch_id)).arg(partitions.join(",")).arg("PX");
        let _: () = self.query(write.arg(self.max_hold_ms + self.retention_ms)).await?;
        let mut taken: Vec<(Partition, &[usize], LockOutcome)> = Vec::with_capacity(groups.len());
        // Under PER_LINE and PARTIAL a partition none of whose lines got
        // anything is no failure: its lines are short, the others go on.
        let mut missed: Vec<Shortage> = Vec::new();
        for (k, (partition, numbers)) in groups.iter().enumerate() {
            let part = LockCommand { lines: numbers.iter().map(|&i| cmd.lines[i].clone()).collect(), ..cmd.clone() };
            match self.lock_group(*partition, &part, numbers, ticket).await {
                Ok(outcome) => taken.push((*partition, numbers, outcome)),
                Err(Error::InsufficientStock { shortages }) if cmd.policy != BatchPolicy::AllOrNothing => {
                    missed.extend(shortages);
                }
                Err(e) => {
                    *settled = self.undo_batch(cmd, batch_id, &taken).await;
                    return Err(match e {
                        Error::InsufficientStock { shortages } => {
                            self.name_every_shortage(cmd, &groups[k + 1..], shortages).await
                        }
                        e => e,
                    });
                }
            }
        }
        // Under PER_LINE and PARTIAL each partition answers even when it
        // locks nothing (and keeps that answer for a retry): a batch that
        // got nothing anywhere is refused, as in one partition.
        if taken.iter().all(|(_, _, outcome)| outcome.granted.is_empty()) {
            for (_, numbers, outcome) in &taken {
                for (&i, figures) in numbers.iter().zip(&outcome.short) {
                    let q = cmd.lines[i].quantity.decimal();
                    missed.extend(figures.iter().map(|f| Shortage {
                        line: i,
                        record: f.record.clone(),
                        requested: format_scaled(q.mantissa, q.scale),
                        available: f.available.clone(),
                        exists: f.exists,
                    }));
                }
            }
            missed.sort_by_key(|s| s.line);
            return Err(Error::InsufficientStock { shortages: missed });
        }
        let replayed = taken.iter().all(|(_, _, outcome)| outcome.replayed);
        let mut granted: Vec<Granted> = Vec::new();
        let mut short: Vec<Vec<CandidateFigure>> = vec![Vec::new(); cmd.lines.len()];
        for (_, numbers, outcome) in taken {
            granted.extend(outcome.granted.into_iter().map(|g| Granted { line: numbers[g.line], ..g }));
            for (&i, figures) in numbers.iter().zip(outcome.short) {
                short[i] = figures;
            }
        }
        // Lines of a partition that got nothing: what its script saw.
        for shortage in missed {
            short[shortage.line].push(shortage.figure());
        }
        granted.sort_by_key(|g| g.line);
        Ok(LockOutcome { granted, short, batch_id: Some(batch_id.clone()), replayed })
    }

    /// The shortages one partition's script found, and those of the
    /// partitions after it, read (not locked), so the caller hears of every
    /// short line at once, as from a batch in one partition.
    async fn name_every_shortage(
        &self,
        cmd: &LockCommand,
        rest: &[(Partition, Vec<usize>)],
        mut shortages: Vec<Shortage>,
    ) -> Error {
        for (_, numbers) in rest {
            let records: Vec<RecordKey> =
                numbers.iter().flat_map(|&i| cmd.lines[i].candidates().iter().cloned()).collect();
            let Ok(views) = self.get_stock_group(&records).await else { break };
            let mut views = views.into_iter();
            for &i in numbers {
                let line = &cmd.lines[i];
                let q = line.quantity.decimal();
                let seen: Vec<(&RecordKey, Option<StockView>)> = line.candidates().iter().zip(views.by_ref()).collect();
                // Each candidate's available and the line's quantity at its scale.
                let figures: Vec<(i64, Option<i64>)> = seen
                    .iter()
                    .map(|(_, view)| match view {
                        Some(v) => (v.available(), q.to_scaled(v.unit_scale, "quantity").ok()),
                        None => (0, None),
                    })
                    .collect();
                let split = line.choice.as_ref().is_some_and(|c| c.split);
                let whole = |(available, requested): &(i64, Option<i64>)| requested.is_some_and(|r| r <= *available);
                let fits = if split {
                    // Summed at the request's own scale, which every candidate can hold.
                    let sum: rust_decimal::Decimal = seen
                        .iter()
                        .filter_map(|(_, v)| {
                            v.as_ref().map(|v| rust_decimal::Decimal::new(v.available(), v.unit_scale.get()))
                        })
                        .sum();
                    sum >= rust_decimal::Decimal::new(q.mantissa, q.scale)
                } else {
                    figures.iter().any(whole)
                };
                if fits {
                    continue;
                }
                for (record, view) in &seen {
                    let (available, scale) =
                        view.as_ref().map_or((0, UnitScale::default()), |v| (v.available(), v.unit_scale));
                    shortages.push(Shortage {
                        line: i,
                        record: (*record).clone(),
                        requested: format_scaled(q.mantissa, q.scale),
                        available: scale.format(available),
                        exists: view.is_some(),
                    });
                }
            }
        }
        shortages.sort_by_key(|s| s.line);
        Error::InsufficientStock { shortages }
    }

    /// Releases what a failed cross-partition BatchLock took, with the
    /// idempotency and batch records that would replay or name it, so a
    /// retry locks afresh. Best effort: whatever cannot be undone now (Redis
    /// unreachable) expires by its TTL, and a retry with the same
    /// request_id replays it and carries on with the remaining partitions.
    /// True when every partition was undone.
    async fn undo_batch(
        &self,
        cmd: &LockCommand,
        batch_id: &BatchId,
        taken: &[(Partition, &[usize], LockOutcome)],
    ) -> bool {
        let mut undone = true;
        for (partition, _, outcome) in taken {
            let ids: Vec<LockId> = outcome.granted.iter().map(|g| g.lock.lock_id.clone()).collect();
            let undo = format!("batch-undo-{}{}", new_nonce(), new_nonce());
            let undo = RequestId::parse(&undo, "request_id").expect("a valid request id");
            let release = ReleaseCommand {
                target: LockTarget::Locks(ids.clone()),
                holder: Some(cmd.holder.clone()),
                request_id: undo,
            };
            // One script per partition releases the locks and forgets the
            // records that would replay them: cut short anywhere, a retry
            // finds each partition either whole or never locked.
            let request = request_digest(cmd);
            let result = self.release_undoing(*partition, &release, &ids, Some((&request, batch_id))).await;
            if let Err(e) = result {
                undone = false;
                tracing::warn!(
                    error = %e,
                    batch_id = %batch_id,
                    partition,
                    "cannot undo a failed BatchLock's locks in one partition; they expire by their TTL"
                );
            }
        }
        undone
    }

    /// The lock ids a target names; a batch's are read from its record.
    pub(super) async fn resolve(&self, target: &LockTarget) -> Result<Vec<LockId>, Error> {
        let batch_id = match target {
            LockTarget::Locks(ids) => return Ok(ids.clone()),
            LockTarget::Batch(batch_id) => batch_id,
        };
        let partitions: Vec<Partition> = if self.keys.partitions() == 1 {
            vec![0]
        } else {
            let listed: Option<String> =
                self.query(redis::cmd("GET").arg(self.keys.batch_partitions(batch_id))).await?;
            let listed = listed.ok_or_else(|| Error::BatchNotFound { batch_id: batch_id.to_string() })?;
            listed
                .split(',')
                .map(|p| p.parse().map_err(|_| malformed("a bad batch partition")))
                .collect::<Result<_, _>>()?
        };
        // Each partition's script wrote the part of the batch it locked, with
        // its own nonce (a retry may lock a later partition under a new one).
        let mut ids = Vec::new();
        for partition in partitions {
            let stored: Option<String> =
                self.query(redis::cmd("GET").arg(self.keys.batch(partition, batch_id))).await?;
            let Some(stored) = stored else { continue };
            let mut lines = stored.lines();
            let (_holder, nonce) = (lines.next(), lines.next().ok_or_else(|| malformed("a batch without a nonce"))?);
            for line in lines {
                let (record, token) = line.rsplit_once('|').ok_or_else(|| malformed("a bad batch line"))?;
                ids.push(LockId {
                    record: RecordKey::parse_id(record).ok_or_else(|| malformed("a bad batch record"))?,
                    token: token.parse().map_err(|_| malformed("a bad batch token"))?,
                    nonce: nonce.to_owned(),
                });
            }
        }
        if ids.is_empty() {
            return Err(Error::BatchNotFound { batch_id: batch_id.to_string() });
        }
        Ok(ids)
    }
}
