//! `lua/lock.lua`: Lock and the part of a BatchLock in one partition.

use super::call::{Invocation, fingerprint, millis};
use super::keys::{LOCK_SHARDS, lock_shard};
use super::reply::{Facts, Reply, Tag, malformed};
use super::{Keys, Partition, RedisStore, scripts};
use crate::domain::{
    BatchId, BatchPolicy, CandidateFigure, Error, Granted, LockCommand, LockId, LockLine, LockOutcome, LockView,
    RecordKey, Shortage, Strategy, format_scaled,
};

/// The KEYS and ARGV of one call of `lua/lock.lua`, in the order of its
/// header. Public so that the load tool can measure the script itself
/// (`redis-benchmark`) beside the service.
#[derive(Clone, Debug)]
pub struct LockCall {
    /// KEYS, in script order.
    pub keys: Vec<String>,
    /// ARGV, in script order.
    pub args: Vec<String>,
}

/// What a lock call needs besides the command.
#[derive(Clone, Copy, Debug)]
pub struct LockLimits {
    /// Longest total hold (ms).
    pub max_hold_ms: u64,
    /// How long idempotency records and tombstones are kept (ms).
    pub retention_ms: u64,
    /// In a session: its lease, the expiry (Redis ms) its join read. The
    /// script refuses to lock in the session after it.
    pub session_lease_ms: Option<i64>,
    /// One partition of a BatchLock across partitions: under PER_LINE or
    /// PARTIAL it answers (and keeps) even a call that locks nothing, so a
    /// retry replays every partition's first answer.
    pub one_part: bool,
}

/// What every lock of one Lock or BatchLock call shares, in every
/// partition: its nonce (which names the session, if any) and the
/// session's lease.
#[derive(Clone, Debug)]
pub(super) struct Ticket {
    /// The nonce (see [`crate::domain::new_nonce`], [`crate::domain::session_nonce`]).
    pub(super) nonce: String,
    /// The session's lease, in a session.
    pub(super) session_lease_ms: Option<i64>,
    /// Set when the call's lines span several partitions (see [`LockLimits::one_part`]).
    pub(super) across_partitions: bool,
}

impl LockCall {
    /// The call for `cmd`'s lines, all in `partition`, under `nonce`, in
    /// idempotency generation `generation` (see [`LockCall::generation`]);
    /// the record slots (each line's candidates, numbered across lines)
    /// whose number is in `wide` name their record whole, so the script can
    /// settle its expired locks in every shard (it asks for that by
    /// answering SETTLE with those slots).
    pub fn new(
        keys: &Keys,
        partition: Partition,
        cmd: &LockCommand,
        limits: LockLimits,
        nonce: &str,
        generation: u64,
        wide: &[usize],
    ) -> Self {
        let request = request_digest(cmd);
        let line_args = line_args(cmd);
        let slots = cmd.lines.iter().map(|line| line.candidates().len()).sum::<usize>();
        let mut key_list = Vec::with_capacity(9 + 5 * slots + (2 + 3 * LOCK_SHARDS) * wide.len());
        let pk = keys.partition_keys(partition, None);
        key_list.extend([
            keys.lock_idempotency(partition, generation, &request),
            pk.due,
            pk.events,
            pk.audit,
            keys.lock_idempotency(partition, generation.saturating_sub(1), &request),
            match &cmd.batch_id {
                Some(batch) => keys.batch(partition, batch),
                None => pk.idempotency,
            },
            keys.epoch(partition),
        ]);
        match &cmd.session {
            Some(session) => {
                key_list.extend([keys.session_locks(partition, session), keys.session_end(partition, session)]);
            }
            None => key_list.extend([keys.unused(partition), keys.unused(partition)]),
        }
        // Every lock of the call is in its nonce's shard.
        let shard = lock_shard(nonce);
        for (slot, record) in cmd.lines.iter().flat_map(LockLine::candidates).enumerate() {
            if wide.contains(&slot) {
                key_list.extend(keys.whole_record(record));
            } else {
                let record = keys.record(record, shard);
                key_list.extend([record.stock, record.locks, record.exp, record.ended, record.index]);
            }
        }
        let mut args = Vec::with_capacity(16 + line_args.len());
        args.extend([
            content_fingerprint(cmd, &line_args)[..16].to_owned(),
            millis(cmd.ttl).to_string(),
            limits.max_hold_ms.to_string(),
            cmd.holder.to_string(),
            cmd.order_id.to_string(),
            cmd.batch_id.as_ref().map_or_else(String::new, |b| b.to_string()),
            limits.retention_ms.to_string(),
            limits.retention_ms.to_string(),
            nonce.to_owned(),
            request,
            generation.to_string(),
            limits.retention_ms.max(1).to_string(),
            shard.to_string(),
            (0..slots).map(|n| if wide.contains(&n) { '1' } else { '0' }).collect(),
            limits.session_lease_ms.map_or_else(String::new, |lease| lease.to_string()),
            match (cmd.policy, limits.one_part) {
                (BatchPolicy::AllOrNothing, _) => "A",
                (BatchPolicy::PerLine, false) => "L",
                (BatchPolicy::PerLine, true) => "l",
                (BatchPolicy::Partial, false) => "P",
                (BatchPolicy::Partial, true) => "p",
            }
            .to_owned(),
        ]);
        args.extend(line_args);
        Self { keys: key_list, args }
    }

