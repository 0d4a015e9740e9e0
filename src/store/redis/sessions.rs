//! Sessions: leases that keep any number of locks alive with one write
//! (`lua/open_session.lua`, `keep_alive.lua`, `join_session.lua`,
//! `end_session.lua`, `end_session_part.lua`).
//!
//! A session lives in its home partition (a hash and an entry in that
//! partition's session index). Its locks live with their records, in any
//! partition: each lock's nonce names the session, and each partition keeps
//! the set of the session's locks there. A Lock in a session first checks
//! the session and writes its partitions down (join), then locks with the
//! session's lease, which the lock script checks.
//!
//! A session ends by CloseSession or when its ttl passes without a
//! keep-alive (the sweeper). Its end is marked first in its home partition,
//! so it takes no keep-alive and no new partition; then each partition ends
//! its locks there in bounded steps, and writes an end marker that refuses
//! a Lock still on its way. A session leaves the index only when every
//! partition is done, so an end cut short (a crash, a timeout) is finished
//! by the next sweep.

use std::time::Duration;

use super::call::{Invocation, fingerprint, millis};
use super::reply::{Facts, Reply, Tag, malformed};
use super::{Partition, RedisStore, scripts};
use crate::domain::{
    CloseSessionOutcome, Error, Holder, OpenSessionCommand, OpenSessionOutcome, RecordKey, SessionId, SessionView,
};

/// Locks one step of a session's end handles in one partition.
const PART_STEP: usize = 50;

/// Locks one sweep ends per session before it moves on to the next; the
/// rest are ended by the next sweep.
const SWEEP_BUDGET: usize = 2_000;

/// How long a CloseSession has to end its session's locks before the
/// sweeper may take over: a close that failed makes its session due at once,
/// and one cut off (the replica died, the call was dropped) is finished
/// after this. SWEEP_BUDGET's steps take well under a second.
const CLOSE_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// How a session ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    /// By CloseSession: its locks are released.
    Closed,
    /// Its ttl passed without a keep-alive: its locks expire.
    Expired,
}

impl End {
    fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Expired => "expired",
        }
    }
}

/// What `end_session.lua` found.
struct Ending {
    /// True when this call ended it.
    ended_now: bool,
    /// How it ended (a close of a session whose ttl had passed finds it expired).
    how: End,
    /// The partitions its locks are in.
    parts: Vec<Partition>,
    /// Its ttl, which bounds how long a Lock of it can be on its way.
    ttl_ms: u64,
}

impl RedisStore {
    /// OpenSession: the session id is derived from the request_id, so a
    /// retry finds the session its first attempt opened.
    pub(super) async fn open_session_call(&self, cmd: OpenSessionCommand) -> Result<OpenSessionOutcome, Error> {
        let session_id = session_for(&cmd.request_id.to_string());
        let content = fingerprint(&["open_session", cmd.holder.as_str(), &millis(cmd.ttl).to_string()]);
        let home = self.keys.session_home(&session_id);
        let mut inv = Invocation::new(&scripts::OPEN_SESSION);
        inv.key(self.keys.session(&session_id))
            .key(self.keys.sessions(home))
            .arg(&content[..16])
            .arg(cmd.holder.as_str())
            .arg(millis(cmd.ttl))
            .arg(session_id.as_str());
        let mut reply = self.run_script("open_session", &inv).await?;
        if reply.tag == Tag::IdempotencyKeyReused {
            return Err(reply.tag.error(Facts { request_id: cmd.request_id.to_string(), ..Facts::default() }));
        }
        let session = session_view(&mut reply, &session_id)?;
        match reply.text()?.as_str() {
            "open" => Ok(OpenSessionOutcome { session, replayed: reply.replayed }),
            // A retry of a session that has ended since: it cannot be revived.
            state => Err(Error::SessionEnded { session_id: session_id.to_string(), closed: state == "closed" }),
        }
    }

