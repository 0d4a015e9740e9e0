//! The follower's loop: the lease, the initial read of a stock table, the
//! binlog stream, the checkpoint, the status. See the module above for what
//! it guarantees and why.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use mysql_async::binlog::events::{Event, EventData};
use mysql_async::prelude::Queryable;
use mysql_async::{BinlogStream, BinlogStreamRequest, Conn};
use tokio::sync::watch;
use tokio::time::Instant;

use super::Settings;
use super::mapping::{Change, Mode, RowChange};
use super::position::Position;
use super::source::{self, Problem};
use crate::domain::{BinlogCheckpoint, BinlogState, BinlogStatus, Error, RecordKey};
use crate::metrics::METRICS;
use crate::workers::ingest::is_transient;

/// The first pause after a failed attempt; it doubles up to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(500);
const MAX_PAUSE: Duration = Duration::from_secs(30);

/// How often a checkpoint is saved when only other tables' transactions
/// move the position.
const IDLE_CHECKPOINT: Duration = Duration::from_secs(1);

/// How a term as leader ended.
enum Ended {
    /// The service stops.
    Stopped,
    /// Another replica holds the lease now.
    LostLease,
}

/// What ended a term early.
#[derive(Debug, thiserror::Error)]
enum Fault {
    #[error(transparent)]
    Source(#[from] Problem),
    #[error("Redis: {0}")]
    Store(Error),
}

pub(super) async fn run<S: BinlogState>(store: Arc<S>, settings: Settings, mut stop: watch::Receiver<bool>) {
    let me = format!("{}-{:08x}", std::process::id(), rand::random::<u32>());
    METRICS.cdc_enabled.set(1);
    let mut pause = FIRST_PAUSE;
    let mut held = false;
    loop {
        if *stop.borrow() {
            break;
        }
        let wait = match store.lead_binlog(&settings.name, &me, settings.lease).await {
            Ok(true) => {
                held = true;
                METRICS.cdc_leader.set(1);
                tracing::info!(table = %settings.mapping.qualified(), "binlog follower: this replica follows");
                let mut term = Term::new(store.as_ref(), &settings, &me);
                let began = Instant::now();
                let ended = term.follow(&mut stop).await;
                METRICS.cdc_leader.set(0);
                METRICS.cdc_lag_seconds.set(0.0);
                METRICS.cdc_lag_bytes.set(0);
                match ended {
                    Ok(Ended::Stopped) => break,
                    Ok(Ended::LostLease) => {
                        held = false;
                        tracing::warn!(
                            "binlog follower: another replica took the lease; it follows from the checkpoint"
                        );
                        settings.lease / 3
                    }
                    Err(fault) => {
                        METRICS.cdc_restarts.inc();
                        // A term that went well for a while starts the backoff over.
                        if began.elapsed() > MAX_PAUSE * 2 {
                            pause = FIRST_PAUSE;
                        }
                        tracing::warn!(error = %fault, retry_in = ?pause, "binlog follower: restarting at the checkpoint");
                        term.publish(&format!("error: {fault}"), None).await;
                        let wait = pause;
                        pause = (pause * 2).min(MAX_PAUSE);
                        wait
                    }
                }
            }
            Ok(false) => {
                held = false;
                settings.lease / 3
            }
            Err(e) => {
                tracing::warn!(error = %e, "binlog follower: cannot reach the lease");
                FIRST_PAUSE
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => break,
        }
    }
    if held && let Err(e) = store.resign_binlog(&settings.name, &me).await {
        tracing::warn!(error = %e, "binlog follower: cannot give the lease up; it lapses by itself");
    }
}

/// One term as leader: from the checkpoint to a fault, a lost lease or the stop.
struct Term<'a, S> {
    store: &'a S,
    settings: &'a Settings,
    me: &'a str,
    renewed: Instant,
    /// The last transaction boundary seen, and whether it is saved.
    boundary: BinlogCheckpoint,
    saved: bool,
    saved_at: Instant,
    /// Rows of the followed table applied since the last saved boundary.
    dirty: bool,
    /// The binlog file events are read from.
    file: String,
    /// True until the stream's first event.
    opening: bool,
    /// When the server wrote the event read last, unix seconds.
    event_time: u64,
    rows_applied: u64,
    dead_letters: u64,
    /// Rows applied at the last status, and when.
    reported: (u64, Instant),
}

/// What one wait on the stream gave.
enum Step {
    Stop,
    Tick,
    Event(Option<Result<Event, mysql_async::Error>>),
    Silent,
}

impl<'a, S: BinlogState> Term<'a, S> {
    fn new(store: &'a S, settings: &'a Settings, me: &'a str) -> Self {
        Self {
            store,
            settings,
            me,
            renewed: Instant::now(),
            boundary: BinlogCheckpoint { position: String::new(), committed_at: 0 },
            saved: true,
            saved_at: Instant::now(),
            dirty: false,
            file: String::new(),
            opening: true,
            event_time: 0,
            rows_applied: 0,
            dead_letters: 0,
            reported: (0, Instant::now()),
        }
    }

