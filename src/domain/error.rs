//! The one error type of the domain, with the machine-readable reason each
//! variant is reported under. The gRPC adapter maps it to a status code.

use super::RecordKey;

/// The machine-readable reasons callers see (`ErrorInfo.reason`), each
/// spelled here once: [`Error::reason`] names them, the Redis store's reply
/// tags use them, and clients such as the CLI match on them.
#[allow(missing_docs)]
pub mod reason {
    macro_rules! reasons {
        ($($name:ident),* $(,)?) => {
            $(pub const $name: &str = stringify!($name);)*
            /// Every reason, for the test that the contract's `ErrorReason`
            /// enum publishes each of them.
            pub const ALL: &[&str] = &[$($name),*];
        };
    }

    reasons![
        INVALID_ARGUMENT,
        INSUFFICIENT_STOCK,
        SKU_NOT_AVAILABLE_IN_WAREHOUSE,
        LOCK_NOT_FOUND,
        LOCK_EXPIRED,
        LOCK_HOLDER_MISMATCH,
        LOCK_FORCE_RELEASED,
        FORCE_UNLOCK_NOT_FOUND,
        FORCE_UNLOCK_NOT_PENDING,
        FORCE_UNLOCK_EXPIRED,
        TWO_PERSON_RULE,
        NO_LOCKS_MATCHED,
        RECORD_BUSY,
        REQUEST_IN_PROGRESS,
        UNAUTHENTICATED,
        ROLE_NOT_ALLOWED,
        RATE_LIMITED,
        OVERLOADED,
        DEADLINE_PASSED,
        LOCK_ALREADY_COMMITTED,
        BATCH_NOT_FOUND,
        IDEMPOTENCY_KEY_REUSED,
        UNIT_SCALE_IN_USE,
        NEGATIVE_STOCK,
        QUANTITY_EXCEEDS_LOCK,
        INV_LOCK_TIMEOUT,
        STORE_UNAVAILABLE,
        STORE_OUT_OF_MEMORY,
        INTERNAL,
        SESSION_NOT_FOUND,
        SESSION_EXPIRED,
        SESSION_CLOSED,
        LOCK_IN_SESSION,
    ];
}

/// A line of a lock request that there is not enough stock for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shortage {
    /// Index of the line in the request (0 for a single Lock).
    pub line: usize,
    /// The record that is short.
    pub record: RecordKey,
    /// What the line asked for, as a decimal.
    pub requested: String,
    /// What the record had available, as a decimal.
    pub available: String,
    /// False for a candidate warehouse without a record of the SKU.
    pub exists: bool,
}

impl Shortage {
    /// What the record had, as a line's outcome lists it.
    pub fn figure(&self) -> super::CandidateFigure {
        super::CandidateFigure { record: self.record.clone(), available: self.available.clone(), exists: self.exists }
    }
}