    /// KeepAlive: one script, one hash field and one index entry written,
    /// whatever the session holds.
    pub(super) async fn keep_alive_call(
        &self,
        session: &SessionId,
        holder: Option<&Holder>,
    ) -> Result<SessionView, Error> {
        let mut inv = Invocation::new(&scripts::KEEP_ALIVE);
        inv.key(self.keys.session(session))
            .key(self.keys.sessions(self.keys.session_home(session)))
            .arg(holder.map_or("", Holder::as_str))
            .arg(session.as_str());
        let mut reply = self.run_script("keep_alive", &inv).await?;
        session_view(&mut reply, session)
    }

    /// Checks that `session` is live (and `holder`'s, when set) and writes
    /// down `partitions` as holding its locks; its holder, ttl and lease.
    pub(super) async fn join_session(
        &self,
        session: &SessionId,
        holder: Option<&Holder>,
        partitions: &[Partition],
    ) -> Result<SessionView, Error> {
        let mut inv = Invocation::new(&scripts::JOIN_SESSION);
        inv.key(self.keys.session(session)).arg(holder.map_or("", Holder::as_str));
        for partition in partitions {
            inv.arg(partition);
        }
        let mut reply = self.run_script("join_session", &inv).await?;
        session_view(&mut reply, session)
    }

    /// The lease of the session a lock lives in, for Commit and GetLock:
    /// its expiry (ms), or 0 once it ended (closed, or its ttl passed by
    /// Redis's clock, swept or not), with how it ended ("expired" or "closed").
    pub(super) async fn session_lease(&self, session: &SessionId) -> Result<(i64, &'static str), Error> {
        let mut pipe = redis::pipe();
        pipe.cmd("HMGET").arg(self.keys.session(session)).arg("expires").arg("state").cmd("TIME");
        let ((expires, state), (secs, micros)): ((Option<i64>, Option<String>), (i64, i64)) =
            self.query_pipe(&pipe).await?;
        let now = secs * 1000 + micros / 1000;
        Ok(match (expires, state.as_deref()) {
            (Some(expires), Some("open")) if expires > now => (expires, ""),
            (_, Some("closed")) => (0, "closed"),
            _ => (0, "expired"),
        })
    }

    /// CloseSession: marks the session closed and releases its locks, in
    /// bounded steps, up to [`SWEEP_BUDGET`] of them; the sweeper releases
    /// the rest at once (the session stays due). Idempotent: a retry
    /// finishes what a call cut short left.
    pub(super) async fn close_session_call(
        &self,
        session: &SessionId,
        holder: Option<&Holder>,
    ) -> Result<CloseSessionOutcome, Error> {
        let ended = self.end_session(session, End::Closed, holder, SWEEP_BUDGET).await;
        if ended.is_err() {
            // The sweeper need not wait out the grace to finish a close that
            // failed half way (best effort: if this fails too, it waits).
            let home = self.keys.session_home(session);
            let due_now =
                redis::cmd("ZADD").arg(self.keys.sessions(home)).arg("XX").arg(0).arg(session.as_str()).clone();
            let _: Result<(), Error> = self.query(&due_now).await;
        }
        let (ending, released, _) = ended?;
        let ending = ending.expect("a close is never answered ALIVE");
        Ok(CloseSessionOutcome { released: released as u64, closed_now: ending.ended_now && ending.how == End::Closed })
    }

    /// Ends the sessions of every partition whose ttl passed, at most
    /// `max_sessions` a partition; the number of locks that expired.
    pub(super) async fn sweep_session_partitions(&self, max_sessions: usize) -> Result<usize, Error> {
        let mut expired = 0;
        for partition in 0..self.keys.partitions() {
            for id in self.due_members(&self.keys.sessions(partition), max_sessions).await? {
                let Ok(session) = SessionId::parse(&id, "session_id") else {
                    tracing::warn!(session = %id, "session index holds an id that does not parse; removing it");
                    self.forget_session(partition, &id).await?;
                    continue;
                };
                // One session that cannot be ended holds up no other.
                match self.end_session(&session, End::Expired, None, SWEEP_BUDGET).await {
                    Ok((_, ended, _)) => expired += ended,
                    Err(Error::SessionNotFound { .. }) => {
                        // Its hash is gone (kept a retention after its end):
                        // nothing is left to end.
                        self.forget_session(partition, &id).await?;
                    }
                    Err(e) => tracing::warn!(session = %id, error = %e, "ending a session failed; retrying next sweep"),
                }
            }
        }
        Ok(expired)
    }

