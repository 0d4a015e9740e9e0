//! Where a binlog's transactions begin and end: the only places the
//! follower may save its position, since a stream resumed inside a
//! transaction would start without the table maps its row events need.
//!
//! A transaction opens with a `BEGIN` query (MySQL) or a MariaDB GTID event
//! not marked standalone, and ends with an XID event (a transactional
//! engine) or a `COMMIT` or `ROLLBACK` query (a non-transactional one).
//! Inside it other queries come and go (MariaDB writes a dummy query for
//! each annotated statement to a replica that does not ask for annotations;
//! `SAVEPOINT`); they end nothing. Outside one, a query is a statement of
//! its own (DDL) and ends where it ends.

/// Event types, as the binlog numbers them.
mod kind {
    pub(super) const QUERY: u8 = 2;
    pub(super) const FORMAT_DESCRIPTION: u8 = 15;
    pub(super) const XID: u8 = 16;
    pub(super) const PREVIOUS_GTIDS: u8 = 35;
    pub(super) const MARIADB_BINLOG_CHECKPOINT: u8 = 161;
    pub(super) const MARIADB_GTID: u8 = 162;
    pub(super) const MARIADB_GTID_LIST: u8 = 163;
}

/// MariaDB's GTID event flag for a statement outside any transaction.
const FL_STANDALONE: u8 = 1;

/// What an event means for the checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Mark {
    /// Inside a transaction, or opening one: no place to resume.
    Inside,
    /// A transaction (or a statement of its own) ended here.
    End,
    /// Between transactions (file headers, MariaDB's checkpoints): a place
    /// to resume, nothing applied.
    Between,
}

/// The transaction state of a binlog stream, which starts between
/// transactions (every saved position is).
#[derive(Debug, Default)]
pub(super) struct Transactions {
    open: bool,
}

impl Transactions {
    /// What an event of type `kind` means: `query` is a query event's text,
    /// `data` the event's body.
    pub(super) fn on(&mut self, kind: u8, query: Option<&str>, data: &[u8]) -> Mark {
        match kind {
            kind::QUERY => {
                let query = query.unwrap_or_default().trim();
                let is = |word: &str| query.eq_ignore_ascii_case(word);
                if is("BEGIN") {
                    self.open = true;
                    Mark::Inside
                } else if !self.open || is("COMMIT") || is("ROLLBACK") {
                    self.open = false;
                    Mark::End
                } else {
                    Mark::Inside
                }
            }
            kind::XID => {
                self.open = false;
                Mark::End
            }
            kind::MARIADB_GTID => {
                // seq_no (8 bytes), domain_id (4), then the flags.
                let standalone = data.get(12).is_some_and(|flags| flags & FL_STANDALONE != 0);
                self.open = !standalone;
                Mark::Inside
            }
            kind::FORMAT_DESCRIPTION
            | kind::PREVIOUS_GTIDS
            | kind::MARIADB_BINLOG_CHECKPOINT
            | kind::MARIADB_GTID_LIST
                if !self.open =>
            {
                Mark::Between
            }
            _ => Mark::Inside,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE_MAP: u8 = 19;
    const WRITE_ROWS_V1: u8 = 23;
    const ANNOTATE_ROWS: u8 = 160;

    fn gtid(flags: u8) -> Vec<u8> {
        let mut data = vec![0; 12];
        data.push(flags);
        data
    }

    fn marks(events: &[(u8, Option<&str>, Vec<u8>)]) -> Vec<Mark> {
        let mut transactions = Transactions::default();
        events.iter().map(|(kind, query, data)| transactions.on(*kind, *query, data)).collect()
    }

    #[test]
    fn a_mariadb_transaction_ends_at_its_xid_only() {
        // Two statements in one transaction, each with the dummy query
        // MariaDB sends in place of its annotation, and a savepoint.
        let dummy = Some("# Dummy event replacing event type 160 that slave cannot handle.");
        let events = [
            (kind::MARIADB_GTID, None, gtid(0)),
            (kind::QUERY, dummy, vec![]),
            (TABLE_MAP, None, vec![]),
            (WRITE_ROWS_V1, None, vec![]),
            (kind::QUERY, Some("SAVEPOINT a"), vec![]),
            (ANNOTATE_ROWS, None, vec![]),
            (TABLE_MAP, None, vec![]),
            (WRITE_ROWS_V1, None, vec![]),
            (kind::XID, None, vec![]),
            (kind::MARIADB_BINLOG_CHECKPOINT, None, vec![]),
        ];
        let mut expected = vec![Mark::Inside; 8];
        expected.extend([Mark::End, Mark::Between]);
        assert_eq!(marks(&events), expected);
    }

    #[test]
    fn statements_of_their_own_and_non_transactional_commits_end_too() {
        let events = [
            (kind::MARIADB_GTID, None, gtid(FL_STANDALONE)),
            (kind::QUERY, Some("ALTER TABLE stock ADD COLUMN note TEXT"), vec![]),
            (kind::QUERY, Some("BEGIN"), vec![]),
            (TABLE_MAP, None, vec![]),
            (WRITE_ROWS_V1, None, vec![]),
            (kind::FORMAT_DESCRIPTION, None, vec![]),
            (kind::QUERY, Some("COMMIT"), vec![]),
        ];
        let expected = [Mark::Inside, Mark::End, Mark::Inside, Mark::Inside, Mark::Inside, Mark::Inside, Mark::End];
        assert_eq!(marks(&events), expected);
    }
}
