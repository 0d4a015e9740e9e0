//! WatchHolder: what a holder must act on, pushed as it happens. It follows
//! every partition's lifecycle event stream the way WatchAvailability does
//! (from the event hub once live, from Redis to catch up or resume), keeps
//! the holder's expirations, forced releases and session ends, and adds
//! RENEW_DUE for its unrenewed locks from the lock and renew events it saw.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use super::{convert, validate, watch};
use crate::domain::{Error, EventHub, Holder, LifecycleEvent, SessionId, StockStore, WatchPosition};
use crate::edge::auth::Principal;
use crate::pb;
use crate::pb::HolderEventKind as Kind;

/// How many events a holder's watch may hold before it waits for its client.
const BUFFER: usize = 256;

/// What the follow makes of one event of the holder.
enum Item {
    /// Pass it on.
    Notify(pb::HolderEvent),
    /// A lock (not in a session) that will expire at `expires_at_ms`
    /// unless renewed: RENEW_DUE at `due_at_ms`.
    Track { due_at_ms: i64, event: pb::HolderEvent },
    /// The lock ended; nothing is due for it.
    Untrack { lock_id: String, event_id: String },
    /// An event of the holder that needs no word, but moves the position.
    Moved { event_id: String },
}

/// Starts a watch of the holder the request (or its principal) names.
pub(super) async fn watch_holder<S: StockStore>(
    store: &Arc<S>,
    events: &EventHub,
    principal: &Option<Principal>,
    r: pb::WatchHolderRequest,
) -> Result<ReceiverStream<Result<pb::HolderEvent, Status>>, Status> {
    let holder = validate::holder(principal, &r.holder)?;
    let session = validate::optional(&r.session_id, |v| SessionId::parse(v, "session_id"))?;
    let renew_due_before = match &r.renew_due_before {
        Some(d) => Some(convert::std_duration(d, "renew_due_before")?),
        None => None,
    };
    // Subscribe before reading anything, so nothing falls between.
    let hub = events.subscribe();
    let mut from = WatchPosition::default();
    let after = if r.after_event_id.is_empty() {
        None
    } else {
        let not_ours = || Error::invalid("after_event_id", "is not an event id received from WatchHolder");
        Some(WatchPosition::parse(&r.after_event_id).ok_or_else(not_ours)?)
    };
    for partition in 0..store.partitions() {
        let position = store.event_position(partition).await?;
        let at = match &after {
            None => position.last,
            Some(after) => {
                let at = after.get(partition).ok_or_else(|| {
                    Error::invalid("after_event_id", "does not name every partition; start again without it")
                })?;
                if at < position.trimmed_through {
                    return Err(Error::invalid(
                        "after_event_id",
                        format!("is older than the retained events (trimmed through {})", position.trimmed_through),
                    )
                    .into());
                }
                at
            }
        };
        from.set(partition, at);
    }
    let (items_tx, items) = mpsc::channel(BUFFER);
    let render = move |e: &LifecycleEvent, at: &WatchPosition| item(e, at, &holder, session.as_ref(), renew_due_before);
    watch::spawn_follow(store, events, hub, from, render, items_tx);
    let (tx, rx) = mpsc::channel(BUFFER);
    tokio::spawn(pace(items, tx));
    Ok(ReceiverStream::new(rx))
}

