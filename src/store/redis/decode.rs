//! Decoding of script replies: arrays of strings whose first element is a tag
//! (`OK`, or the reason a request was refused). `REPLAY` in front marks a reply
//! replayed from an idempotency record.

use crate::domain::{Error, RecordKey, StockView, UnitScale};

/// A script reply being read front to back.
pub(super) struct Reply {
    items: std::vec::IntoIter<String>,
    /// True when the script replayed an earlier call's reply.
    pub(super) replayed: bool,
    /// The first element: `OK` or a refusal reason.
    pub(super) tag: String,
}

impl Reply {
    pub(super) fn new(items: Vec<String>) -> Result<Self, Error> {
        let mut items = items.into_iter();
        let mut tag = items.next().ok_or_else(|| malformed("an empty reply"))?;
        let replayed = tag == "REPLAY";
        if replayed {
            tag = items.next().ok_or_else(|| malformed("an empty replay"))?;
        }
        Ok(Self { items, replayed, tag })
    }

    /// The next element as text.
    pub(super) fn text(&mut self) -> Result<String, Error> {
        self.items.next().ok_or_else(|| malformed("a short reply"))
    }

    /// The next element as an integer.
    pub(super) fn int(&mut self) -> Result<i64, Error> {
        let text = self.text()?;
        text.parse().map_err(|_| malformed(&format!("{text:?} where a number belongs")))
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

    /// The error for a tag this call does not expect.
    pub(super) fn unexpected(&self) -> Error {
        malformed(&format!("the unexpected tag {:?}", self.tag))
    }
}

/// An unexpected reply: a script and its decoder disagree, which is a bug.
pub(super) fn malformed(what: &str) -> Error {
    Error::Internal { detail: format!("a script answered with {what}") }
}
