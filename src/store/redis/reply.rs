//! Script replies: an array of strings whose first element is a [`Tag`]
//! (`REPLAY` in front marks a reply replayed from an idempotency record),
//! then figures that each script's header describes.
//!
//! The tags are spelled in Lua exactly as the error reasons callers see
//! ([`Error::reason`]), and [`Tag::error`] is the one table from a refusal
//! to the domain error. Each `<op>.rs` reads the figures its script puts
//! after a tag into [`Facts`], then asks the table.

use crate::domain::{Error, LockEnd, LockId, RecordKey, Shortage, StockView, UnitScale, format_scaled, reason};

/// The first element of every script reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Tag {
    /// Done as asked.
    Ok,
    /// Commit of a lock an earlier call committed: nothing changed (not an error).
    AlreadyCommitted,
    /// A snapshot not newer than the stored one: ignored (not an error).
    Stale,
    /// The record a read-only check looked at does not exist (not an error).
    Missing,
    /// A Lock named another idempotency generation than Redis's clock gives;
    /// the right one follows (not an error: the call is made again).
    Generation,
    /// Lock lines (listed) were short while their records may hold expired
    /// locks in shards the call did not name: call again with those records
    /// whole (not an error; nothing was written).
    Settle,
    /// The partition has no fencing epoch (its data is gone): raise it and
    /// call again (not an error; nothing was written).
    Epoch,
    /// The lock is in the batch that follows: call again naming it (not an
    /// error; nothing was written).
    Batch,
    /// The request_id was used before with other content.
    IdempotencyKeyReused,
    /// No stock record for the SKU in the warehouse.
    SkuNotAvailableInWarehouse,
    /// A quantity has more fractional digits than the record's unit scale.
    InvalidQuantityScale,
    /// A quantity (or the figure it makes) does not fit Redis's exact range.
    QuantityOutOfRange,
    /// One or more lines ask for more than is available.
    InsufficientStock,
    /// No live lock; how it ended is in [`Facts::ended`].
    LockNotFound,
    /// The lock expired.
    LockExpired,
    /// An operator force-released the lock.
    LockForceReleased,
    /// The caller is not the lock's holder.
    LockHolderMismatch,
    /// Release of a committed lock.
    LockAlreadyCommitted,
    /// A snapshot would change the unit scale under live locks.
    UnitScaleInUse,
    /// An adjustment would take a figure below zero.
    NegativeStock,
    /// Commit of more than the lock holds.
    QuantityExceedsLock,
    /// No such forced-unlock request.
    ForceUnlockNotFound,
    /// The forced-unlock request was already decided.
    ForceUnlockNotPending,
    /// The forced-unlock request was not decided in time.
    ForceUnlockExpired,
    /// The requester of a forced unlock tried to approve it.
    TwoPersonRule,
    /// A session's end found it kept alive in time: nothing changed (not an error).
    Alive,
    /// The session lease a call was given has passed: read it again and
    /// call again (not an error; nothing was written).
    Lease,
    /// No such session, or not the caller's.
    SessionNotFound,
    /// The session ended; 'expired' or 'closed' follows.
    SessionEnded,
    /// Renew of a lock that lives in a session.
    LockInSession,
}