    /// Takes `id` out of `partition`'s session index.
    async fn forget_session(&self, partition: Partition, id: &str) -> Result<(), Error> {
        self.query(redis::cmd("ZREM").arg(self.keys.sessions(partition)).arg(id)).await
    }

    /// Ends `session` as `how` and its locks, up to `budget` of them; what
    /// `end_session.lua` found (None when a keep-alive came first), the
    /// locks ended, and whether every partition is done (the session then
    /// leaves the index).
    async fn end_session(
        &self,
        session: &SessionId,
        how: End,
        holder: Option<&Holder>,
        mut budget: usize,
    ) -> Result<(Option<Ending>, usize, bool), Error> {
        let home = self.keys.session_home(session);
        let mut inv = Invocation::new(&scripts::END_SESSION);
        inv.key(self.keys.session(session))
            .key(self.keys.sessions(home))
            .key(self.keys.events(home))
            .arg(how.as_str())
            .arg(holder.map_or("", Holder::as_str))
            .arg(session.as_str())
            .arg(if how == End::Closed { CLOSE_GRACE.as_millis() as u64 } else { 0 });
        let mut reply = self.run_script("end_session", &inv).await?;
        let ending = match reply.tag {
            Tag::Ok => read_ending(&mut reply)?,
            Tag::Alive => return Ok((None, 0, false)),
            Tag::SessionNotFound => {
                return Err(reply.tag.error(Facts { force_unlock_id: session.to_string(), ..Facts::default() }));
            }
            _ => return Err(reply.unexpected()),
        };
        let mut ended = 0;
        for &partition in &ending.parts {
            let (count, done) = self.end_part(partition, session, &ending, &mut budget).await?;
            ended += count;
            if !done {
                // The budget ran out: the sweeper ends the rest, from now.
                let () =
                    self.query(redis::cmd("ZADD").arg(self.keys.sessions(home)).arg(0).arg(session.as_str())).await?;
                return Ok((Some(ending), ended, false));
            }
        }
        // Every partition is done: the session leaves the index, and its
        // hash stays a while to answer a late keep-alive with how it ended.
        let mut pipe = redis::pipe();
        pipe.cmd("ZREM").arg(self.keys.sessions(home)).arg(session.as_str()).ignore();
        pipe.cmd("PEXPIRE").arg(self.keys.session(session)).arg(self.retention_ms.max(1)).ignore();
        let () = self.query_pipe(&pipe).await?;
        Ok((Some(ending), ended, true))
    }

