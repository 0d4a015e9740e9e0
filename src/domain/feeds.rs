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

/// Who reads the ingestion stream: a consumer of a group every replica joins.
#[derive(Clone, Debug)]
pub struct IngestConsumer {
    /// The consumer group every replica joins.
    pub group: String,
    /// This consumer's name, unique per process.
    pub consumer: String,
    /// Entries pending this long with another consumer are claimed.
    pub claim_idle: Duration,
}

/// The ingestion stream, read through a consumer group so that replicas
/// share the work and a crashed consumer's entries are claimed by another.
pub trait IngestStream: StockStore {
    /// A connection of the reader's own, for blocking reads.
    type Reader: Send;

    /// Opens a reader, creating the group (from the stream's start) when it
    /// does not exist.
    fn open_ingest(&self, consumer: &IngestConsumer) -> impl Future<Output = Result<Self::Reader, Error>> + Send;

    /// A batch of the entries other consumers read but left unacknowledged
    /// longer than the idle time, from `start` ("0-0" first) on, now this
    /// consumer's; and where the next batch starts (`None` after the last).
    fn claim_ingest(
        &self,
        reader: &mut Self::Reader,
        consumer: &IngestConsumer,
        start: &str,
    ) -> impl Future<Output = Result<(Vec<IngestEntry>, Option<String>), Error>> + Send;

    /// New entries for this consumer, waiting a short while for the first.
    fn read_ingest(
        &self,
        reader: &mut Self::Reader,
        consumer: &IngestConsumer,
    ) -> impl Future<Output = Result<Vec<IngestEntry>, Error>> + Send;

    /// Acknowledges `entry`; with `dead`, first copies it to the dead-letter
    /// stream with the error's reason, in the same atomic step.
    fn settle_ingest(
        &self,
        consumer: &IngestConsumer,
        entry: &IngestEntry,
        dead: Option<&Error>,
    ) -> impl Future<Output = Result<(), Error>> + Send;
}

/// The lifecycle event streams, one per partition.
pub trait EventStream: StockStore {
    /// A connection of the tailer's own, for blocking reads.
    type Tail: Send;

    /// How many partitions (so event streams) there are.
    fn partitions(&self) -> usize;

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
