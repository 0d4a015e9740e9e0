//! The ports of the store's streams, for the workers that follow them: the
//! ingestion stream warehouse systems append stock changes to, and the
//! lifecycle event streams every change appends to (one per partition).
//! The loops live in `crate::workers`; a store only reads and writes.

use std::future::Future;
use std::time::Duration;

use super::{Error, EventId, LifecycleEvent, StockStore};

/// One entry of the ingestion stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IngestEntry {
    /// Its id in the stream.
    pub id: String,
    /// Its fields, in the order they were written.
    pub fields: Vec<(String, String)>,
}

/// Who reads the ingestion stream: a consumer of a group every replica
/// joins, one replica at a time (see [`IngestStream::lead_ingest`]).
#[derive(Clone, Debug)]
pub struct IngestConsumer {
    /// The consumer group every replica joins.
    pub group: String,
    /// This consumer's name, unique per process.
    pub consumer: String,
    /// The reader's lease: a reader that stops renewing it for this long is
    /// replaced, and what it read but did not acknowledge is applied by the
    /// next one.
    pub lease: Duration,
    /// How long a delta's event_id is remembered (the idempotency
    /// retention): a new group starts no further back, and entries older
    /// than that which every group has read are trimmed.
    pub retention: Duration,
}

/// The ingestion stream, read through a consumer group by one replica at a
/// time, which applies its entries in stream order: a snapshot counts the
/// deltas before it, and a release of a reservation follows the
/// reservation, so no other order is right.
pub trait IngestStream: StockStore {
    /// A connection of the reader's own, for blocking reads.
    type Reader: Send;

    /// Takes or keeps the group's reader lease for `consumer.lease`; true
    /// when this consumer holds it.
    fn lead_ingest(&self, consumer: &IngestConsumer) -> impl Future<Output = Result<bool, Error>> + Send;

    /// Gives the lease up if this consumer holds it, so that another
    /// replica reads on without waiting for it to lapse.
    fn resign_ingest(&self, consumer: &IngestConsumer) -> impl Future<Output = Result<(), Error>> + Send;

    /// Opens a reader, creating the group when it does not exist: it starts
    /// `consumer.retention` back (by Redis time), so it applies the entries
    /// whose dedup records may still exist, and no older ones.
    fn open_ingest(&self, consumer: &IngestConsumer) -> impl Future<Output = Result<Self::Reader, Error>> + Send;

    /// A batch of the entries the group delivered but nobody acknowledged
    /// (a previous reader's, or this one's before an error), in stream
    /// order from `start` ("0-0" first), now this consumer's; and where the
    /// next batch starts (`None` after the last).
    fn claim_ingest(
        &self,
        reader: &mut Self::Reader,
        consumer: &IngestConsumer,
        start: &str,
    ) -> impl Future<Output = Result<(Vec<IngestEntry>, Option<String>), Error>> + Send;

