//! Who is calling and what they may do: bearer tokens mapped to a principal
//! and a role, the table of which role may call which method, and per-caller
//! rate limits on availability queries.
//!
//! It runs as a tower layer in front of every gRPC service, so a call that is
//! not allowed never reaches a handler (and never touches Redis). The
//! principal of an allowed call travels in the request extensions; the
//! handlers take it as the lock holder and as the actor of audit events.

use std::collections::HashSet;
use std::fmt;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tonic::Status;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

use super::layer::{BoxFuture, take_ready};
use crate::domain::{Error, Holder};

/// Shortest token accepted in the token file.
const MIN_TOKEN_LEN: usize = 16;

/// How often the token file is checked for changes.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(2);

/// What a caller may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Order services: lock, renew, release, commit, and read.
    Service,
    /// The transfer system: availability only.
    Reader,
    /// People: list and read locks, force unlocks, read the audit.
    Operator,
    /// Stock writes and policy; may call everything.
    Admin,
}

impl Role {
    fn parse(text: &str) -> Option<Self> {
        match text {
            "service" => Some(Self::Service),
            "reader" => Some(Self::Reader),
            "operator" => Some(Self::Operator),
            "admin" => Some(Self::Admin),
            _ => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Service => "service",
            Self::Reader => "reader",
            Self::Operator => "operator",
            Self::Admin => "admin",
        })
    }
}

/// An authenticated caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// Its name: the holder of its locks and the actor of its audit events.
    pub name: Holder,
    /// What it may do.
    pub role: Role,
}

/// Which methods each role may call. Health and reflection are open to all,
/// so probes and tools work without a token.
pub fn allowed(role: Role, path: &str) -> bool {
    let Some((service, method)) = path.trim_start_matches('/').split_once('/') else {
        return false;
    };
    match (service, role) {
        (_, Role::Admin) => true,
        ("stocklock.v1.AdminService", Role::Operator) => true,
        ("stocklock.v1.AdminService", _) => false,
        ("stocklock.v1.InventoryService", role) => match method {
            "Lock" | "BatchLock" | "Renew" | "Release" | "Commit" | "TransferLock" | "OpenSession" | "KeepAlive"
            | "KeepAliveOnce" | "CloseSession" | "WatchHolder" => role == Role::Service,
            "GetAvailability" | "BatchGetAvailability" => true,
            "GetLock" | "ListLocks" => matches!(role, Role::Service | Role::Operator),
            _ => false,
        },
        _ => false,
    }
}

fn is_public(path: &str) -> bool {
    path.starts_with("/grpc.health.v1.Health/") || path.starts_with("/grpc.reflection.")
}

fn is_query(path: &str) -> bool {
    // BatchGetAvailability is also the permission of the HTTP availability query.
    matches!(
        path,
        "/stocklock.v1.InventoryService/GetAvailability" | "/stocklock.v1.InventoryService/BatchGetAvailability"
    )
}

/// Words that mark an example token, not a secret.
const PLACEHOLDERS: [&str; 8] =
    ["REPLACE-ME", "REPLACE_ME", "REPLACEME", "CHANGE-ME", "CHANGE_ME", "CHANGEME", "PLACEHOLDER", "EXAMPLE"];

/// Fewest distinct characters a token must have.
const MIN_DISTINCT: usize = 8;

/// Why `token` looks like a placeholder rather than a secret, if it does.
fn placeholder(token: &str) -> Option<String> {
    let upper = token.to_ascii_uppercase();
    if let Some(word) = PLACEHOLDERS.iter().find(|word| upper.contains(**word)) {
        return Some(format!("it contains {word}"));
    }
    let distinct = token.chars().collect::<HashSet<_>>().len();
    (distinct < MIN_DISTINCT).then(|| format!("it has {distinct} distinct characters, fewer than {MIN_DISTINCT}"))
}

/// The tokens of a token file, as SHA-256 digests.
struct Tokens {
    entries: Vec<([u8; 32], Principal)>,
}

impl Tokens {
    /// Parses `token principal role` lines; `#` starts a comment.
    fn parse(text: &str) -> Result<Self, String> {
        let mut entries = Vec::new();
        let mut seen = HashSet::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let at = |what: String| format!("line {}: {what}", n + 1);
            let [token, name, role] = line.split_whitespace().collect::<Vec<_>>()[..] else {
                return Err(at("expected `token principal role`".into()));
            };
            if token.len() < MIN_TOKEN_LEN {
                return Err(at(format!("the token is shorter than {MIN_TOKEN_LEN} characters")));
            }
            if let Some(why) = placeholder(token) {
                return Err(at(format!(
                    "the token is a placeholder ({why}), which anyone who read the example could call with; \
                     put a secret there, for example from `openssl rand -hex 24`"
                )));
            }
            let name = Holder::parse(name, "principal").map_err(|e| at(e.to_string()))?;
            let role = Role::parse(role)
                .ok_or_else(|| at(format!("unknown role {role:?}; use service, reader, operator or admin")))?;
            let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
            if !seen.insert(digest) {
                return Err(at("the same token appears twice".into()));
            }
            entries.push((digest, Principal { name, role }));
        }
        Ok(Self { entries })
    }

    /// The principal of `token`; compares every entry in constant time.
    fn find(&self, token: &str) -> Option<Principal> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = None;
        for (candidate, principal) in &self.entries {
            if bool::from(candidate.ct_eq(&digest)) {
                found = Some(principal.clone());
            }
        }
        found
    }
}

