//! Sessions: one lease keeps every lock taken in it alive, kept alive in the
//! background, with its loss (and each lock's) surfaced to the application
//! as something it can wait on, never only logged.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Status};

use crate::{Client, pb};

/// Why a session or a lock was lost.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lost {
    /// The service's reason: `SESSION_EXPIRED`, `SESSION_CLOSED`,
    /// `SESSION_NOT_FOUND`, `LOCK_EXPIRED` or `FORCE_RELEASED`; or
    /// `KEEP_ALIVE_FAILED` when no keep-alive reached the service before the
    /// session's expiry (the service may have ended it, or may yet).
    pub reason: String,
    /// What happened, for a log line.
    pub detail: String,
}

impl Lost {
    fn new(reason: &str, detail: impl Into<String>) -> Self {
        Self { reason: reason.to_owned(), detail: detail.into() }
    }

    fn from_status(status: &Status) -> Self {
        use tonic_types::StatusExt;
        let reason = status.get_details_error_info().map_or_else(|| format!("{:?}", status.code()), |i| i.reason);
        Self { reason, detail: status.message().to_owned() }
    }
}

/// Where the guards of a session's locks learn of their loss.
type Guards = Arc<Mutex<HashMap<String, watch::Sender<Option<Lost>>>>>;

/// A live session (see [`Client::session`]): its keep-alive and its
/// holder's watch run in the background until it is closed or dropped.
///
/// Dropped without [`Session::close`], the session stops being kept alive
/// and ends by itself one ttl later, with every lock still in it: their
/// stock comes back then.
#[derive(Debug)]
pub struct Session {
    client: Client,
    session: pb::Session,
    lost: watch::Receiver<Option<Lost>>,
    guards: Guards,
    tasks: Vec<JoinHandle<()>>,
}

impl Client {
    /// Opens a session of `holder` that lives `ttl` past its last
    /// keep-alive, and keeps it alive: at most every third of `ttl` (with
    /// jitter), over one KeepAlive stream, reconnecting across service
    /// restarts. The session's loss is reported by [`Session::lost`]; each
    /// lock's by its guard's [`LockGuard::lost`].
    pub async fn session(&self, holder: &str, ttl: Duration) -> Result<Session, Status> {
        let request = pb::OpenSessionRequest {
            ttl: Some(prost_duration(ttl)),
            holder: holder.to_owned(),
            request_id: crate::new_request_id(),
        };
        let opened = self.retrying(request, |mut c, r| async move { c.open_session(r).await }).await?;
        let session = opened.session.ok_or_else(|| Status::internal("OpenSession answered no session"))?;
        let (lost_tx, lost) = watch::channel(None);
        let lost_tx = Arc::new(lost_tx);
        let guards: Guards = Arc::default();
        // The holder's watch is subscribed before the session is handed
        // out, so no loss of a lock taken in it can come before it.
        let first = subscribe(self, &session, "").await.ok();
        let tasks = vec![
            tokio::spawn(keep_alive(self.clone(), session.clone(), ttl, Arc::clone(&guards), Arc::clone(&lost_tx))),
            tokio::spawn(watch_losses(self.clone(), session.clone(), first, Arc::clone(&guards), lost_tx)),
        ];
        Ok(Session { client: self.clone(), session, lost, guards, tasks })
    }
}

impl Session {
    /// The session's id.
    pub fn id(&self) -> &str {
        &self.session.session_id
    }

    /// Resolves when the session is lost; at once if it already is. Every
    /// lock in it is lost with it.
    pub async fn lost(&self) -> Lost {
        wait_lost(self.lost.clone()).await
    }

    /// The loss as a watch channel (`None` while the session lives), to
    /// select on beside other work.
    pub fn loss(&self) -> watch::Receiver<Option<Lost>> {
        self.lost.clone()
    }