    async fn follow(&mut self, stop: &mut watch::Receiver<bool>) -> Result<Ended, Fault> {
        let mapping = &self.settings.mapping;
        let mut side = source::connect(&self.settings.opts).await?;
        source::check(&mut side, mapping).await?;
        let start = match self.store.binlog_checkpoint(&self.settings.name).await.map_err(Fault::Store)? {
            Some(checkpoint) => {
                let position = Position::parse(&checkpoint.position).ok_or_else(|| {
                    Problem::Setup(format!("the saved checkpoint {:?} is not a binlog position", checkpoint.position))
                })?;
                self.boundary = checkpoint;
                check_resumable(&mut side, &position).await?;
                position
            }
            None => {
                let at = source::current_position(&mut side).await?;
                if mapping.mode == Mode::Snapshot && !self.load(&mut side, &at).await? {
                    return Ok(Ended::LostLease);
                }
                self.boundary = BinlogCheckpoint { position: at.to_string(), committed_at: 0 };
                self.saved = false;
                if !self.save().await? {
                    return Ok(Ended::LostLease);
                }
                at
            }
        };
        tracing::info!(position = %start, table = %mapping.qualified(), "binlog follower: following");
        self.file = start.file.clone();
        let mut stream = self.open(&start).await?;
        self.publish("following", Some(&mut side)).await;
        let mut tick = tokio::time::interval(self.settings.status_every);
        let silence = self.settings.heartbeat * 5;
        loop {
            let step = tokio::select! {
                biased;
                _ = stop.changed() => Step::Stop,
                _ = tick.tick() => Step::Tick,
                event = tokio::time::timeout(silence, stream.next()) => event.map_or(Step::Silent, Step::Event),
            };
            match step {
                Step::Stop => {
                    self.save().await?;
                    let _ = tokio::time::timeout(source::QUERY_TIMEOUT, stream.close()).await;
                    return Ok(Ended::Stopped);
                }
                Step::Tick => {
                    if !self.keep_lease().await? || (self.saved_at.elapsed() >= IDLE_CHECKPOINT && !self.save().await?)
                    {
                        return Ok(Ended::LostLease);
                    }
                    self.publish("following", Some(&mut side)).await;
                }
                Step::Silent => {
                    return Err(Problem::Connection(format!("the binlog stream was silent for {silence:?}")).into());
                }
                Step::Event(None) => {
                    return Err(Problem::Connection("the server ended the binlog stream".into()).into());
                }
                Step::Event(Some(Err(e))) => return Err(Problem::Connection(format!("the binlog stream: {e}")).into()),
                Step::Event(Some(Ok(event))) => {
                    if !self.handle(&event, &stream).await? {
                        return Ok(Ended::LostLease);
                    }
                }
            }
        }
    }