/// Every tag and its spelling in Lua; the refusals are the reasons callers
/// see, spelled once in [`reason`].
const TAGS: [(Tag, &str); 30] = [
    (Tag::Ok, "OK"),
    (Tag::AlreadyCommitted, "ALREADY_COMMITTED"),
    (Tag::Stale, "STALE"),
    (Tag::Missing, "MISSING"),
    (Tag::Generation, "GENERATION"),
    (Tag::Settle, "SETTLE"),
    (Tag::Epoch, "EPOCH"),
    (Tag::Batch, "BATCH"),
    (Tag::IdempotencyKeyReused, reason::IDEMPOTENCY_KEY_REUSED),
    (Tag::SkuNotAvailableInWarehouse, reason::SKU_NOT_AVAILABLE_IN_WAREHOUSE),
    (Tag::InvalidQuantityScale, "INVALID_QUANTITY_SCALE"),
    (Tag::QuantityOutOfRange, "QUANTITY_OUT_OF_RANGE"),
    (Tag::InsufficientStock, reason::INSUFFICIENT_STOCK),
    (Tag::LockNotFound, reason::LOCK_NOT_FOUND),
    (Tag::LockExpired, reason::LOCK_EXPIRED),
    (Tag::LockForceReleased, reason::LOCK_FORCE_RELEASED),
    (Tag::LockHolderMismatch, reason::LOCK_HOLDER_MISMATCH),
    (Tag::LockAlreadyCommitted, reason::LOCK_ALREADY_COMMITTED),
    (Tag::UnitScaleInUse, reason::UNIT_SCALE_IN_USE),
    (Tag::NegativeStock, reason::NEGATIVE_STOCK),
    (Tag::QuantityExceedsLock, reason::QUANTITY_EXCEEDS_LOCK),
    (Tag::ForceUnlockNotFound, reason::FORCE_UNLOCK_NOT_FOUND),
    (Tag::ForceUnlockNotPending, reason::FORCE_UNLOCK_NOT_PENDING),
    (Tag::ForceUnlockExpired, reason::FORCE_UNLOCK_EXPIRED),
    (Tag::TwoPersonRule, reason::TWO_PERSON_RULE),
    (Tag::Alive, "ALIVE"),
    (Tag::Lease, "LEASE"),
    (Tag::SessionNotFound, reason::SESSION_NOT_FOUND),
    (Tag::SessionEnded, "SESSION_ENDED"),
    (Tag::LockInSession, reason::LOCK_IN_SESSION),
];

/// What a refusal is about: the request's own identifiers, and the figures
/// its script reported after the tag. A tag uses the facts it needs (see
/// [`Tag::error`]); the others stay empty.
#[derive(Debug, Default)]
pub(super) struct Facts {
    /// The request_id, for a reuse.
    pub(super) request_id: String,
    /// The lock refused, as the caller named it.
    pub(super) lock_id: String,
    /// How a lock that is not found ended, if still known.
    pub(super) ended: Option<LockEnd>,
    /// Where a lock moved whole went: the moved lock's id.
    pub(super) moved_to: Option<String>,
    /// The record refused, and the request line that named it (BatchLock).
    pub(super) record: Option<(RecordKey, Option<usize>)>,
    /// The request field at fault, e.g. `lines[2].quantity` or `physical_delta`.
    pub(super) field: String,
    /// The record's unit scale, for a quantity with too many digits.
    pub(super) unit_scale: u32,
    /// Every short line.
    pub(super) shortages: Vec<Shortage>,
    /// A forced-unlock request's id, or a session's id.
    pub(super) force_unlock_id: String,
    /// Another figure a tag reports: the locked quantity (QUANTITY_EXCEEDS_LOCK),
    /// a request's state (FORCE_UNLOCK_NOT_PENDING), the requester (TWO_PERSON_RULE),
    /// or what is wrong with a field when the default wording does not fit
    /// (QUANTITY_OUT_OF_RANGE of a delta: the figure it makes is out of range).
    pub(super) detail: String,
}

impl Tag {
    fn parse(text: &str) -> Option<Self> {
        TAGS.iter().find(|(_, spelled)| *spelled == text).map(|(tag, _)| *tag)
    }

    /// How Lua spells the tag.
    pub(super) fn as_str(self) -> &'static str {
        TAGS.iter().find(|(tag, _)| *tag == self).map_or("", |(_, spelled)| spelled)
    }

    /// The one table from a refusal to the domain error. `Ok` and the
    /// outcomes that are not errors have no error: asking is a bug, reported
    /// as one.
    pub(super) fn error(self, facts: Facts) -> Error {
        let Facts {
            request_id,
            lock_id,
            ended,
            moved_to,
            record,
            field,
            unit_scale,
            shortages,
            force_unlock_id: id,
            detail,
        } = facts;
        match self {
            Self::IdempotencyKeyReused => Error::IdempotencyKeyReused { request_id },
            Self::SkuNotAvailableInWarehouse => match record {
                Some((record, line)) => Error::NotAvailable { record, line },
                None => malformed("SKU_NOT_AVAILABLE_IN_WAREHOUSE without a record"),
            },
            Self::InvalidQuantityScale => Error::invalid(
                field,
                format!("has more fractional digits than the record's unit_scale {unit_scale} allows"),
            ),
            Self::QuantityOutOfRange if detail.is_empty() => Error::invalid(field, "is too large"),
            Self::QuantityOutOfRange => Error::invalid(field, detail),
            Self::InsufficientStock => Error::InsufficientStock { shortages },
            Self::LockNotFound => Error::LockNotFound { lock_id, ended, moved_to },
            Self::LockExpired => Error::LockExpired { lock_id, available: (!detail.is_empty()).then_some(detail) },
            Self::LockForceReleased => Error::LockForceReleased { lock_id },
            Self::LockHolderMismatch => Error::HolderMismatch { lock_id },
            Self::LockAlreadyCommitted => Error::LockAlreadyCommitted { lock_id },
            Self::UnitScaleInUse => Error::UnitScaleInUse { current: unit_scale },
            Self::NegativeStock => Error::NegativeStock { field },
            Self::QuantityExceedsLock => Error::QuantityExceedsLock { locked: detail },
            Self::ForceUnlockNotFound => Error::ForceUnlockNotFound { id },
            Self::ForceUnlockNotPending => Error::ForceUnlockNotPending { id, state: detail },
            Self::ForceUnlockExpired => Error::ForceUnlockExpired { id },
            Self::TwoPersonRule => Error::TwoPersonRule { requester: detail },
            Self::SessionNotFound => Error::SessionNotFound { session_id: id },
            Self::SessionEnded => Error::SessionEnded { session_id: id, closed: detail == "closed" },
            Self::LockInSession => Error::LockInSession { lock_id },
            Self::Ok
            | Self::AlreadyCommitted
            | Self::Stale
            | Self::Missing
            | Self::Generation
            | Self::Settle
            | Self::Alive
            | Self::Lease
            | Self::Batch
            | Self::Epoch => malformed(&format!("{} taken for a refusal", self.as_str())),
        }
    }
}