    /// Locks in this session: the request's `session_id`, `holder` and
    /// `ttl` are the session's. The guard commits or releases it. A request
    /// whose candidates allow a split may take several locks: use
    /// [`Session::lock_split`] for it.
    pub async fn lock(&self, request: pb::LockRequest) -> Result<LockGuard, Status> {
        if request.candidates.as_ref().is_some_and(|c| c.allow_split) {
            return Err(Status::invalid_argument("a split may take several locks: call Session::lock_split"));
        }
        let mut guards = self.lock_split(request).await?;
        guards.pop().ok_or_else(|| Status::internal("Lock answered no lock"))
    }

    /// Locks in this session, as [`Session::lock`], with one guard per lock
    /// taken: one per warehouse that gave stock.
    pub async fn lock_split(&self, mut request: pb::LockRequest) -> Result<Vec<LockGuard>, Status> {
        request.session_id.clone_from(&self.session.session_id);
        request.holder.clone_from(&self.session.holder);
        request.ttl = None;
        let granted = self.client.lock(request).await?;
        if granted.locks.is_empty() {
            return Err(Status::internal("Lock answered no lock"));
        }
        Ok(granted.locks.into_iter().map(|lock| self.guard(lock)).collect())
    }

    /// BatchLocks in this session; one guard per lock taken, in line order
    /// (every line, or under the request's PER_LINE or PARTIAL policy the
    /// lines that got stock: the response's `lines` says which).
    pub async fn batch_lock(&self, mut request: pb::BatchLockRequest) -> Result<Vec<LockGuard>, Status> {
        request.session_id.clone_from(&self.session.session_id);
        request.holder.clone_from(&self.session.holder);
        request.ttl = None;
        let granted = self.client.batch_lock(request).await?;
        Ok(granted.locks.into_iter().map(|lock| self.guard(lock)).collect())
    }

    /// Ends the session now and releases every lock still in it.
    pub async fn close(mut self) -> Result<pb::CloseSessionResponse, Status> {
        self.stop();
        let request = pb::CloseSessionRequest {
            session_id: self.session.session_id.clone(),
            holder: self.session.holder.clone(),
        };
        self.client.retrying(request, |mut c, r| async move { c.close_session(r).await }).await
    }

    fn guard(&self, lock: pb::Lock) -> LockGuard {
        // Under the guards' lock, which a loss is told under too: a guard
        // made while the session is being lost hears of it either way.
        let mut guards = self.guards.lock().expect("the guards' lock is never poisoned");
        let (tx, lost) = watch::channel(self.lost.borrow().clone());
        guards.insert(lock.lock_id.clone(), tx);
        drop(guards);
        LockGuard {
            client: self.client.clone(),
            holder: self.session.holder.clone(),
            lock,
            lost,
            guards: Arc::clone(&self.guards),
            done: false,
        }
    }