    /// Opens the binlog stream at `start`.
    async fn open(&self, start: &Position) -> Result<BinlogStream, Fault> {
        let mut conn = source::connect(&self.settings.opts).await?;
        // The server sends a heartbeat when it has nothing else to send, so
        // a silent stream is a dead one (the variable is in nanoseconds).
        let period = self.settings.heartbeat.as_nanos() as u64;
        source::bounded("asking for heartbeats", conn.query_drop(format!("SET @master_heartbeat_period = {period}")))
            .await?;
        let request = BinlogStreamRequest::new(self.settings.server_id)
            .with_filename(start.file.as_bytes())
            .with_pos(start.offset);
        Ok(source::bounded("opening the binlog stream", conn.get_binlog_stream(request)).await?)
    }

    /// Handles one event; false if the lease was lost.
    async fn handle(&mut self, event: &Event, stream: &BinlogStream) -> Result<bool, Fault> {
        let header = event.header();
        if header.timestamp() > 0 {
            self.event_time = u64::from(header.timestamp());
        }
        let end = Position::new(self.file.clone(), u64::from(header.log_pos()));
        let data = event.read_data().map_err(|e| Problem::Connection(format!("an undecodable event: {e}")))?;
        match data {
            Some(EventData::RotateEvent(rotate)) => {
                // The first event of a stream names the file asked for, read
                // before the stream's checksum setting is known, so with the
                // checksum's bytes on its name: the file is the one asked for.
                // Later ones name the next file: after a server's stop (log_pos
                // 0) or a rotation (a boundary: the next file starts with a
                // transaction).
                let first = std::mem::replace(&mut self.opening, false);
                if !first {
                    let name = rotate.name();
                    if name.is_empty() || !name.chars().all(|c| c.is_ascii_graphic()) {
                        return Err(
                            Problem::Connection(format!("a rotation to an unreadable file name {name:?}")).into()
                        );
                    }
                    self.file = name.into_owned();
                }
                if header.log_pos() != 0 {
                    let next = Position::new(self.file.clone(), rotate.position());
                    return self.at_boundary(next).await;
                }
            }
            Some(EventData::RowsEvent(rows)) => {
                let changes = match stream.get_tme(rows.table_id()) {
                    Some(tme) if source::is_followed(tme, &self.settings.mapping) => {
                        source::row_changes(&rows, tme, &self.settings.mapping)?
                    }
                    _ => return Ok(true),
                };
                if !self.keep_lease().await? {
                    return Ok(false);
                }
                self.apply(changes, &end).await?;
            }
            Some(EventData::XidEvent(_)) => return self.at_boundary(end).await,
            Some(EventData::QueryEvent(query)) if query.query() != "BEGIN" => return self.at_boundary(end).await,
            _ => {}
        }
        Ok(true)
    }

    /// A transaction ended at `position`: saved at once when it wrote the
    /// followed table, else within [`IDLE_CHECKPOINT`]. False if the lease
    /// was lost.
    async fn at_boundary(&mut self, position: Position) -> Result<bool, Fault> {
        self.boundary = BinlogCheckpoint { position: position.to_string(), committed_at: self.event_time };
        self.saved = false;
        if self.dirty || self.saved_at.elapsed() >= IDLE_CHECKPOINT { self.save().await } else { Ok(true) }
    }

    /// Saves the last boundary under the lease; false if the lease was lost.
    async fn save(&mut self) -> Result<bool, Fault> {
        if self.saved {
            return Ok(true);
        }
        let held = self
            .store
            .save_binlog_checkpoint(&self.settings.name, self.me, &self.boundary)
            .await
            .map_err(Fault::Store)?;
        self.saved = held;
        self.saved_at = Instant::now();
        self.dirty = false;
        Ok(held)
    }