/// Everything an operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request itself is wrong; retrying it cannot help.
    #[error("{field} {description}")]
    InvalidArgument {
        /// The request field at fault, e.g. `lines[2].quantity`.
        field: String,
        /// What is wrong with it.
        description: String,
    },
    /// One or more lines ask for more than is available; nothing was locked.
    #[error("insufficient stock: {}", describe_shortages(shortages))]
    InsufficientStock {
        /// Every short line, with what it asked for and what there is.
        shortages: Vec<Shortage>,
    },
    /// There is no stock record for this SKU in this warehouse.
    #[error("SKU {} is not available in warehouse {}", record.sku, record.warehouse)]
    NotAvailable {
        /// The missing record.
        record: RecordKey,
        /// The request line that named it, for BatchLock.
        line: Option<usize>,
    },
    /// The lock does not exist, or was released or committed.
    #[error("lock {lock_id} {}", ended.map_or("does not exist", |e| e.describe()))]
    LockNotFound {
        /// The lock id as the caller sent it.
        lock_id: String,
        /// How the lock ended, when that is still known.
        ended: Option<LockEnd>,
        /// For a lock moved whole by TransferLock: the moved lock's id.
        moved_to: Option<String>,
    },
    /// The lock expired because it was not renewed; its stock is back.
    #[error("lock {lock_id} has expired{}", available.as_ref().map_or_else(String::new, |a| format!("; {a} is available")))]
    LockExpired {
        /// The lock id as the caller sent it.
        lock_id: String,
        /// What is available now, when a late commit was refused for it.
        available: Option<String>,
    },
    /// An operator force-released the lock; its holder is fenced out.
    #[error("lock {lock_id} was force-released by an operator")]
    LockForceReleased {
        /// The lock id as the caller sent it.
        lock_id: String,
    },
    /// The caller is not the lock's holder.
    #[error("lock {lock_id} is held by another holder")]
    HolderMismatch {
        /// The lock id as the caller sent it.
        lock_id: String,
    },
    /// Release of a lock whose stock was already deducted by Commit.
    #[error("lock {lock_id} was committed; its stock is deducted and cannot be released")]
    LockAlreadyCommitted {
        /// The lock id as the caller sent it.
        lock_id: String,
    },
    /// No batch with this id (never created, or ended long ago).
    #[error("batch {batch_id} does not exist")]
    BatchNotFound {
        /// The batch id as the caller sent it.
        batch_id: String,
    },
    /// No forced-unlock request with this id (or it aged out).
    #[error("force-unlock request {id} does not exist")]
    ForceUnlockNotFound {
        /// The id as the caller sent it.
        id: String,
    },
    /// The forced-unlock request was already decided.
    #[error("force-unlock request {id} is {state}, not pending")]
    ForceUnlockNotPending {
        /// The request.
        id: String,
        /// Its state, e.g. `EXECUTED`.
        state: String,
    },
    /// The forced-unlock request was not decided in time.
    #[error("force-unlock request {id} expired undecided; request it again")]
    ForceUnlockExpired {
        /// The request.
        id: String,
    },
    /// The requester of a forced unlock tried to approve it.
    #[error("a force-unlock request must be approved by another operator than {requester}")]
    TwoPersonRule {
        /// Who asked for it.
        requester: String,
    },
    /// A forced-unlock selector matched no live lock.
    #[error("no live lock matches the selector")]
    NoLocksMatched,
    /// A repair read the record's locks in slices, and the record changed
    /// during every attempt, so no sum of one state exists. Nothing changed.
    #[error(
        "the record changed while its locks were summed, {attempts} times; nothing was changed, retry when it is quieter"
    )]
    RecordBusy {
        /// How many sums were tried.
        attempts: u32,
    },
    /// An earlier attempt of this request_id is still running (a BatchLock
    /// over several partitions, which must not be replayed half done).
    /// Nothing changed: retry with the same request_id shortly.
    #[error("an earlier call with request_id {request_id} is still in progress; retry it shortly")]
    RequestInProgress {
        /// The request_id.
        request_id: String,
    },
    /// No such session (never opened, long gone, or another holder's).
    #[error("session {session_id} does not exist")]
    SessionNotFound {
        /// The session id as the caller sent it.
        session_id: String,
    },
    /// The session ended: it expired without a keep-alive, or was closed.
    /// Its locks are released (or being released); it cannot be revived.
    #[error("session {session_id} {}", if *closed { "was closed" } else { "has expired" })]
    SessionEnded {
        /// The session id as the caller sent it.
        session_id: String,
        /// Closed by CloseSession, rather than expired.
        closed: bool,
    },
    /// Renew of a lock that lives in a session: keep the session alive instead.
    #[error("lock {lock_id} lives in a session; keep the session alive instead of renewing the lock")]
    LockInSession {
        /// The lock id as the caller sent it.
        lock_id: String,
    },
    /// No or bad credentials.
    #[error("{0}")]
    Unauthenticated(String),
    /// The caller's role may not call this method.
    #[error("role {role} may not call {method}")]
    RoleNotAllowed {
        /// The caller's role.
        role: String,
        /// The gRPC method.
        method: String,
    },
    /// The caller sent too many requests of this kind.
    #[error("rate limit reached; retry after {} ms", retry_after.as_millis())]
    RateLimited {
        /// When a call will be admitted again.
        retry_after: std::time::Duration,
    },
    /// The service is at its concurrency limit and its queue is full (or the
    /// wait for a slot ran out); the call was not started.
    #[error("the service is overloaded; the call was not started, retry after {} ms", retry_after.as_millis())]
    Overloaded {
        /// A hint for when to retry.
        retry_after: std::time::Duration,
    },
    /// The caller's deadline would pass before the call could start; it was not started.
    #[error("the call's deadline would pass before it could start; it was not started")]
    DeadlinePassed,
    /// The request_id was used before for a request with other content.
    #[error("request_id {request_id} was already used for a different request")]
    IdempotencyKeyReused {
        /// The reused key.
        request_id: String,
    },
    /// A snapshot changes the unit scale of a record that has live locks.
    #[error("unit_scale cannot change from {current} while locks are live")]
    UnitScaleInUse {
        /// The record's current unit scale.
        current: u32,
    },
    /// An adjustment would take a stock figure below zero.
    #[error("{field} would become negative")]
    NegativeStock {
        /// The figure, e.g. `reserved_delta`.
        field: String,
    },
    /// Commit of more than the lock holds.
    #[error("quantity exceeds the locked quantity {locked}")]
    QuantityExceedsLock {
        /// What the lock holds.
        locked: String,
    },
    /// Redis did not answer within the store timeout. The change may or may
    /// not have been applied: retry with the same request_id to find out.
    #[error("the stock store did not answer in time")]
    StoreTimeout,
    /// Redis cannot be reached.
    #[error("the stock store is unavailable: {detail}")]
    StoreUnavailable {
        /// What the client library said.
        detail: String,
    },
    /// Redis refused the write because it is out of memory; nothing changed.
    #[error("the stock store is out of memory")]
    StoreOutOfMemory,
    /// A broken invariant or an unexpected reply; logged in full, reported generically.
    #[error("internal error: {detail}")]
    Internal {
        /// What went wrong, for the log.
        detail: String,
    },
}