    /// Stops keeping the session alive; its guards hear that it is gone.
    fn stop(&mut self) {
        if self.tasks.is_empty() {
            return;
        }
        for task in self.tasks.drain(..) {
            task.abort();
        }
        let gone = Lost::new("SESSION_CLOSED", "this client closed or dropped the session");
        for guard in self.guards.lock().expect("the guards' lock is never poisoned").values() {
            guard.send_if_modified(|loss| {
                let first = loss.is_none();
                if first {
                    *loss = Some(gone.clone());
                }
                first
            });
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A lock held in a session: commit it, release it, or wait for its loss.
///
/// Dropped without [`LockGuard::commit`] or [`LockGuard::release`], it is
/// released in the background (on the runtime it was dropped on); should
/// that not happen (the process ends first), its session's end releases it.
#[derive(Debug)]
pub struct LockGuard {
    client: Client,
    holder: String,
    lock: pb::Lock,
    lost: watch::Receiver<Option<Lost>>,
    guards: Guards,
    done: bool,
}

impl LockGuard {
    /// The lock, as granted.
    pub fn lock(&self) -> &pb::Lock {
        &self.lock
    }

    /// Resolves when the lock is lost: force-released by an operator,
    /// expired at its maximum hold, or gone with its session.
    pub async fn lost(&self) -> Lost {
        wait_lost(self.lost.clone()).await
    }

    /// Commits the whole lock. Should it have expired moments ago (its
    /// session just lost), the commit is made late: its quantity is taken
    /// again if that much is still available (`late_fencing_token` in the
    /// answer), else it fails with `LOCK_EXPIRED` and says what is
    /// available. A lock of a BatchLock is never committed late on its own,
    /// which could commit half an order. If the commit fails, the guard
    /// still releases the lock when dropped.
    pub async fn commit(mut self) -> Result<pb::CommitResponse, Status> {
        let request = pb::CommitRequest {
            lock_id: self.lock.lock_id.clone(),
            holder: self.holder.clone(),
            quantity: self.lock.quantity.clone(),
            allow_late_commit: self.lock.batch_id.is_empty(),
            ..Default::default()
        };
        let committed = self.client.commit(request).await;
        self.done = committed.is_ok();
        committed
    }

    /// Gives the lock back (again in the background when dropped, should
    /// this fail).
    pub async fn release(mut self) -> Result<pb::ReleaseResponse, Status> {
        let released = self.client.release(release_request(&self.lock, &self.holder)).await;
        self.done = released.is_ok();
        released
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        self.guards.lock().expect("the guards' lock is never poisoned").remove(&self.lock.lock_id);
        if self.done {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (client, request) = (self.client.clone(), release_request(&self.lock, &self.holder));
            runtime.spawn(async move {
                let _ = client.release(request).await;
            });
        }
    }
}

fn release_request(lock: &pb::Lock, holder: &str) -> pb::ReleaseRequest {
    pb::ReleaseRequest { lock_id: lock.lock_id.clone(), holder: holder.to_owned(), ..Default::default() }
}

async fn wait_lost(mut lost: watch::Receiver<Option<Lost>>) -> Lost {
    if let Ok(seen) = lost.wait_for(Option::is_some).await {
        return seen.clone().expect("waited for Some");
    }
    // The session's tasks are gone (it was closed or dropped).
    lost.borrow().clone().unwrap_or_else(|| Lost::new("SESSION_CLOSED", "the session was closed"))
}

/// Keeps `session` alive over a KeepAlive stream, every third of `ttl`
/// with jitter, reconnecting after a transient failure. Reports the loss
/// when the service says the session ended, or when no keep-alive was
/// answered before the session's expiry.
async fn keep_alive(
    client: Client,
    session: pb::Session,
    ttl: Duration,
    guards: Guards,
    lost: Arc<watch::Sender<Option<Lost>>>,
) {
    let ping = pb::KeepAliveRequest { session_id: session.session_id.clone(), holder: session.holder.clone() };
    // The session lives at least this long: sent before the open was answered.
    let mut alive_until = Instant::now() + ttl.mul_f64(0.9);
    let mut backoff = Duration::from_millis(50);
    loop {
        let (tx, rx) = mpsc::channel(1);
        let mut request = tonic::Request::new(ReceiverStream::new(rx));
        client.authorize(&mut request);
        // Opening the stream may hang on a network that drops packets: no
        // longer than the session is known to live.
        let opened = tokio::time::timeout_at(alive_until.into(), client.inner.clone().keep_alive(request)).await;
        let failure =
            match opened.unwrap_or_else(|_| Err(Status::deadline_exceeded("opening the stream took too long"))) {
                Err(status) => status,
                Ok(answers) => {
                    let mut answers = answers.into_inner();
                    loop {
                        let sent = Instant::now();
                        if tx.send(ping.clone()).await.is_err() {
                            break Status::unavailable("the keep-alive stream closed");
                        }
                        match tokio::time::timeout(ttl / 3, answers.message()).await {
                            Ok(Ok(Some(_))) => {
                                alive_until = sent + ttl;
                                backoff = Duration::from_millis(50);
                            }
                            Ok(Ok(None)) => break Status::unavailable("the keep-alive stream ended"),
                            Ok(Err(status)) => break status,
                            Err(_) => break Status::deadline_exceeded("a keep-alive was not answered in time"),
                        }
                        tokio::time::sleep(ttl.mul_f64(rand::random_range(0.8..1.0) / 3.0)).await;
                    }
                }
            };
        if refused(&failure) {
            lose_all(&lost, &guards, Lost::from_status(&failure));
            return;
        }
        if Instant::now() >= alive_until {
            let detail =
                format!("no keep-alive reached the service before the session's expiry: {}", failure.message());
            lose_all(&lost, &guards, Lost::new("KEEP_ALIVE_FAILED", detail));
            return;
        }
        let wait = backoff.mul_f64(rand::random::<f64>()).min(alive_until.saturating_duration_since(Instant::now()));
        backoff = (backoff * 2).min(ttl / 6);
        tokio::time::sleep(wait).await;
    }
}

/// Follows the holder's WatchHolder stream for `session`, resuming after
/// the last event seen, and tells each lock's guard (and the session) of
/// its loss as it happens.
async fn watch_losses(
    client: Client,
    session: pb::Session,
    mut first: Option<tonic::Streaming<pb::WatchHolderResponse>>,
    guards: Guards,
    lost: Arc<watch::Sender<Option<Lost>>>,
) {
    let mut after = String::new();
    let mut backoff = Duration::from_millis(50);
    // Until the session is lost: after that, nothing of it can be lost.
    while lost.borrow().is_none() {
        let stream = match first.take() {
            Some(stream) => Ok(stream),
            None => subscribe(&client, &session, &after).await,
        };
        match &stream {
            // Its position was trimmed away (a long outage): from now on.
            Err(status) if status.code() == Code::InvalidArgument && !after.is_empty() => after.clear(),
            Err(status) if refused(status) => return,
            _ => {}
        }
        if let Ok(mut stream) = stream {
            while let Ok(Some(response)) = stream.message().await {
                // A response without an event (a later heartbeat) says nothing.
                let Some(event) = response.event else { continue };
                backoff = Duration::from_millis(50);
                after.clone_from(&event.event_id);
                let loss = match event.kind() {
                    pb::HolderEventKind::LockExpired => Lost::new("LOCK_EXPIRED", format!("cause {}", event.cause)),
                    pb::HolderEventKind::ForceReleased => {
                        Lost::new("FORCE_RELEASED", format!("force-released by {}: {}", event.operator, event.reason))
                    }
                    pb::HolderEventKind::SessionExpired => {
                        lose_all(&lost, &guards, Lost::new("SESSION_EXPIRED", "the session expired"));
                        continue;
                    }
                    _ => continue,
                };
                if let Some(guard) = guards.lock().expect("the guards' lock is never poisoned").get(&event.lock_id) {
                    let _ = guard.send(Some(loss));
                }
            }
        }
        tokio::time::sleep(backoff.mul_f64(rand::random::<f64>())).await;
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}

/// The holder's WatchHolder stream of `session`, after `after` ("" for now).
async fn subscribe(
    client: &Client,
    session: &pb::Session,
    after: &str,
) -> Result<tonic::Streaming<pb::WatchHolderResponse>, Status> {
    let mut request = tonic::Request::new(pb::WatchHolderRequest {
        holder: session.holder.clone(),
        session_id: session.session_id.clone(),
        after_event_id: after.to_owned(),
        ..Default::default()
    });
    client.authorize(&mut request);
    Ok(client.inner.clone().watch_holder(request).await?.into_inner())
}

/// The session is lost, and every lock in it (told under the guards' lock,
/// see `Session::guard`).
fn lose_all(lost: &watch::Sender<Option<Lost>>, guards: &Guards, loss: Lost) {
    let guards = guards.lock().expect("the guards' lock is never poisoned");
    for guard in guards.values() {
        let _ = guard.send(Some(loss.clone()));
    }
    let _ = lost.send(Some(loss));
}

/// Whether the service refused the keep-alive for good: the session ended,
/// is not the caller's, or the caller may not keep it. Anything else (the
/// service restarting, a connection cut) is tried again.
fn refused(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::FailedPrecondition
            | Code::NotFound
            | Code::PermissionDenied
            | Code::Unauthenticated
            | Code::InvalidArgument
    )
}

fn prost_duration(d: Duration) -> pbjson_types::Duration {
    pbjson_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}