    /// Ends the session's locks in `partition`, PART_STEP a call, while
    /// `budget` lasts; the locks ended, and whether none is left there.
    async fn end_part(
        &self,
        partition: Partition,
        session: &SessionId,
        ending: &Ending,
        budget: &mut usize,
    ) -> Result<(usize, bool), Error> {
        let locks = self.keys.session_locks(partition, session);
        let marker_ms = ending.ttl_ms.saturating_add(60_000);
        let mut ended = 0;
        loop {
            let members: Vec<String> =
                self.query(redis::cmd("ZRANGE").arg(&locks).arg(0).arg(PART_STEP.min(*budget).max(1) - 1)).await?;
            let mut inv = self.writing(&scripts::END_SESSION_PART, partition, None);
            inv.key(&locks).key(self.keys.session_end(partition, session));
            let mut args = Vec::with_capacity(2 * members.len());
            for member in &members {
                let Some((record, token)) = parse_member(member) else {
                    tracing::warn!(%member, "a session's lock set holds a member that does not parse; removing it");
                    let _: () = self.query(redis::cmd("ZREM").arg(&locks).arg(member)).await?;
                    continue;
                };
                for key in self.keys.lock_record(&record, token).in_script_order() {
                    inv.key(key);
                }
                args.push(record.to_string());
                args.push(token.to_string());
            }
            inv.arg(ending.how.as_str()).arg(session.as_str()).arg(self.retention_ms).arg(marker_ms);
            for arg in &args {
                inv.arg(arg);
            }
            let mut reply = self.run_script("end_session_part", &inv).await?;
            if reply.tag != Tag::Ok {
                return Err(reply.unexpected());
            }
            let count = usize::try_from(reply.uint()?).unwrap_or(usize::MAX);
            let left = reply.uint()?;
            ended += count;
            *budget = budget.saturating_sub(members.len().max(1));
            if left == 0 {
                return Ok((ended, true));
            }
            if *budget == 0 {
                return Ok((ended, false));
            }
        }
    }
}

/// The session a request_id opens: 64 bits of a digest of it.
fn session_for(request_id: &str) -> SessionId {
    let digest = fingerprint(&["session", request_id]);
    SessionId::parse(&digest[..SessionId::LEN], "session_id").expect("hex digits make a session id")
}

/// `{tag, holder, ttl, expires}` as a session, or the refusal as an error.
fn session_view(reply: &mut Reply, session: &SessionId) -> Result<SessionView, Error> {
    match reply.tag {
        Tag::Ok => Ok(SessionView {
            session_id: session.clone(),
            holder: reply.text()?,
            ttl: Duration::from_millis(reply.uint()?),
            expires_at_ms: reply.int()?,
        }),
        Tag::SessionNotFound => {
            Err(reply.tag.error(Facts { force_unlock_id: session.to_string(), ..Facts::default() }))
        }
        Tag::SessionEnded => {
            let detail = reply.text()?;
            Err(reply.tag.error(Facts { force_unlock_id: session.to_string(), detail, ..Facts::default() }))
        }
        _ => Err(reply.unexpected()),
    }
}

/// `{'OK', state, ended_now, parts, holder, ttl}` of `end_session.lua`.
fn read_ending(reply: &mut Reply) -> Result<Ending, Error> {
    let how = match reply.text()?.as_str() {
        "closed" => End::Closed,
        "expired" => End::Expired,
        other => return Err(malformed(&format!("the session state {other:?}"))),
    };
    let ended_now = reply.text()? == "1";
    let parts = reply
        .text()?
        .split(',')
        .filter(|p| !p.is_empty())
        .map(|p| p.parse().map_err(|_| malformed("a bad partition")))
        .collect::<Result<Vec<Partition>, Error>>()?;
    let _holder = reply.text()?;
    let ttl_ms = reply.uint()?;
    Ok(Ending { ended_now, how, parts, ttl_ms })
}

/// A member of a session's lock set: `sku|warehouse|token`.
fn parse_member(member: &str) -> Option<(RecordKey, u64)> {
    let (record, token) = member.rsplit_once('|')?;
    Some((RecordKey::parse_id(record)?, token.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_id_names_one_session() {
        assert_eq!(session_for("r-1"), session_for("r-1"));
        assert_ne!(session_for("r-1"), session_for("r-2"));
        assert_eq!(session_for("r-1").as_str().len(), SessionId::LEN);
    }

    #[test]
    fn members_name_a_record_and_a_token() {
        let (record, token) = parse_member("SKU-1|WH-A|4097").unwrap();
        assert_eq!((record.to_string().as_str(), token), ("SKU-1|WH-A", 4097));
        assert!(parse_member("SKU-1|4097").is_none());
        assert!(parse_member("SKU-1|WH-A|x").is_none());
    }
}
