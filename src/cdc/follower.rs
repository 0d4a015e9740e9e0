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
use super::source::{self, Followed, Problem};
use super::transactions::{Mark, Transactions};
use crate::domain::{BinlogCheckpoint, BinlogState, BinlogStatus, Error, RecordKey};
use crate::metrics::METRICS;
use crate::workers::ingest::is_transient;

/// The first pause after a failed attempt; it doubles up to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(500);
const MAX_PAUSE: Duration = Duration::from_secs(30);

/// How often a checkpoint is saved when only other tables' transactions
/// move the position.
const IDLE_CHECKPOINT: Duration = Duration::from_secs(1);

/// The heartbeat event's type: the server's "nothing to send".
const HEARTBEAT: u8 = 27;

/// How often the leader asks the server where its binlog ends, for the lag.
const MEASURE_EVERY: Duration = Duration::from_secs(5);

/// How many records' changes of one event are applied at once.
const RECORDS_AT_ONCE: usize = 32;

/// Rows of the initial read applied together (side by side, as an event's).
const LOAD_BATCH: usize = 256;

/// The longest the lag measurement may hold the loop up: it runs between
/// events, and the lease must be renewed meanwhile.
const MEASURE_TIMEOUT: Duration = Duration::from_secs(1);

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
                        // A term that got as far as the stream, or went well for
                        // a while, starts the backoff over: the setup works.
                        if term.streamed || began.elapsed() > MAX_PAUSE * 2 {
                            pause = FIRST_PAUSE;
                        }
                        tracing::warn!(error = %fault, retry_in = ?pause, "binlog follower: restarting at the checkpoint");
                        term.publish(&format!("error: {fault}"), &mut None).await;
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
    /// The followed table as the server names it.
    followed: Followed,
    /// The binlog file events are read from.
    file: String,
    /// True until the stream's first event.
    opening: bool,
    /// Whether the stream is inside a transaction.
    transactions: Transactions,
    /// The end of the last event handled: the follower is behind the
    /// server by what the server wrote after it.
    read_at: Option<Position>,
    /// When the server wrote the last event handled, unix seconds (0 while
    /// unknown).
    event_time: u64,
    /// The stream gave an event: the setup works, so a fault later starts
    /// the backoff over.
    streamed: bool,
    /// The lag as last measured (bytes, seconds, server position), and when.
    lag: (u64, f64, String),
    measured_at: Option<Instant>,
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
            followed: Followed::default(),
            file: String::new(),
            opening: true,
            transactions: Transactions::default(),
            read_at: None,
            event_time: 0,
            streamed: false,
            lag: (0, 0.0, String::new()),
            measured_at: None,
            rows_applied: 0,
            dead_letters: 0,
            reported: (0, Instant::now()),
        }
    }

    async fn follow(&mut self, stop: &mut watch::Receiver<bool>) -> Result<Ended, Fault> {
        let mapping = &self.settings.mapping;
        let mut side = source::connect(&self.settings.opts).await?;
        self.followed = source::check(&mut side, mapping).await?;
        let start = match self.store.binlog_checkpoint(&self.settings.name).await.map_err(Fault::Store)? {
            Some(checkpoint) => {
                let position = Position::parse(&checkpoint.position).ok_or_else(|| {
                    Problem::Setup(format!("the saved checkpoint {:?} is not a binlog position", checkpoint.position))
                })?;
                self.event_time = checkpoint.committed_at;
                self.boundary = checkpoint;
                check_resumable(&mut side, &position).await?;
                position
            }
            None => {
                let mut at = source::current_position(&mut side).await?;
                if mapping.mode == Mode::Snapshot {
                    match self.load(&mut side, at).await? {
                        Some(read_at) => at = read_at,
                        None => return Ok(Ended::LostLease),
                    }
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
        self.read_at = Some(start.clone());
        let mut stream = self.open(&start).await?;
        let mut side = Some(side);
        self.publish("following", &mut side).await;
        let mut tick = tokio::time::interval(self.settings.status_every);
        // Measured from the last event, not per wait: the tick ends waits
        // more often than a heartbeat comes.
        let silence = self.settings.heartbeat * 5;
        let mut heard = Instant::now();
        loop {
            let step = tokio::select! {
                biased;
                _ = stop.changed() => Step::Stop,
                event = stream.next() => Step::Event(event),
                _ = tick.tick() => if heard.elapsed() > silence { Step::Silent } else { Step::Tick },
            };
            if let Step::Event(event) = &step {
                heard = Instant::now();
                self.streamed |= matches!(event, Some(Ok(_)));
            }
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
                    self.publish("following", &mut side).await;
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
        let kind = header.event_type_raw();
        if kind == HEARTBEAT {
            return Ok(true);
        }
        if header.timestamp() > 0 {
            self.event_time = u64::from(header.timestamp());
        }
        let end = Position::new(self.file.clone(), u64::from(header.log_pos()));
        let data = event.read_data().map_err(|e| Problem::Connection(format!("an undecodable event at {end}: {e}")))?;
        let held = match data {
            Some(EventData::RotateEvent(rotate)) => {
                // The first event of a stream names the file asked for, read
                // before the stream's checksum setting is known, so with the
                // checksum's bytes on its name: the file is the one asked for.
                // Later ones name the next file: after a server's stop (log_pos
                // 0) or a rotation (between transactions: a place to resume).
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
                let next = Position::new(self.file.clone(), rotate.position());
                self.read_at = Some(next.clone());
                return if header.log_pos() != 0 { self.at_boundary(next).await } else { Ok(true) };
            }
            Some(EventData::RowsEvent(rows)) => {
                let Some(tme) = stream.get_tme(rows.table_id()) else {
                    // Only a stream resumed inside a transaction lacks it,
                    // and the checkpoint is never there.
                    return Err(Problem::Connection(format!("a row event at {end} without its table map")).into());
                };
                if !source::is_followed(tme, &self.followed) {
                    Ok(true)
                } else {
                    let changes = source::row_changes(&rows, tme, &self.settings.mapping)?;
                    if !self.keep_lease().await? {
                        return Ok(false);
                    }
                    self.apply(changes, &end).await.map(|()| true)
                }
            }
            Some(EventData::QueryEvent(query)) => {
                match self.transactions.on(kind, Some(&query.query()), event.data()) {
                    Mark::Inside => Ok(true),
                    Mark::End | Mark::Between => self.at_boundary(end.clone()).await,
                }
            }
            _ => match self.transactions.on(kind, None, event.data()) {
                Mark::End | Mark::Between if header.log_pos() != 0 => self.at_boundary(end.clone()).await,
                _ => Ok(true),
            },
        };
        if header.log_pos() != 0 {
            self.read_at = Some(end);
        }
        held
    }

    /// A transaction ended at `position`: saved at once when it wrote the
    /// followed table, else within [`IDLE_CHECKPOINT`]. False if the lease
    /// was lost.
    async fn at_boundary(&mut self, position: Position) -> Result<bool, Fault> {
        self.boundary = BinlogCheckpoint { position: position.to_string(), committed_at: self.event_time };
        self.saved = false;
        let wrote = std::mem::take(&mut self.dirty);
        if wrote || self.saved_at.elapsed() >= IDLE_CHECKPOINT { self.save().await } else { Ok(true) }
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
    async fn apply(&mut self, rows: Vec<Result<RowChange, String>>, at: &Position) -> Result<(), Fault> {
        let mapping = &self.settings.mapping;
        let mut changes = Vec::with_capacity(rows.len());
        for row in &rows {
            match row.as_ref().map(|row| (row, mapping.changes(row, at))) {
                Ok((_, Ok(mut more))) => changes.append(&mut more),
                Ok((row, Err(e))) => self.dead_letter(row, at, &e).await?,
                Err(undecodable) => {
                    let error = Error::invalid("row", undecodable.clone());
                    self.write_dead_letter(&[("kind", "undecodable".to_owned())], at, &error).await?;
                }
            }
        }
        // Records are independent: their changes run side by side (a bulk
        // update is thousands of rows an event), each record's in order.
        let mut chains: Vec<(String, Vec<Change>)> = Vec::new();
        let mut chain_of: HashMap<RecordKey, usize> = HashMap::new();
        for change in changes {
            let at = *chain_of.entry(change.record().clone()).or_insert_with(|| {
                chains.push((change.record().to_string(), Vec::new()));
                chains.len() - 1
            });
            chains[at].1.push(change);
        }
        if mapping.mode == Mode::Snapshot {
            for (_, chain) in &mut chains {
                chain.drain(..chain.len() - 1);
            }
        }
        let store = self.store;
        let outcomes: Vec<Vec<(String, Result<(), Error>)>> = futures_util::stream::iter(chains)
            .map(|(record, chain)| async move {
                let mut outcomes = Vec::with_capacity(chain.len());
                for change in chain {
                    let applied = match change {
                        Change::Snapshot(cmd) => store.set_stock(cmd).await.map(drop),
                        Change::Delta(cmd) => store.adjust_stock(cmd).await.map(drop),
                    };
                    // After a fault of the store the rest of the record waits
                    // for the replay, in order.
                    let stop = applied.as_ref().is_err_and(is_transient);
                    outcomes.push((record.clone(), applied));
                    if stop {
                        break;
                    }
                }
                outcomes
            })
            .buffer_unordered(RECORDS_AT_ONCE)
            .collect()
            .await;
        let mut fault = None;
        for (record, applied) in outcomes.into_iter().flatten() {
            match applied {
                Ok(()) => {
                    self.rows_applied += 1;
                    METRICS.cdc_rows_applied.inc();
                }
                Err(e) if is_transient(&e) => fault = Some(e),
                Err(e) => self.write_dead_letter(&[("record", record)], at, &e).await?,
            }
        }
        if let Some(e) = fault {
            // The checkpoint is before this event: the replay applies what
            // is missing and ignores what is not.
            return Err(Fault::Store(e));
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

    /// The initial read of a stock table, every row a snapshot at the
    /// position the read saw the table at; that position, or None if the
    /// lease was lost. MariaDB names the binlog position of a consistent
    /// snapshot (`binlog_snapshot_file`, `_position`): every transaction
    /// before it is in the snapshot, every one after it follows. Elsewhere
    /// it is `before`, the server's position before the read: a change
    /// committed during the read is in the binlog after it too, so following
    /// from there ends at the table's state.
    async fn load(&mut self, conn: &mut Conn, before: Position) -> Result<Option<Position>, Fault> {
        self.publish("loading", &mut None).await;
        source::bounded("starting the read", conn.query_drop("START TRANSACTION WITH CONSISTENT SNAPSHOT")).await?;
        let at = source::snapshot_position(conn).await?.unwrap_or(before);
        tracing::info!(table = %self.settings.mapping.qualified(), position = %at, "binlog follower: reading the table");
        let mut rows =
            source::bounded("reading the table", conn.query_iter(source::select_all(&self.settings.mapping))).await?;
        let mut count = 0u64;
        let mut batch = Vec::with_capacity(LOAD_BATCH);
        loop {
            let row = source::bounded("reading the table", rows.next()).await?;
            if let Some(row) = &row {
                batch.push(Ok(RowChange::Insert(source::loaded_image(row, &self.settings.mapping))));
            }
            if batch.len() == LOAD_BATCH || (row.is_none() && !batch.is_empty()) {
                if !self.keep_lease().await? {
                    return Ok(None);
                }
                count += batch.len() as u64;
                self.apply(std::mem::take(&mut batch), &at).await?;
            }
            if row.is_none() {
                break;
            }
        }
        drop(rows);
        source::bounded("ending the read", conn.query_drop("COMMIT")).await?;
        tracing::info!(rows = count, "binlog follower: read the table");
        Ok(Some(at))
    }

    /// Publishes the status, measuring the lag first when it is due (with
    /// `side`, a connection of its own, reopened when it failed). A failed
    /// measurement keeps the last figures: the stream notices a lost server
    /// by itself.
    async fn publish(&mut self, state: &str, side: &mut Option<Conn>) {
        if self.measured_at.is_none_or(|at| at.elapsed() >= MEASURE_EVERY)
            && let Some(read_at) = self.read_at.clone()
        {
            self.measured_at = Some(Instant::now());
            if side.is_none() {
                *side = source::connect(&self.settings.opts).await.ok();
            }
            if let Some(conn) = side.as_mut() {
                let measured = tokio::time::timeout(MEASURE_TIMEOUT, source::binlog_files(conn)).await;
                match measured.unwrap_or_else(|_| Err(Problem::Connection("no answer in time".into()))) {
                    Ok(files) => {
                        let bytes = source::bytes_behind(&files, &read_at);
                        // Since the server wrote the event the follower is
                        // at; unknown (0) before it read one.
                        let seconds = if bytes == 0 || self.event_time == 0 {
                            0.0
                        } else {
                            (unix_ms() as f64 / 1000.0 - self.event_time as f64).max(0.0)
                        };
                        let server = files.last().map(|(file, size)| Position::new(file.clone(), *size).to_string());
                        self.lag = (bytes, seconds, server.unwrap_or_default());
                        METRICS.cdc_lag_bytes.set(bytes as i64);
                        METRICS.cdc_lag_seconds.set(seconds);
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "binlog follower: cannot measure the lag now");
                        *side = None;
                    }
                }
            }
        }
        let elapsed = self.reported.1.elapsed().as_secs_f64();
        let rows_per_second = if elapsed > 0.0 { (self.rows_applied - self.reported.0) as f64 / elapsed } else { 0.0 };
        self.reported = (self.rows_applied, Instant::now());
        let status = BinlogStatus {
            table: self.settings.mapping.qualified(),
            leader: self.me.to_owned(),
            state: state.to_owned(),
            position: self.boundary.position.clone(),
            server_position: self.lag.2.clone(),
            lag_bytes: self.lag.0,
            lag_seconds: self.lag.1,
            rows_applied: self.rows_applied,
            rows_per_second,
            dead_letters: self.dead_letters,
            updated_ms: unix_ms(),
        };
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