/// What `e` means to `holder` (and `session`, when the watch names one).
fn item(
    e: &LifecycleEvent,
    at: &WatchPosition,
    holder: &Holder,
    session: Option<&SessionId>,
    renew_due_before: Option<Duration>,
) -> Option<Item> {
    if e.field("holder") != holder.as_str() {
        return None;
    }
    let event_id = at.to_string();
    let action = e.field("action");
    if let Some(session) = session {
        let about_it = match action {
            "session.expire" | "session.close" => e.field("detail") == session.as_str(),
            _ => lock_session(e).as_ref() == Some(session),
        };
        if !about_it {
            return Some(Item::Moved { event_id });
        }
    }
    let mut event = pb::HolderEvent {
        event_id: event_id.clone(),
        lock_id: e.lock_id(),
        fencing_token: e.field("token").parse().unwrap_or_default(),
        session_id: lock_session(e).map(|s| s.to_string()).unwrap_or_default(),
        at: Some(convert::timestamp(i64::try_from(e.id.ms).unwrap_or(i64::MAX))),
        order_id: e.field("order_id").to_owned(),
        quantity: e.decimal("quantity"),
        ..Default::default()
    };
    let item = match action {
        "expire" => {
            event.kind = Kind::LockExpired.into();
            event.cause = match e.field("detail") {
                // A lock in a session expires by itself only at its maximum hold.
                "" if !event.session_id.is_empty() => "max_hold".to_owned(),
                "" => "ttl".to_owned(),
                cause => cause.to_owned(),
            };
            Item::Notify(event)
        }
        "force_release" => {
            let (operator, reason) = e.field("detail").split_once('\n').unwrap_or((e.field("detail"), ""));
            event.kind = Kind::ForceReleased.into();
            (event.operator, event.reason) = (operator.to_owned(), reason.to_owned());
            Item::Notify(event)
        }
        "session.expire" => Item::Notify(pb::HolderEvent {
            kind: Kind::SessionExpired.into(),
            lock_id: String::new(),
            session_id: e.field("detail").to_owned(),
            order_id: String::new(),
            quantity: String::new(),
            ..event
        }),
        // A lock in a session is kept by its session; others must be renewed.
        // A moved lock (transfer.in) is a lock of its own, to be renewed.
        "lock" | "renew" | "transfer.in" if lock_session(e).is_none() => {
            let Ok(expires_at_ms) = e.field("detail").parse::<i64>() else {
                return Some(Item::Moved { event_id });
            };
            let now = i64::try_from(e.id.ms).unwrap_or(i64::MAX);
            let before = renew_due_before
                .map_or((expires_at_ms - now) / 3, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
            event.kind = Kind::RenewDue.into();
            event.at = Some(convert::timestamp(expires_at_ms));
            Item::Track { due_at_ms: expires_at_ms.saturating_sub(before), event }
        }
        "release" | "commit" => Item::Untrack { lock_id: event.lock_id, event_id },
        // A lock moved whole is gone (its detail: what it kept, then the new lock's id).
        "transfer.out" if e.field("detail").starts_with("0|") => Item::Untrack { lock_id: event.lock_id, event_id },
        _ => Item::Moved { event_id },
    };
    Some(item)
}

/// The session a lock event's lock lives in.
fn lock_session(e: &LifecycleEvent) -> Option<SessionId> {
    SessionId::of_nonce(e.field("nonce"))
}

/// Passes the items on to the client, and sends RENEW_DUE for each tracked
/// lock when its time comes (once per lock or renew: a renewal tracks it
/// afresh; its end untracks it). Items already received go first, so a
/// watch that replays a lock and its end sends no RENEW_DUE for it. Ends
/// when either side does.
async fn pace(mut items: mpsc::Receiver<Result<Item, Status>>, tx: mpsc::Sender<Result<pb::HolderEvent, Status>>) {
    let mut due: BTreeSet<(i64, String)> = BTreeSet::new();
    let mut tracked: HashMap<String, (i64, pb::HolderEvent)> = HashMap::new();
    let mut position = String::new();
    loop {
        let next = due.first().map(|(at, _)| *at);
        let wait = next
            .map_or(Duration::from_secs(3600), |at| Duration::from_millis(u64::try_from(at - unix_ms()).unwrap_or(0)));
        tokio::select! {
            // What is already here comes first: a lock's end, queued behind
            // its lock, cancels its RENEW_DUE (a watch catching up).
            biased;
            () = tx.closed() => return,
            received = items.recv() => {
                let item = match received {
                    None => return,
                    Some(Err(status)) => {
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                    Some(Ok(item)) => item,
                };
                let forget = |lock_id: &str, due: &mut BTreeSet<(i64, String)>, tracked: &mut HashMap<String, (i64, pb::HolderEvent)>| {
                    if let Some((at, _)) = tracked.remove(lock_id) {
                        due.remove(&(at, lock_id.to_owned()));
                    }
                };
                match item {
                    Item::Notify(event) => {
                        position.clone_from(&event.event_id);
                        forget(&event.lock_id, &mut due, &mut tracked);
                        if tx.send(Ok(event)).await.is_err() {
                            return;
                        }
                    }
                    Item::Track { due_at_ms, event } => {
                        position.clone_from(&event.event_id);
                        forget(&event.lock_id, &mut due, &mut tracked);
                        due.insert((due_at_ms, event.lock_id.clone()));
                        tracked.insert(event.lock_id.clone(), (due_at_ms, event));
                    }
                    Item::Untrack { lock_id, event_id } => {
                        position = event_id;
                        forget(&lock_id, &mut due, &mut tracked);
                    }
                    Item::Moved { event_id } => position = event_id,
                }
            }
            () = tokio::time::sleep(wait), if next.is_some() => {
                let now = unix_ms();
                while let Some((at, lock_id)) = due.first().cloned() {
                    if at > now {
                        break;
                    }
                    due.pop_first();
                    if let Some((_, mut event)) = tracked.remove(&lock_id) {
                        event.event_id.clone_from(&position);
                        if tx.send(Ok(event)).await.is_err() {
                            return;
                        }
                    }
                }
            }
        }
    }
}

/// This replica's clock, ms since the Unix epoch (event times are Redis's;
/// the two differ by the clock skew between the machines).
fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::EventId;

    fn event(fields: &[(&str, &str)]) -> LifecycleEvent {
        LifecycleEvent {
            partition: 0,
            id: EventId { ms: 1_000, seq: 0 },
            fields: fields.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
        }
    }

    fn holder() -> Holder {
        Holder::parse("h", "holder").unwrap()
    }

    #[test]
    fn a_forced_release_names_its_operator_and_reason() {
        let e = event(&[
            ("action", "force_release"),
            ("record", "S|W"),
            ("token", "7"),
            ("nonce", "ab"),
            ("holder", "h"),
            ("detail", "alice\nstuck since Monday"),
        ]);
        let Some(Item::Notify(n)) = item(&e, &WatchPosition::default(), &holder(), None, None) else {
            panic!("not a notice")
        };
        assert_eq!(n.kind(), Kind::ForceReleased);
        assert_eq!(
            (n.lock_id.as_str(), n.operator.as_str(), n.reason.as_str()),
            ("S|W|7-ab", "alice", "stuck since Monday")
        );
    }

    #[test]
    fn another_holders_events_are_not_seen() {
        let e = event(&[("action", "expire"), ("holder", "someone-else")]);
        assert!(item(&e, &WatchPosition::default(), &holder(), None, None).is_none());
    }

    #[test]
    fn renew_is_due_two_thirds_into_the_hold_by_default() {
        let e = event(&[
            ("action", "lock"),
            ("record", "S|W"),
            ("token", "7"),
            ("nonce", "ab"),
            ("holder", "h"),
            ("detail", "4000"),
        ]);
        let Some(Item::Track { due_at_ms, .. }) = item(&e, &WatchPosition::default(), &holder(), None, None) else {
            panic!("not tracked")
        };
        assert_eq!(due_at_ms, 3_000);
        let soon = Some(Duration::from_millis(500));
        let Some(Item::Track { due_at_ms, .. }) = item(&e, &WatchPosition::default(), &holder(), None, soon) else {
            panic!("not tracked")
        };
        assert_eq!(due_at_ms, 3_500);
    }
}