    /// The idempotency generation of the instant `unix_ms`, for records kept
    /// `retention_ms`.
    pub fn generation(unix_ms: u64, retention_ms: u64) -> u64 {
        unix_ms / retention_ms.max(1)
    }

    /// The idempotency generation of now, by this machine's clock.
    pub fn current_generation(retention_ms: u64) -> u64 {
        Self::generation(unix_ms(), retention_ms)
    }

    /// The SHA1 the script is called by (EVALSHA) on a dataset of
    /// `identity` (see [`super::dataset_identity`]).
    pub fn script_sha(identity: &str) -> String {
        scripts::ScriptSet::new(identity).sha(&scripts::LOCK).to_owned()
    }
}

impl RedisStore {
    /// Locks the lines of `cmd`, all in `partition`, in one script; `numbers`
    /// are their line numbers in the caller's request, for its errors.
    pub(super) async fn lock_group(
        &self,
        partition: Partition,
        cmd: &LockCommand,
        numbers: &[usize],
        ticket: &Ticket,
    ) -> Result<LockOutcome, Error> {
        let mut limits = LockLimits {
            max_hold_ms: self.max_hold_ms,
            retention_ms: self.retention_ms,
            session_lease_ms: ticket.session_lease_ms,
            one_part: ticket.across_partitions,
        };
        let nonce = ticket.nonce.as_str();
        let mut generation = LockCall::current_generation(limits.retention_ms);
        let mut wide = Vec::new();
        let call = |limits, generation, wide: &[usize]| {
            LockCall::new(&self.keys, partition, cmd, limits, nonce, generation, wide)
        };
        let mut reply = self.lock_call(call(limits, generation, &wide)).await?;
        for _ in 0..5 {
            match reply.tag {
                // This replica's clock and Redis's disagree about the
                // generation (near its boundary): Redis's clock decides.
                Tag::Generation => generation = reply.uint()?,
                // The partition has no fencing epoch: its data is gone.
                // Raise it, so no token goes back, then lock.
                Tag::Epoch => self.link.raise_epoch(&self.keys.epoch(partition)).await?,
                // Lines short while other shards may hold expired locks:
                // their whole records let the script settle them first.
                Tag::Settle => {
                    let slots = cmd.lines.iter().map(|line| line.candidates().len()).sum();
                    while !reply.is_done() {
                        let slot = reply.index(slots)?;
                        if !wide.contains(&slot) {
                            wide.push(slot);
                        }
                    }
                }
                // The session's lease, as its join read it, has passed
                // (a keep-alive may have come since, or a call before this
                // one took long): read it again.
                Tag::Lease => {
                    let session = cmd.session.as_ref().ok_or_else(|| malformed("LEASE outside a session"))?;
                    let joined = self.join_session(session, Some(&cmd.holder), &[partition]).await?;
                    limits.session_lease_ms = Some(joined.expires_at_ms);
                }
                _ => break,
            }
            // Nothing was written: call again.
            reply = self.lock_call(call(limits, generation, &wide)).await?;
        }
        if reply.tag != Tag::Ok {
            return Err(refusal(&mut reply, cmd, numbers)?);
        }
        granted(reply, cmd)
    }
}

