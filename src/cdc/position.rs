//! A place in the binlog: a file of the server's binlog and an offset in
//! it. Files are numbered in the order the server wrote them
//! (`binlog.000007`), and offsets grow within a file, so positions order the
//! server's commits; that order is what makes a position a source_version.

use std::cmp::Ordering;
use std::fmt;

use crate::domain::{Error, MAX_SCALED};

/// A binlog file and an offset in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Position {
    /// The binlog file, as the server names it.
    pub file: String,
    /// The offset in it, in bytes.
    pub offset: u64,
}

impl Position {
    /// `offset` in `file`.
    pub fn new(file: impl Into<String>, offset: u64) -> Self {
        Self { file: file.into(), offset }
    }

    /// The file's number: the digits after its last dot.
    pub fn sequence(&self) -> Option<u64> {
        self.file.rsplit_once('.').and_then(|(_, digits)| digits.parse().ok())
    }

    /// The source_version of a snapshot made at this position: the file's
    /// number above the offset, so it grows with every commit, across
    /// rotations and server restarts (a restart starts a new file). Offsets
    /// stay below 2^32 (a binlog file is at most 1 GiB) and file numbers
    /// below 2^20 (six digits), so versions stay below 2^53.
    pub fn source_version(&self) -> Result<u64, Error> {
        let sequence = self.sequence().ok_or_else(|| {
            Error::invalid("binlog position", format!("{:?} has no numbered file to order it by", self.file))
        })?;
        let version = sequence.checked_shl(32).map(|high| high | (self.offset & 0xffff_ffff));
        version.filter(|v| *v <= MAX_SCALED as u64 && self.offset >> 32 == 0).ok_or_else(|| {
            Error::invalid("binlog position", format!("{self} is beyond what a source_version can order"))
        })
    }

    /// Parses the `file:offset` form of [`fmt::Display`].
    pub fn parse(text: &str) -> Option<Self> {
        let (file, offset) = text.rsplit_once(':')?;
        Some(Self::new(file, offset.parse().ok()?)).filter(|p| !p.file.is_empty())
    }
}

impl PartialOrd for Position {
    /// Positions of numbered files order by file number, then offset.
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        let (Some(mine), Some(theirs)) = (self.sequence(), other.sequence()) else {
            return (self == other).then_some(Ordering::Equal);
        };
        Some(mine.cmp(&theirs).then(self.offset.cmp(&other.offset)))
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file, self.offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_grow_across_files() {
        let early = Position::new("mariadb-bin.000009", 4_000_000);
        let late = Position::new("mariadb-bin.000010", 4);
        assert!(early < late);
        assert!(early.source_version().unwrap() < late.source_version().unwrap());
        assert_eq!(late.source_version().unwrap(), (10 << 32) | 4);
        assert_eq!(Position::new("binlog.999999", 1 << 30).source_version().unwrap() >> 32, 999_999);
    }

    #[test]
    fn round_trips_and_refuses_what_it_cannot_order() {
        let position = Position::new("binlog.000003", 1234);
        assert_eq!(Position::parse(&position.to_string()), Some(position));
        assert_eq!(Position::parse("binlog.000003"), None);
        assert!(Position::new("binlog", 4).source_version().is_err());
        assert!(Position::new("binlog.000001", 1 << 32).source_version().is_err());
    }
}