/// The error of a refusal about one lock, as the scripts that act on a
/// lock by its id (commit.lua, transfer_lock.lua) answer it; `facts`
/// carries the request's and the lock's ids. A tag these scripts do not
/// refuse with is a bug, reported as one.
pub(super) fn lock_refusal(reply: &mut Reply, lock: &LockId, mut facts: Facts) -> Result<Error, Error> {
    match reply.tag {
        Tag::IdempotencyKeyReused | Tag::QuantityOutOfRange | Tag::LockHolderMismatch => {
            facts.field = "quantity".into();
        }
        Tag::InvalidQuantityScale => {
            facts.field = "quantity".into();
            facts.unit_scale = reply.unit_scale()?.get();
        }
        Tag::QuantityExceedsLock => {
            let locked = reply.int()?;
            facts.detail = format_scaled(locked, reply.unit_scale()?.get());
        }
        Tag::SessionEnded => {
            facts.force_unlock_id = lock.session().map_or_else(String::new, |s| s.to_string());
            facts.detail = reply.text()?;
        }
        Tag::LockNotFound | Tag::LockExpired | Tag::LockForceReleased => {
            facts.ended = lock_end(&reply.text()?)?;
            facts.moved_to = moved_to(reply, facts.ended, &lock.nonce)?;
            if reply.tag == Tag::LockExpired && !reply.is_done() {
                // A late commit refused: what is available instead.
                let available = reply.int()?;
                facts.detail = format_scaled(available, reply.unit_scale()?.get());
            }
        }
        _ => return Err(reply.unexpected()),
    }
    Ok(reply.tag.error(facts))
}

/// Where a lock moved whole went, from the "sku|warehouse|token" a script
/// answered after MOVED, and the lock's nonce (the moved lock keeps it).
pub(super) fn moved_to(reply: &mut Reply, ended: Option<LockEnd>, nonce: &str) -> Result<Option<String>, Error> {
    if ended != Some(LockEnd::Moved) || reply.is_done() {
        return Ok(None);
    }
    let reference = reply.text()?;
    Ok((!reference.is_empty()).then(|| format!("{reference}-{nonce}")))
}

/// How a lock ended, as find_lock in `lua/lib.lua` says it after LOCK_NOT_FOUND.
pub(super) fn lock_end(text: &str) -> Result<Option<LockEnd>, Error> {
    match text {
        "" => Ok(None),
        "RELEASED" => Ok(Some(LockEnd::Released)),
        "COMMITTED" => Ok(Some(LockEnd::Committed)),
        "MOVED" => Ok(Some(LockEnd::Moved)),
        other => Err(malformed(&format!("the lock end {other:?}"))),
    }
}

/// A script reply being read front to back.
pub(super) struct Reply {
    items: std::vec::IntoIter<String>,
    /// True when the script replayed an earlier call's reply.
    pub(super) replayed: bool,
    /// The first element: `OK`, an outcome, or a refusal.
    pub(super) tag: Tag,
}