/// Authenticates calls against a token file that may change at run time.
pub struct Authenticator {
    path: PathBuf,
    tokens: RwLock<Arc<Tokens>>,
    loaded: RwLock<Option<SystemTime>>,
}

impl Authenticator {
    /// Loads the token file; an unreadable or invalid file is an error.
    pub fn load(path: &Path) -> Result<Self, String> {
        let (tokens, modified) = read_tokens(path)?;
        Ok(Self { path: path.to_owned(), tokens: RwLock::new(Arc::new(tokens)), loaded: RwLock::new(modified) })
    }

    /// Reloads the file if it changed. A broken file keeps the old tokens.
    pub fn reload_if_changed(&self) {
        let modified = std::fs::metadata(&self.path).and_then(|m| m.modified()).ok();
        if modified == *self.loaded.read().expect("lock poisoned") {
            return;
        }
        match read_tokens(&self.path) {
            Ok((tokens, modified)) => {
                let count = tokens.entries.len();
                *self.tokens.write().expect("lock poisoned") = Arc::new(tokens);
                *self.loaded.write().expect("lock poisoned") = modified;
                tracing::info!(path = %self.path.display(), tokens = count, "reloaded the token file");
            }
            Err(e) => {
                // Remember the broken version so the error is logged once.
                *self.loaded.write().expect("lock poisoned") = modified;
                tracing::error!(path = %self.path.display(), error = %e, "token file is invalid; keeping the previous tokens");
            }
        }
    }

    fn authenticate(&self, headers: &http::HeaderMap) -> Result<Principal, Error> {
        let value = headers.get(http::header::AUTHORIZATION).ok_or_else(|| {
            Error::Unauthenticated("missing authorization metadata: send `authorization: Bearer <token>`".into())
        })?;
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                Error::Unauthenticated("malformed authorization metadata: expected `Bearer <token>`".into())
            })?;
        let tokens = self.tokens.read().expect("lock poisoned").clone();
        tokens.find(token).ok_or_else(|| Error::Unauthenticated("unknown token".into()))
    }
}

fn read_tokens(path: &Path) -> Result<(Tokens, Option<SystemTime>), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
    let tokens = Tokens::parse(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok((tokens, modified))
}

/// Who a rate limit counts a call against.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum CallerKey {
    Principal(String),
    Address(IpAddr),
    Unknown,
}

/// The access policy: authentication (optional) and query rate limits.
pub struct Access {
    auth: Option<Authenticator>,
    queries: Option<DefaultKeyedRateLimiter<CallerKey>>,
}

impl Access {
    /// `auth` None turns authentication off; `queries_per_second` None turns
    /// the query rate limit off.
    pub fn new(auth: Option<Authenticator>, queries_per_second: Option<NonZeroU32>) -> Self {
        let queries = queries_per_second.map(|rate| RateLimiter::keyed(Quota::per_second(rate)));
        Self { auth, queries }
    }

    /// The authenticator, for reloading.
    pub fn authenticator(&self) -> Option<&Authenticator> {
        self.auth.as_ref()
    }

    fn admit<B>(&self, request: &http::Request<B>) -> Result<Option<Principal>, Error> {
        self.admit_call(request.uri().path(), request.headers(), remote_ip(request))
    }

    /// Decides on one call to the gRPC method `path` (the HTTP API names the
    /// method whose permission it needs): the principal it runs as (None with
    /// authentication off), or the error it is refused with.
    pub fn admit_call(
        &self,
        path: &str,
        headers: &http::HeaderMap,
        remote: Option<IpAddr>,
    ) -> Result<Option<Principal>, Error> {
        if is_public(path) {
            return Ok(None);
        }
        let principal = match &self.auth {
            None => None,
            Some(auth) => {
                let principal = auth.authenticate(headers)?;
                if !allowed(principal.role, path) {
                    return Err(Error::RoleNotAllowed { role: principal.role.to_string(), method: path.to_owned() });
                }
                Some(principal)
            }
        };
        if let Some(limiter) = &self.queries
            && is_query(path)
        {
            let key = match &principal {
                Some(p) => CallerKey::Principal(p.name.to_string()),
                None => remote.map_or(CallerKey::Unknown, CallerKey::Address),
            };
            if let Err(not_until) = limiter.check_key(&key) {
                crate::metrics::METRICS.rate_limited.inc();
                let retry_after = not_until.wait_time_from(DefaultClock::default().now());
                return Err(Error::RateLimited { retry_after: retry_after.max(Duration::from_millis(1)) });
            }
        }
        Ok(principal)
    }