    /// Renews the lease when a third of it has passed; false if it was lost.
    async fn keep_lease(&mut self) -> Result<bool, Fault> {
        if self.renewed.elapsed() < self.settings.lease / 3 {
            return Ok(true);
        }
        let held =
            self.store.lead_binlog(&self.settings.name, self.me, self.settings.lease).await.map_err(Fault::Store)?;
        self.renewed = Instant::now();
        Ok(held)
    }

    /// Applies the rows of one event at `at`, in order. In snapshot mode a
    /// record's rows in one event share its position, so only its last is
    /// applied (it is the record's state after the event).
    async fn apply(&mut self, rows: Vec<RowChange>, at: &Position) -> Result<(), Fault> {
        let mapping = &self.settings.mapping;
        let mut changes = Vec::with_capacity(rows.len());
        for row in &rows {
            match mapping.changes(row, at) {
                Ok(mut more) => changes.append(&mut more),
                Err(e) => self.dead_letter(row, at, &e).await?,
            }
        }
        if mapping.mode == Mode::Snapshot {
            let last: HashMap<&RecordKey, usize> = changes.iter().enumerate().map(|(i, c)| (c.record(), i)).collect();
            let keep: Vec<bool> = (0..changes.len()).map(|i| last.get(changes[i].record()) == Some(&i)).collect();
            let mut keep = keep.into_iter();
            changes.retain(|_| keep.next().unwrap_or(true));
        }
        for change in changes {
            let (record, applied) = match change {
                Change::Snapshot(cmd) => (cmd.record.to_string(), self.store.set_stock(cmd).await.map(drop)),
                Change::Delta(cmd) => (cmd.record.to_string(), self.store.adjust_stock(cmd).await.map(drop)),
            };
            match applied {
                Ok(()) => {
                    self.rows_applied += 1;
                    METRICS.cdc_rows_applied.inc();
                }
                Err(e) if is_transient(&e) => return Err(Fault::Store(e)),
                Err(e) => {
                    let fields = [("record", record)];
                    self.write_dead_letter(&fields, at, &e).await?;
                }
            }
        }
        self.dirty = true;
        Ok(())
    }

    async fn dead_letter(&mut self, row: &RowChange, at: &Position, error: &Error) -> Result<(), Fault> {
        let (kind, image) = match row {
            RowChange::Insert(after) => ("insert", after),
            RowChange::Update(_, after) => ("update", after),
            RowChange::Delete(before) => ("delete", before),
        };
        let mut fields: Vec<(&str, String)> = vec![("kind", kind.to_owned())];
        for (role, _) in self.settings.mapping.columns.iter() {
            if let Some(Some(value)) = image.get(role) {
                fields.push((role, value.clone()));
            }
        }
        self.write_dead_letter(&fields, at, error).await
    }

    async fn write_dead_letter(
        &mut self,
        fields: &[(&str, String)],
        at: &Position,
        error: &Error,
    ) -> Result<(), Fault> {
        tracing::warn!(position = %at, reason = error.reason(), error = %error, "binlog follower: dead-lettered a row");
        let mut all: Vec<(&str, String)> = vec![
            ("dead.source", "binlog".to_owned()),
            ("dead.table", self.settings.mapping.qualified()),
            ("dead.position", at.to_string()),
        ];
        all.extend(fields.iter().cloned());
        self.store.dead_letter_row(&all, error).await.map_err(Fault::Store)?;
        self.dead_letters += 1;
        METRICS.cdc_dead_letters.inc();
        Ok(())
    }