impl Reply {
    pub(super) fn new(items: Vec<String>) -> Result<Self, Error> {
        let mut items = items.into_iter();
        let mut first = items.next().ok_or_else(|| malformed("an empty reply"))?;
        let replayed = first == "REPLAY";
        if replayed {
            first = items.next().ok_or_else(|| malformed("an empty replay"))?;
        }
        let tag = Tag::parse(&first).ok_or_else(|| malformed(&format!("the unknown tag {first:?}")))?;
        Ok(Self { items, replayed, tag })
    }

    /// The next element as text.
    pub(super) fn text(&mut self) -> Result<String, Error> {
        self.items.next().ok_or_else(|| malformed("a short reply"))
    }

    /// The next element as an integer.
    pub(super) fn int(&mut self) -> Result<i64, Error> {
        let text = self.text()?;
        parse_int(&text)
    }

    /// The next element as an integer, or None for ''.
    pub(super) fn optional_int(&mut self) -> Result<Option<i64>, Error> {
        let text = self.text()?;
        if text.is_empty() { Ok(None) } else { parse_int(&text).map(Some) }
    }

    /// The next element as a non-negative integer.
    pub(super) fn uint(&mut self) -> Result<u64, Error> {
        u64::try_from(self.int()?).map_err(|_| malformed("a negative count"))
    }

    /// The next element as a unit scale.
    pub(super) fn unit_scale(&mut self) -> Result<UnitScale, Error> {
        let scale = u32::try_from(self.int()?).map_err(|_| malformed("a bad unit scale"))?;
        UnitScale::new(scale, "unit_scale").map_err(|_| malformed("a bad unit scale"))
    }

    /// The next element as a line or lock index, checked against `len`.
    pub(super) fn index(&mut self, len: usize) -> Result<usize, Error> {
        usize::try_from(self.int()?).ok().filter(|&i| i < len).ok_or_else(|| malformed("an index out of range"))
    }

    /// A record's figures, as `record_reply` in `lua/lib.lua` writes them.
    pub(super) fn record(&mut self, record: RecordKey) -> Result<StockView, Error> {
        Ok(StockView {
            record,
            physical: self.int()?,
            reserved: self.int()?,
            in_transit: self.int()?,
            locked: self.int()?,
            unit_scale: self.unit_scale()?,
            version: self.uint()?,
            source_version: self.uint()?,
            live_locks: u32::try_from(self.int()?).map_err(|_| malformed("a bad lock count"))?,
        })
    }

    /// True when every element has been read.
    pub(super) fn is_done(&self) -> bool {
        self.items.len() == 0
    }

    /// The error for a tag this script never answers with.
    pub(super) fn unexpected(&self) -> Error {
        malformed(&format!("the unexpected tag {}", self.tag.as_str()))
    }
}

/// A reply's figure, which must be an integer.
fn parse_int(text: &str) -> Result<i64, Error> {
    text.parse().map_err(|_| malformed(&format!("{text:?} where a number belongs")))
}