fn describe_shortages(shortages: &[Shortage]) -> String {
    let lines: Vec<String> = shortages
        .iter()
        .map(|s| {
            format!(
                "lines[{}] sku {} in warehouse {} requested {}, available {}",
                s.line, s.record.sku, s.record.warehouse, s.requested, s.available
            )
        })
        .collect();
    lines.join("; ")
}

/// How a lock that is no longer live ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockEnd {
    /// Given back by Release.
    Released,
    /// Turned into a deduction by Commit.
    Committed,
    /// Moved whole to another warehouse by TransferLock: its hold lives on
    /// under the lock id TransferLock returned.
    Moved,
}

impl LockEnd {
    fn describe(self) -> &'static str {
        match self {
            Self::Released => "was released",
            Self::Committed => "was committed",
            Self::Moved => "was moved to another warehouse by TransferLock; use the lock id it returned",
        }
    }
}

impl Error {
    /// An [`Error::InvalidArgument`] for `field`.
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self::InvalidArgument { field: field.into(), description: description.into() }
    }

    /// The reason clients match on, as listed in the README's error table.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::InvalidArgument { .. } => reason::INVALID_ARGUMENT,
            Self::InsufficientStock { .. } => reason::INSUFFICIENT_STOCK,
            Self::NotAvailable { .. } => reason::SKU_NOT_AVAILABLE_IN_WAREHOUSE,
            Self::LockNotFound { .. } => reason::LOCK_NOT_FOUND,
            Self::LockExpired { .. } => reason::LOCK_EXPIRED,
            Self::HolderMismatch { .. } => reason::LOCK_HOLDER_MISMATCH,
            Self::LockForceReleased { .. } => reason::LOCK_FORCE_RELEASED,
            Self::ForceUnlockNotFound { .. } => reason::FORCE_UNLOCK_NOT_FOUND,
            Self::ForceUnlockNotPending { .. } => reason::FORCE_UNLOCK_NOT_PENDING,
            Self::ForceUnlockExpired { .. } => reason::FORCE_UNLOCK_EXPIRED,
            Self::TwoPersonRule { .. } => reason::TWO_PERSON_RULE,
            Self::NoLocksMatched => reason::NO_LOCKS_MATCHED,
            Self::RecordBusy { .. } => reason::RECORD_BUSY,
            Self::RequestInProgress { .. } => reason::REQUEST_IN_PROGRESS,
            Self::Unauthenticated(_) => reason::UNAUTHENTICATED,
            Self::RoleNotAllowed { .. } => reason::ROLE_NOT_ALLOWED,
            Self::RateLimited { .. } => reason::RATE_LIMITED,
            Self::Overloaded { .. } => reason::OVERLOADED,
            Self::DeadlinePassed => reason::DEADLINE_PASSED,
            Self::LockAlreadyCommitted { .. } => reason::LOCK_ALREADY_COMMITTED,
            Self::BatchNotFound { .. } => reason::BATCH_NOT_FOUND,
            Self::IdempotencyKeyReused { .. } => reason::IDEMPOTENCY_KEY_REUSED,
            Self::UnitScaleInUse { .. } => reason::UNIT_SCALE_IN_USE,
            Self::NegativeStock { .. } => reason::NEGATIVE_STOCK,
            Self::QuantityExceedsLock { .. } => reason::QUANTITY_EXCEEDS_LOCK,
            Self::StoreTimeout => reason::INV_LOCK_TIMEOUT,
            Self::StoreUnavailable { .. } => reason::STORE_UNAVAILABLE,
            Self::StoreOutOfMemory => reason::STORE_OUT_OF_MEMORY,
            Self::Internal { .. } => reason::INTERNAL,
            Self::SessionNotFound { .. } => reason::SESSION_NOT_FOUND,
            Self::SessionEnded { closed: false, .. } => reason::SESSION_EXPIRED,
            Self::SessionEnded { closed: true, .. } => reason::SESSION_CLOSED,
            Self::LockInSession { .. } => reason::LOCK_IN_SESSION,
        }
    }
}