    /// The initial read of a stock table, every row a snapshot at `at` (the
    /// server's position before the read): a change committed during the
    /// read is in the binlog after `at` too, so following from `at` ends at
    /// the table's state. False if the lease was lost.
    async fn load(&mut self, conn: &mut Conn, at: &Position) -> Result<bool, Fault> {
        tracing::info!(table = %self.settings.mapping.qualified(), position = %at, "binlog follower: reading the table");
        self.publish("loading", None).await;
        source::bounded("starting the read", conn.query_drop("START TRANSACTION WITH CONSISTENT SNAPSHOT")).await?;
        let mut rows =
            source::bounded("reading the table", conn.query_iter(source::select_all(&self.settings.mapping))).await?;
        let mut count = 0u64;
        while let Some(row) = source::bounded("reading the table", rows.next()).await? {
            if !self.keep_lease().await? {
                return Ok(false);
            }
            let image = source::loaded_image(&row, &self.settings.mapping);
            let row = RowChange::Insert(image);
            self.apply(vec![row], at).await?;
            count += 1;
        }
        drop(rows);
        source::bounded("ending the read", conn.query_drop("COMMIT")).await?;
        tracing::info!(rows = count, "binlog follower: read the table");
        Ok(true)
    }

    /// Measures the lag (with `side`, a connection of its own) and
    /// publishes the status. Failures only leave the figures as they were:
    /// the stream notices a lost server by itself.
    async fn publish(&mut self, state: &str, side: Option<&mut Conn>) {
        let mut status = BinlogStatus {
            table: self.settings.mapping.qualified(),
            leader: self.me.to_owned(),
            state: state.to_owned(),
            position: self.boundary.position.clone(),
            rows_applied: self.rows_applied,
            dead_letters: self.dead_letters,
            updated_ms: unix_ms(),
            ..BinlogStatus::default()
        };
        let elapsed = self.reported.1.elapsed().as_secs_f64();
        if elapsed > 0.0 {
            status.rows_per_second = (self.rows_applied - self.reported.0) as f64 / elapsed;
        }
        self.reported = (self.rows_applied, Instant::now());
        if let (Some(side), Some(applied)) = (side, Position::parse(&self.boundary.position)) {
            match source::binlog_files(side).await {
                Ok(files) => {
                    status.lag_bytes = source::bytes_behind(&files, &applied);
                    if let Some((file, size)) = files.last() {
                        status.server_position = Position::new(file.clone(), *size).to_string();
                    }
                    status.lag_seconds = if status.lag_bytes == 0 {
                        0.0
                    } else {
                        (unix_ms() as f64 / 1000.0 - self.event_time as f64).max(0.0)
                    };
                    METRICS.cdc_lag_bytes.set(status.lag_bytes as i64);
                    METRICS.cdc_lag_seconds.set(status.lag_seconds);
                }
                Err(e) => tracing::debug!(error = %e, "binlog follower: cannot measure the lag now"),
            }
        }
        let ttl = (self.settings.status_every * 3).max(Duration::from_secs(3));
        if let Err(e) = self.store.publish_binlog_status(&self.settings.name, &status, ttl).await {
            tracing::debug!(error = %e, "binlog follower: cannot publish the status now");
        }
    }
}

/// Refuses to resume at a checkpoint the server can no longer serve in
/// order: its file purged (the changes in it are lost to the follower), or
/// the server's binlog behind it (it started over, so its positions would
/// read as stale versions). Both need an operator; neither is skipped.
async fn check_resumable(side: &mut Conn, checkpoint: &Position) -> Result<(), Problem> {
    let files = source::binlog_files(side).await?;
    let Some((last, size)) = files.last() else {
        return Ok(());
    };
    let server = Position::new(last.clone(), *size);
    if server < *checkpoint {
        return Err(Problem::Setup(format!(
            "the server's binlog ends at {server}, before the checkpoint {checkpoint}: it started over (RESET MASTER, or \
             another server); its snapshots would read as stale. Map a version column, or follow it under a new --cdc-name \
             with the records set afresh"
        )));
    }
    if !files.iter().any(|(file, _)| *file == checkpoint.file) {
        return Err(Problem::Setup(format!(
            "the binlog file of the checkpoint {checkpoint} was purged before the follower read it; the changes in it are \
             lost to the follower. Delete the checkpoint ({{sl:binlog}}:checkpoint:<name>) to read the table afresh"
        )));
    }
    Ok(())
}

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}