/// An unexpected reply: a script and its decoder disagree, which is a bug.
pub(super) fn malformed(what: &str) -> Error {
    Error::Internal { detail: format!("a script answered with {what}") }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Sku, WarehouseId};

    fn reply(items: &[&str]) -> Reply {
        Reply::new(items.iter().map(|s| (*s).to_owned()).collect()).unwrap()
    }

    fn record() -> RecordKey {
        RecordKey::new(Sku::parse("SKU-1", "sku").unwrap(), WarehouseId::parse("WH-A", "warehouse_id").unwrap())
    }

    #[test]
    fn every_tag_is_spelled_once_and_parses_back() {
        for (tag, spelled) in TAGS {
            assert_eq!(Tag::parse(spelled), Some(tag));
            assert_eq!(tag.as_str(), spelled);
            assert_eq!(TAGS.iter().filter(|(t, _)| *t == tag).count(), 1, "{spelled}");
        }
        assert_eq!(Tag::parse("LOCK_COMMITTED"), None, "ended locks are LOCK_NOT_FOUND with how they ended");
    }

    #[test]
    fn every_refusal_is_spelled_as_the_reason_the_caller_sees() {
        let refusals = TAGS.iter().filter(|(tag, _)| {
            !matches!(
                tag,
                Tag::Ok
                    | Tag::AlreadyCommitted
                    | Tag::Stale
                    | Tag::Missing
                    | Tag::Generation
                    | Tag::Settle
                    | Tag::Epoch
                    | Tag::Batch
                    | Tag::Alive
                    | Tag::Lease
            )
        });
        for (tag, spelled) in refusals {
            let facts = Facts { record: Some((record(), None)), ..Facts::default() };
            let error = tag.error(facts);
            match tag {
                // Bad quantities are bad arguments, with the field named.
                Tag::InvalidQuantityScale | Tag::QuantityOutOfRange => assert_eq!(error.reason(), "INVALID_ARGUMENT"),
                // A session's end, told as how it ended.
                Tag::SessionEnded => assert_eq!(error.reason(), "SESSION_EXPIRED"),
                _ => assert_eq!(error.reason(), *spelled),
            }
        }
    }

    #[test]
    fn outcomes_are_not_errors() {
        for tag in [
            Tag::Ok,
            Tag::AlreadyCommitted,
            Tag::Stale,
            Tag::Missing,
            Tag::Generation,
            Tag::Settle,
            Tag::Epoch,
            Tag::Batch,
            Tag::Alive,
            Tag::Lease,
        ] {
            assert!(matches!(tag.error(Facts::default()), Error::Internal { .. }));
        }
    }

    #[test]
    fn each_refusal_carries_its_facts_into_the_error() {
        let error = Tag::LockNotFound.error(Facts {
            lock_id: "L".into(),
            ended: lock_end("COMMITTED").unwrap(),
            ..Facts::default()
        });
        assert!(
            matches!(error, Error::LockNotFound { ref lock_id, ended: Some(LockEnd::Committed), .. } if lock_id == "L")
        );
        let error = Tag::InvalidQuantityScale.error(Facts {
            field: "lines[1].quantity".into(),
            unit_scale: 2,
            ..Facts::default()
        });
        assert_eq!(
            error.to_string(),
            "lines[1].quantity has more fractional digits than the record's unit_scale 2 allows"
        );
        let error = Tag::QuantityExceedsLock.error(Facts { detail: "2.5".into(), ..Facts::default() });
        assert!(matches!(error, Error::QuantityExceedsLock { ref locked } if locked == "2.5"));
        let error = Tag::ForceUnlockNotPending.error(Facts {
            force_unlock_id: "fu-1".into(),
            detail: "EXECUTED".into(),
            ..Facts::default()
        });
        assert!(
            matches!(error, Error::ForceUnlockNotPending { ref id, ref state } if id == "fu-1" && state == "EXECUTED")
        );
        let error =
            Tag::SkuNotAvailableInWarehouse.error(Facts { record: Some((record(), Some(3))), ..Facts::default() });
        assert!(matches!(error, Error::NotAvailable { line: Some(3), .. }));
        let error = Tag::IdempotencyKeyReused.error(Facts { request_id: "r-1".into(), ..Facts::default() });
        assert!(error.to_string().contains("r-1"));
    }

    #[test]
    fn a_replay_is_marked_and_read_like_the_first_answer() {
        let mut first = reply(&["REPLAY", "OK", "7"]);
        assert!(first.replayed);
        assert_eq!(first.tag, Tag::Ok);
        assert_eq!(first.int().unwrap(), 7);
        assert!(first.is_done());
    }

    #[test]
    fn unknown_tags_and_short_or_bad_figures_are_internal_errors() {
        assert!(Reply::new(vec!["NOPE".into()]).is_err());
        assert!(Reply::new(vec![]).is_err());
        assert!(Reply::new(vec!["REPLAY".into()]).is_err());
        let mut r = reply(&["OK", "x", "-1"]);
        assert!(r.int().is_err());
        assert!(r.uint().is_err());
        assert!(r.text().is_err());
        assert!(reply(&["OK", "5"]).index(5).is_err());
        assert!(reply(&["OK", "13"]).unit_scale().is_err());
        assert!(lock_end("GONE").is_err());
        assert!(Reply::new(vec!["LOCK_RELEASED".into()]).is_err());
    }

    #[test]
    fn a_record_reads_in_record_reply_order() {
        let mut r = reply(&["OK", "10", "1", "2", "3", "0", "7", "4", "2"]);
        let view = r.record(record()).unwrap();
        assert_eq!(
            (
                view.physical,
                view.reserved,
                view.in_transit,
                view.locked,
                view.version,
                view.source_version,
                view.live_locks
            ),
            (10, 1, 2, 3, 7, 4, 2)
        );
        assert!(r.is_done());
    }
}