impl RedisStore {
    async fn lock_call(&self, call: LockCall) -> Result<Reply, Error> {
        let mut inv = Invocation::new(&scripts::LOCK);
        for key in &call.keys {
            inv.key(key);
        }
        for arg in &call.args {
            inv.arg(arg);
        }
        self.run_script("lock", &inv).await
    }
}

/// The error of a refused lock call: `{tag, line, ...}` (see the script's header).
fn refusal(reply: &mut Reply, cmd: &LockCommand, numbers: &[usize]) -> Result<Error, Error> {
    let batch = cmd.batch_id.is_some();
    let mut facts = Facts { request_id: cmd.request_id.to_string(), ..Facts::default() };
    let line = |reply: &mut Reply| -> Result<(usize, &RecordKey), Error> {
        let line = reply.index(cmd.lines.len())?;
        Ok((numbers[line], &cmd.lines[line].record))
    };
    match reply.tag {
        Tag::IdempotencyKeyReused => {}
        Tag::SkuNotAvailableInWarehouse => {
            let (number, record) = line(reply)?;
            facts.record = Some((record.clone(), batch.then_some(number)));
        }
        Tag::InvalidQuantityScale | Tag::QuantityOutOfRange => {
            let (number, _) = line(reply)?;
            facts.field = if batch { format!("lines[{number}].quantity") } else { "quantity".into() };
            if reply.tag == Tag::InvalidQuantityScale {
                facts.unit_scale = reply.unit_scale()?.get();
            }
        }
        Tag::SessionNotFound | Tag::SessionEnded => {
            let session = cmd.session.as_ref().map_or_else(String::new, ToString::to_string);
            let detail = if reply.tag == Tag::SessionEnded { reply.text()? } else { String::new() };
            return Ok(reply.tag.error(Facts { force_unlock_id: session, detail, ..Facts::default() }));
        }
        Tag::InsufficientStock => {
            while !reply.is_done() {
                let k = reply.index(cmd.lines.len())?;
                let figure = candidate_figure(reply, &cmd.lines[k])?;
                let q = cmd.lines[k].quantity.decimal();
                facts.shortages.push(Shortage {
                    line: numbers[k],
                    record: figure.record,
                    requested: format_scaled(q.mantissa, q.scale),
                    available: figure.available,
                    exists: figure.exists,
                });
            }
        }
        _ => return Err(reply.unexpected()),
    }
    Ok(reply.tag.error(facts))
}

/// The locks an OK reply granted, and what each line's candidates had
/// when it was not filled.
fn granted(mut reply: Reply, cmd: &LockCommand) -> Result<LockOutcome, Error> {
    let created_at_ms = reply.int()?;
    let expires_at_ms = reply.int()?;
    let max_expires_at_ms = reply.int()?;
    let batch_id = Some(reply.text()?).filter(|b| !b.is_empty());
    let nonce = reply.text()?;
    let mut granted = Vec::with_capacity(cmd.lines.len());
    let mut short = Vec::with_capacity(cmd.lines.len());
    for (number, line) in cmd.lines.iter().enumerate() {
        let candidates = line.candidates();
        for _ in 0..reply.index(candidates.len() + 1)? {
            let record = &candidates[reply.index(candidates.len())?];
            let token = reply.uint()?;
            let quantity = reply.int()?;
            let available = reply.int()?;
            let unit_scale = reply.unit_scale()?;
            granted.push(Granted {
                line: number,
                lock: LockView {
                    lock_id: LockId { record: record.clone(), token, nonce: nonce.clone() },
                    quantity,
                    unit_scale,
                    created_at_ms,
                    expires_at_ms,
                    max_expires_at_ms,
                    ttl: cmd.ttl,
                    order_id: cmd.order_id.to_string(),
                    holder: cmd.holder.to_string(),
                    batch_id: batch_id.clone(),
                },
                available,
            });
        }
        let missed = reply.index(candidates.len() + 1)?;
        short.push((0..missed).map(|_| candidate_figure(&mut reply, line)).collect::<Result<_, _>>()?);
    }
    let batch_id = match batch_id {
        Some(id) => Some(BatchId::parse(&id, "batch_id").map_err(|_| malformed("a bad batch id"))?),
        None => None,
    };
    Ok(LockOutcome { granted, short, batch_id, replayed: reply.replayed })
}