    /// Moves new entries to this consumer's pending list (they are applied
    /// from there, see [`IngestStream::claim_ingest`]), waiting up to
    /// `block` for the first.
    fn read_ingest(
        &self,
        reader: &mut Self::Reader,
        consumer: &IngestConsumer,
        block: Duration,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// Acknowledges `entry`; with `dead`, first copies it to the dead-letter
    /// stream with the error's reason, in the same atomic step.
    fn settle_ingest(
        &self,
        consumer: &IngestConsumer,
        entry: &IngestEntry,
        dead: Option<&Error>,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// Trims the entries older than `consumer.retention` that every group
    /// has read and acknowledged, a bounded number at a time.
    fn trim_ingest(&self, consumer: &IngestConsumer) -> impl Future<Output = Result<(), Error>> + Send;
}

/// The lifecycle event streams, one per partition.
pub trait EventStream: StockStore {
    /// A connection of the tailer's own, for blocking reads.
    type Tail: Send;

    /// Opens a tail.
    fn open_tail(&self) -> impl Future<Output = Result<Self::Tail, Error>> + Send;

    /// A batch of `partition`'s events after `after`, waiting a short while
    /// for the first.
    fn tail_events(
        &self,
        tail: &mut Self::Tail,
        partition: usize,
        after: EventId,
    ) -> impl Future<Output = Result<Vec<LifecycleEvent>, Error>> + Send;

    /// Trims `partition`'s stream to what `keep` keeps, about.
    fn trim_events(&self, partition: usize, keep: EventRetention) -> impl Future<Output = Result<(), Error>> + Send;
}

/// Which lifecycle events a stream keeps: those younger than `max_age`, and
/// at most about `max_len` of them.
#[derive(Clone, Copy, Debug)]
pub struct EventRetention {
    /// Events older than this are trimmed.
    pub max_age: std::time::Duration,
    /// A cap on the count, whatever their age.
    pub max_len: u64,
}

/// Where the binlog follower keeps what must outlive it: the lease of the
/// one replica that follows a table's binlog, the position it applied up
/// to, and the status every replica reports (see `crate::cdc`).
pub trait BinlogState: StockStore {
    /// Takes or keeps the lease of follower `name` for `lease`; true when
    /// `me` holds it.
    fn lead_binlog(&self, name: &str, me: &str, lease: Duration) -> impl Future<Output = Result<bool, Error>> + Send;

    /// Gives the lease up if `me` holds it, so another replica follows at once.
    fn resign_binlog(&self, name: &str, me: &str) -> impl Future<Output = Result<(), Error>> + Send;

    /// Where follower `name` stopped, if it ever started.
    fn binlog_checkpoint(&self, name: &str) -> impl Future<Output = Result<Option<BinlogCheckpoint>, Error>> + Send;

    /// Records `checkpoint` if `me` still holds the lease, in one atomic
    /// step; false (and nothing written) if it does not.
    fn save_binlog_checkpoint(
        &self,
        name: &str,
        me: &str,
        checkpoint: &BinlogCheckpoint,
    ) -> impl Future<Output = Result<bool, Error>> + Send;

    /// Appends a row that cannot be applied to the dead-letter stream the
    /// ingestion stream's entries go to, with `error`'s reason.
    fn dead_letter_row(
        &self,
        fields: &[(&str, String)],
        error: &Error,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// Publishes the follower's status for `ttl` (the leader renews it).
    fn publish_binlog_status(
        &self,
        name: &str,
        status: &BinlogStatus,
        ttl: Duration,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// The status the leader published last, unless it lapsed.
    fn binlog_status(&self, name: &str) -> impl Future<Output = Result<Option<BinlogStatus>, Error>> + Send;
}

/// Where a binlog follower applied up to: a transaction boundary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BinlogCheckpoint {
    /// `file:offset` in the server's binlog.
    pub position: String,
    /// When the server committed the last transaction applied, unix seconds
    /// (0 before the first).
    pub committed_at: u64,
}

/// What the follower's leader reports of itself.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct BinlogStatus {
    /// The table followed, `database.table`.
    pub table: String,
    /// The replica that follows it.
    pub leader: String,
    /// `following`, `loading` (the initial read of the table), or what
    /// stopped it, such as `error: ...`.
    pub state: String,
    /// The position applied up to (`file:offset`).
    pub position: String,
    /// The server's current position.
    pub server_position: String,
    /// Binlog bytes written by the server and not yet applied.
    pub lag_bytes: u64,
    /// How long ago the server committed the oldest change not yet applied
    /// (0 when nothing is behind).
    pub lag_seconds: f64,
    /// Rows applied by this leader since it took over.
    pub rows_applied: u64,
    /// Rows applied per second, over the last status period.
    pub rows_per_second: f64,
    /// Rows dead-lettered by this leader since it took over.
    pub dead_letters: u64,
    /// When this was published, unix ms.
    pub updated_ms: u64,
}