    /// Forgets rate-limit state of callers that have been quiet, bounding memory.
    pub fn retain_recent(&self) {
        if let Some(limiter) = &self.queries {
            limiter.retain_recent();
        }
    }
}

fn remote_ip<B>(request: &http::Request<B>) -> Option<IpAddr> {
    let extensions = request.extensions();
    extensions
        .get::<TcpConnectInfo>()
        .and_then(TcpConnectInfo::remote_addr)
        .or_else(|| extensions.get::<TlsConnectInfo<TcpConnectInfo>>().and_then(|i| i.get_ref().remote_addr()))
        .map(|a| a.ip())
}

/// The tower layer that applies an [`Access`] policy to every call.
#[derive(Clone)]
pub struct AccessLayer {
    access: Arc<Access>,
}

impl AccessLayer {
    /// A layer enforcing `access`.
    pub fn new(access: Arc<Access>) -> Self {
        Self { access }
    }
}

impl<S> tower::Layer<S> for AccessLayer {
    type Service = AccessService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AccessService { inner, access: self.access.clone() }
    }
}

/// The service [`AccessLayer`] wraps around each gRPC service.
#[derive(Clone)]
pub struct AccessService<S> {
    inner: S,
    access: Arc<Access>,
}

impl<S, B> tower::Service<http::Request<B>> for AccessService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        match self.access.admit(&request) {
            Ok(principal) => {
                if let Some(principal) = principal {
                    request.extensions_mut().insert(principal);
                }
                Box::pin(take_ready(&mut self.inner).call(request))
            }
            Err(error) => {
                let status: Status = error.into();
                Box::pin(async move { Ok(status.into_http()) })
            }
        }
    }
}

/// Reloads the token file when it changes and forgets idle rate-limit state.
pub async fn maintain(access: Arc<Access>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut ticker = tokio::time::interval(RELOAD_INTERVAL);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.changed() => return,
        }
        if let Some(auth) = access.authenticator() {
            auth.reload_if_changed();
        }
        access.retain_recent();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_token_file() {
        let tokens = Tokens::parse(
            "# comment\n\nchk-0123456789abcdef checkout service\nops-0123456789abcdef  alice operator # trailing\n",
        )
        .unwrap();
        assert_eq!(tokens.entries.len(), 2);
        let alice = tokens.find("ops-0123456789abcdef").unwrap();
        assert_eq!((alice.name.as_str(), alice.role), ("alice", Role::Operator));
        assert!(tokens.find("ops-0123456789abcdeX").is_none());
    }

    #[test]
    fn rejects_bad_token_files() {
        for (text, needle) in [
            ("short checkout service", "shorter"),
            ("chk-0123456789abcdef checkout root", "unknown role"),
            ("chk-0123456789abcdef checkout", "expected"),
            ("chk-0123456789abcdef a{b service", "principal"),
            ("chk-0123456789abcdef a service\nchk-0123456789abcdef b reader", "twice"),
        ] {
            let err = Tokens::parse(text).err().unwrap_or_else(|| panic!("{text:?} was accepted"));
            assert!(err.contains(needle), "{text:?}: {err}");
        }
    }

    #[test]
    fn the_role_table() {
        let inv = |m: &str| format!("/stocklock.v1.InventoryService/{m}");
        assert!(allowed(Role::Service, &inv("Lock")));
        assert!(!allowed(Role::Reader, &inv("Lock")));
        assert!(allowed(Role::Service, &inv("KeepAlive")));
        assert!(!allowed(Role::Reader, &inv("OpenSession")));
        assert!(allowed(Role::Reader, &inv("GetAvailability")));
        assert!(!allowed(Role::Reader, &inv("ListLocks")));
        assert!(!allowed(Role::Service, &inv("SetStock")));
        assert!(allowed(Role::Admin, &inv("SetStock")));
        assert!(allowed(Role::Operator, "/stocklock.v1.AdminService/ApproveForceUnlock"));
        assert!(!allowed(Role::Service, "/stocklock.v1.AdminService/ApproveForceUnlock"));
        assert!(!allowed(Role::Operator, &inv("Lock")));
        assert!(!allowed(Role::Service, "garbage"));
    }
}