/// A candidate's figure in a reply: candidate, available, unit_scale, exists.
fn candidate_figure(reply: &mut Reply, line: &LockLine) -> Result<CandidateFigure, Error> {
    let candidates = line.candidates();
    let record = candidates[reply.index(candidates.len())?].clone();
    let available = reply.int()?;
    let available = reply.unit_scale()?.format(available);
    let exists = reply.int()? == 1;
    Ok(CandidateFigure { record, available, exists })
}

/// The method of a Lock or BatchLock: request ids are scoped per method.
pub(super) fn lock_method(cmd: &LockCommand) -> &'static str {
    if cmd.batch_id.is_some() { "batch_lock" } else { "lock" }
}

/// This replica's clock, ms since the Unix epoch.
pub(super) fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Each line as lock.lua takes it: its spec (see the script), quantity
/// mantissa and scale, and its candidate records.
fn line_args(cmd: &LockCommand) -> Vec<String> {
    let mut args = Vec::with_capacity(4 * cmd.lines.len());
    for line in &cmd.lines {
        let q = line.quantity.decimal();
        let candidates = line.candidates();
        let mut spec = candidates.len().to_string();
        if let Some(choice) = &line.choice {
            spec.push(if choice.strategy == Strategy::MostAvailable { 'm' } else { 'p' });
            if choice.split {
                spec.push('s');
            }
        }
        args.extend([spec, q.mantissa.to_string(), q.scale.to_string()]);
        args.extend(candidates.iter().map(ToString::to_string));
    }
    args
}

/// The fingerprint of a Lock or BatchLock's content.
pub(super) fn lock_fingerprint(cmd: &LockCommand) -> String {
    content_fingerprint(cmd, &line_args(cmd))
}

/// [`lock_fingerprint`], given the command's [`line_args`].
fn content_fingerprint(cmd: &LockCommand, line_args: &[String]) -> String {
    let ttl_ms = millis(cmd.ttl).to_string();
    let mut parts = vec![lock_method(cmd), &ttl_ms, cmd.holder.as_str(), cmd.order_id.as_str()];
    if let Some(session) = &cmd.session {
        parts.push(session.as_str());
    }
    if cmd.is_plain() {
        // As before candidates and policies: record, mantissa, scale.
        parts.extend(line_args.chunks(4).flat_map(|line| [&line[3], &line[1], &line[2]]).map(String::as_str));
    } else {
        parts.push(match cmd.policy {
            BatchPolicy::AllOrNothing => "all-or-nothing",
            BatchPolicy::PerLine => "per-line",
            BatchPolicy::Partial => "partial",
        });
        parts.extend(line_args.iter().map(String::as_str));
    }
    fingerprint(&parts)
}

/// Which request a Lock or BatchLock is, for its idempotency record: 64 bits
/// of a digest of method and request_id, as 16 hex digits. Two request ids
/// share a digest with odds of about n^2 / 2^65 (n requests in a retention);
/// even then the content digest beside it tells them apart (a refusal as
/// IDEMPOTENCY_KEY_REUSED, never another request's lock).
pub(super) fn request_digest(cmd: &LockCommand) -> String {
    fingerprint(&[lock_method(cmd), cmd.request_id.as_str()])[..16].to_owned()
}
