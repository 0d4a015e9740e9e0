//! Sessions: leases that keep many locks alive with one write a keep-alive,
//! and end them all when they end (on a real Redis, or a cluster).

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use stocklock::pb;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tonic::Code;
use tonic_types::StatusExt;

const HOLDER: &str = "order-service";

async fn open(svc: &TestService, ttl_ms: i64, request_id: &str) -> pb::Session {
    let request = pb::OpenSessionRequest { ttl: millis(ttl_ms), holder: HOLDER.into(), request_id: request_id.into() };
    svc.client.clone().open_session(request).await.unwrap().into_inner().session.unwrap()
}

fn in_session(sku: &str, warehouse: &str, quantity: &str, request_id: &str, session: &pb::Session) -> pb::LockRequest {
    pb::LockRequest {
        candidates: None,
        ttl: None,
        session_id: session.session_id.clone(),
        ..lock_request(sku, warehouse, quantity, request_id)
    }
}

async fn keep_alive(svc: &TestService, session: &pb::Session) -> Result<pb::Session, tonic::Status> {
    let request = pb::KeepAliveOnceRequest { session_id: session.session_id.clone(), holder: HOLDER.into() };
    svc.client.clone().keep_alive_once(request).await.map(|r| r.into_inner().session.unwrap())
}

async fn close(svc: &TestService, session: &pb::Session) -> pb::CloseSessionResponse {
    let request = pb::CloseSessionRequest { session_id: session.session_id.clone(), holder: HOLDER.into() };
    svc.client.clone().close_session(request).await.unwrap().into_inner()
}

/// The events of every partition's stream with `action`, as field maps.
async fn events(svc: &TestService, action: &str) -> Vec<HashMap<String, String>> {
    let mut conn = svc.redis_conn().await;
    let mut found = Vec::new();
    let partitions = svc.keys().partitions();
    for partition in 0..partitions {
        let entries: Vec<(String, Vec<String>)> = redis::cmd("XRANGE")
            .arg(svc.keys().events(partition))
            .arg("-")
            .arg("+")
            .query_async(&mut conn)
            .await
            .unwrap();
        for (_, flat) in entries {
            let fields: HashMap<String, String> = flat.chunks(2).map(|kv| (kv[0].clone(), kv[1].clone())).collect();
            if fields["action"] == action {
                found.push(fields);
            }
        }
    }
    found
}

#[tokio::test]
async fn locks_in_a_session_live_while_it_is_kept_alive_and_expire_with_it() {
    let svc = start_with(&["--min-ttl", "100ms", "--sweep-interval", "100ms"]).await;
    svc.stock("SKU-1", "WH-A", "10").await;
    svc.stock("SKU-2", "WH-A", "10").await;
    let session = open(&svc, 600, "s-1").await;
    let a = svc.client.clone().lock(in_session("SKU-1", "WH-A", "3", "l-1", &session)).await.unwrap().into_inner();
    let batch = pb::BatchLockRequest {
        policy: 0,
        ttl: None,
        session_id: session.session_id.clone(),
        ..batch(vec![batch_line("SKU-1", "WH-A", "2"), batch_line("SKU-2", "WH-A", "4")], "b-1")
    };
    let b = svc.client.clone().batch_lock(batch).await.unwrap().into_inner();
    let lock = a.lock.unwrap();
    assert_eq!(lock.session_id, session.session_id);
    assert!(b.locks.iter().all(|l| l.session_id == session.session_id));

    // Kept alive for several ttls: the locks stay, with no Renew.
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let renewed = keep_alive(&svc, &session).await.unwrap();
        assert!(renewed.expires_at.unwrap().seconds >= session.expires_at.unwrap().seconds);
    }
    assert_eq!(svc.available("SKU-1", "WH-A").await, "5");
    assert_eq!(svc.available("SKU-2", "WH-A").await, "6");
    let renew = pb::RenewRequest {
        lock_ids: vec![lock.lock_id.clone()],
        holder: HOLDER.into(),
        request_id: "rn".into(),
        ..Default::default()
    };
    expect_error(svc.client.clone().renew(renew).await, Code::FailedPrecondition, "LOCK_IN_SESSION");

    // Left alone, it ends: every lock's stock comes back, one expire event a
    // lock with the cause, and one event for the session.
    assert!(
        eventually(Duration::from_secs(5), || async {
            svc.available("SKU-1", "WH-A").await == "10" && svc.available("SKU-2", "WH-A").await == "10"
        })
        .await,
        "the session's locks were not returned"
    );
    let expired = events(&svc, "expire").await;
    assert_eq!(expired.len(), 3);
    assert!(expired.iter().all(|e| e["detail"] == "session_expired" && e["holder"] == HOLDER));
    let ended = events(&svc, "session.expire").await;
    assert_eq!(ended.len(), 1);
    assert_eq!((ended[0]["detail"].as_str(), ended[0]["holder"].as_str()), (session.session_id.as_str(), HOLDER));

    // Never revived, and nothing more locks in it.
    expect_error(keep_alive(&svc, &session).await, Code::FailedPrecondition, "SESSION_EXPIRED");
    let late = svc.client.clone().lock(in_session("SKU-1", "WH-A", "1", "l-2", &session)).await;
    expect_error(late, Code::FailedPrecondition, "SESSION_EXPIRED");
    let commit = pb::CommitRequest { lock_id: lock.lock_id, request_id: "c".into(), ..Default::default() };
    expect_error(svc.client.clone().commit(commit).await, Code::FailedPrecondition, "LOCK_EXPIRED");
    let record = svc.record("SKU-1", "WH-A").await;
    assert_eq!((record.locked.as_str(), record.live_locks), ("0", 0));
}

#[tokio::test]
async fn a_commit_after_the_session_lapsed_is_refused_before_the_sweeper_comes() {
    // The sweeper practically never runs: the lock is still stored, and only
    // the session's lease says it is gone.
    let svc = start_with(&["--min-ttl", "100ms", "--sweep-interval", "1h"]).await;
    svc.stock("SKU-1", "WH-A", "10").await;
    let session = open(&svc, 300, "s-1").await;
    let lock = svc.client.clone().lock(in_session("SKU-1", "WH-A", "3", "l-1", &session)).await.unwrap();
    let lock_id = lock.into_inner().lock.unwrap().lock_id;
    let commit = || pb::CommitRequest { lock_id: lock_id.clone(), request_id: "c".into(), ..Default::default() };
    // Wait for Redis's clock to pass the session's expiry.
    let expires = session.expires_at.unwrap();
    let expires_ms = expires.seconds * 1000 + i64::from(expires.nanos) / 1_000_000;
    let mut conn = svc.redis_conn().await;
    loop {
        let (secs, micros): (i64, i64) = redis::cmd("TIME").query_async(&mut conn).await.unwrap();
        if secs * 1000 + micros / 1000 > expires_ms {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    expect_error(svc.client.clone().commit(commit()).await, Code::FailedPrecondition, "SESSION_EXPIRED");
    assert_eq!(svc.record("SKU-1", "WH-A").await.physical, "10");
    // GetLock says the same as Commit: not a live lock with a past expiry.
    let get = svc.client.clone().get_lock(pb::GetLockRequest { lock_id: lock_id.clone() }).await;
    expect_error(get, Code::FailedPrecondition, "SESSION_EXPIRED");
}

#[tokio::test]
async fn a_commit_in_a_live_session_deducts_and_a_retry_replays() {
    let svc = start().await;
    svc.stock("SKU-1", "WH-A", "10").await;
    let session = open(&svc, 30_000, "s-1").await;
    let lock = svc.client.clone().lock(in_session("SKU-1", "WH-A", "3", "l-1", &session)).await.unwrap();
    let lock_id = lock.into_inner().lock.unwrap().lock_id;
    let commit = || pb::CommitRequest { lock_id: lock_id.clone(), request_id: "c".into(), ..Default::default() };
    let done = svc.client.clone().commit(commit()).await.unwrap().into_inner();
    assert_eq!(done.committed_quantity, "3");
    // Closing the session afterwards changes nothing of the commit.
    assert_eq!(close(&svc, &session).await.released, 0);
    let again = svc.client.clone().commit(commit()).await.unwrap().into_inner();
    assert!(!again.committed_now);
    let record = svc.record("SKU-1", "WH-A").await;
    assert_eq!((record.physical.as_str(), record.available.as_str()), ("7", "7"));
}

#[tokio::test]
async fn closing_a_session_releases_every_lock_in_bounded_steps_and_is_idempotent() {
    let svc = start().await;
    svc.stock("SKU-1", "WH-A", "1000").await;
    svc.stock("SKU-2", "WH-B", "1000").await;
    let session = open(&svc, 30_000, "s-1").await;
    // More locks than one step of the end handles.
    let mut ids = Vec::new();
    for i in 0..130 {
        let sku = if i % 2 == 0 { "SKU-1" } else { "SKU-2" };
        let warehouse = if i % 2 == 0 { "WH-A" } else { "WH-B" };
        let request = in_session(sku, warehouse, "1", &format!("l-{i}"), &session);
        ids.push(svc.client.clone().lock(request).await.unwrap().into_inner().lock.unwrap().lock_id);
    }
    assert_eq!(svc.available("SKU-1", "WH-A").await, "935");

    let closed = close(&svc, &session).await;
    assert_eq!((closed.released, closed.closed_now), (130, true));
    assert_eq!(svc.available("SKU-1", "WH-A").await, "1000");
    assert_eq!(svc.available("SKU-2", "WH-B").await, "1000");
    let released = events(&svc, "release").await;
    assert_eq!(released.len(), 130);
    assert!(released.iter().all(|e| e["detail"] == "session_closed"));
    assert_eq!(events(&svc, "session.close").await.len(), 1);

    let again = close(&svc, &session).await;
    assert_eq!((again.released, again.closed_now), (0, false));
    expect_error(keep_alive(&svc, &session).await, Code::FailedPrecondition, "SESSION_CLOSED");
    let late = svc.client.clone().lock(in_session("SKU-1", "WH-A", "1", "late", &session)).await;
    expect_error(late, Code::FailedPrecondition, "SESSION_CLOSED");
    let get = svc.client.clone().get_lock(pb::GetLockRequest { lock_id: ids[0].clone() }).await;
    let status = expect_error(get, Code::NotFound, "LOCK_NOT_FOUND");
    assert_eq!(status.get_details_error_info().unwrap().metadata["state"], "RELEASED");
}

#[tokio::test]
async fn a_session_belongs_to_its_holder() {
    let svc = start().await;
    svc.stock("SKU-1", "WH-A", "10").await;
    let session = open(&svc, 30_000, "s-1").await;
    let stranger = pb::KeepAliveOnceRequest { session_id: session.session_id.clone(), holder: "someone-else".into() };
    expect_error(svc.client.clone().keep_alive_once(stranger).await, Code::NotFound, "SESSION_NOT_FOUND");
    let mut request = in_session("SKU-1", "WH-A", "1", "l-1", &session);
    request.holder = "someone-else".into();
    expect_error(svc.client.clone().lock(request).await, Code::NotFound, "SESSION_NOT_FOUND");
    let close = pb::CloseSessionRequest { session_id: session.session_id.clone(), holder: "someone-else".into() };
    expect_error(svc.client.clone().close_session(close).await, Code::NotFound, "SESSION_NOT_FOUND");
    assert!(keep_alive(&svc, &session).await.is_ok());
    assert_eq!(svc.available("SKU-1", "WH-A").await, "10");
}

#[tokio::test]
async fn open_session_is_idempotent_by_request_id() {
    let svc = start().await;
    let first = open(&svc, 30_000, "s-1").await;
    let request = pb::OpenSessionRequest { ttl: millis(30_000), holder: HOLDER.into(), request_id: "s-1".into() };
    let retry = svc.client.clone().open_session(request).await.unwrap().into_inner();
    assert!(retry.replayed);
    assert_eq!(retry.session.unwrap().session_id, first.session_id);
    assert_ne!(open(&svc, 30_000, "s-2").await.session_id, first.session_id);
    let other = pb::OpenSessionRequest { ttl: millis(20_000), holder: HOLDER.into(), request_id: "s-1".into() };
    expect_error(svc.client.clone().open_session(other).await, Code::AlreadyExists, "IDEMPOTENCY_KEY_REUSED");

    let bad = pb::KeepAliveOnceRequest { session_id: "not-a-session".into(), holder: HOLDER.into() };
    let status = expect_error(svc.client.clone().keep_alive_once(bad).await, Code::InvalidArgument, "INVALID_ARGUMENT");
    assert_eq!(bad_fields(&status), ["session_id"]);
    let mut with_ttl = in_session("SKU-1", "WH-A", "1", "l-1", &first);
    with_ttl.ttl = secs(30);
    let status = expect_error(svc.client.clone().lock(with_ttl).await, Code::InvalidArgument, "INVALID_ARGUMENT");
    assert_eq!(bad_fields(&status), ["ttl"]);
}

#[tokio::test]
async fn the_keep_alive_stream_answers_each_message_and_ends_with_the_session() {
    let svc = start().await;
    let session = open(&svc, 30_000, "s-1").await;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut answers =
        svc.client.clone().keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap().into_inner();
    let ping = pb::KeepAliveRequest { session_id: session.session_id.clone(), holder: HOLDER.into() };
    for _ in 0..3 {
        tx.send(ping.clone()).await.unwrap();
        let answer = answers.message().await.unwrap().unwrap();
        assert_eq!(answer.session.unwrap().session_id, session.session_id);
    }
    close(&svc, &session).await;
    tx.send(ping).await.unwrap();
    let ended = answers.message().await;
    expect_error(ended, Code::FailedPrecondition, "SESSION_CLOSED");
}

/// Every command Redis runs (MONITOR), from a raw connection, as lines.
async fn monitor(svc: &TestService) -> tokio::sync::mpsc::UnboundedReceiver<String> {
    let address = svc.redis_url.trim_start_matches("redis://").split(',').next().unwrap().to_owned();
    let stream = tokio::net::TcpStream::connect(address.trim_end_matches('/')).await.unwrap();
    let (read, mut write) = stream.into_split();
    write.write_all(b"MONITOR\r\n").await.unwrap();
    let mut lines = BufReader::new(read).lines();
    assert_eq!(lines.next_line().await.unwrap().unwrap(), "+OK");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let _write = write;
        while let Ok(Some(line)) = lines.next_line().await {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

#[tokio::test]
async fn a_keep_alive_writes_the_same_whatever_the_session_holds() {
    // Nothing else runs meanwhile: no sweeper, no auditor.
    let svc = start_with(&["--sweep-interval", "1h", "--invariant-check-interval", "1h"]).await;
    if svc.cluster.is_some() {
        // MONITOR watches one node; the standalone run covers this.
        return;
    }
    svc.stock("SKU-1", "WH-A", "100000").await;
    let small = open(&svc, 30_000, "small").await;
    let big = open(&svc, 30_000, "big").await;
    svc.client.clone().lock(in_session("SKU-1", "WH-A", "1", "l-small", &small)).await.unwrap();
    for i in 0..300 {
        svc.client.clone().lock(in_session("SKU-1", "WH-A", "1", &format!("l-{i}"), &big)).await.unwrap();
    }

    // The calls each keep-alive's script made: Redis logs them right after
    // its EVALSHA (it runs one script at a time).
    let mut commands = HashMap::new();
    for session in [&small, &big] {
        let mut seen = monitor(&svc).await;
        keep_alive(&svc, session).await.unwrap();
        let mut log = Vec::new();
        while let Ok(Some(line)) = tokio::time::timeout(Duration::from_millis(300), seen.recv()).await {
            log.push(line);
        }
        let at = log
            .iter()
            .position(|l| l.contains("\"EVALSHA\"") && l.contains(&session.session_id))
            .unwrap_or_else(|| panic!("no keep-alive in {log:#?}"));
        let calls: Vec<&String> = log[at + 1..].iter().take_while(|l| l.contains(" lua] ")).collect();
        assert!(calls.iter().all(|l| !l.contains("SKU-1")), "a keep-alive touched a lock: {calls:#?}");
        let names = calls.iter().map(|l| l.split('"').nth(1).unwrap_or_default().to_uppercase()).collect::<Vec<_>>();
        commands.insert(session.session_id.clone(), names);
    }
    assert_eq!(commands[&small.session_id], commands[&big.session_id]);
    assert_eq!(commands[&big.session_id], ["TIME", "HMGET", "HSET", "ZADD"]);
}

/// A WatchHolder of HOLDER, from now or after `after`.
async fn watch_holder(svc: &TestService, after: &str) -> tonic::Streaming<pb::WatchHolderResponse> {
    let request = pb::WatchHolderRequest {
        holder: HOLDER.into(),
        after_event_id: after.into(),
        renew_due_before: millis(150),
        ..Default::default()
    };
    svc.client.clone().watch_holder(request).await.unwrap().into_inner()
}

async fn next(stream: &mut tonic::Streaming<pb::WatchHolderResponse>) -> pb::HolderEvent {
    let response = tokio::time::timeout(Duration::from_secs(5), stream.message()).await.expect("no notice in time");
    response.unwrap().unwrap().event.expect("a response without an event")
}

#[tokio::test]
async fn a_holder_hears_of_every_loss_with_its_cause_and_can_resume() {
    let svc = start_with(&["--min-ttl", "100ms", "--sweep-interval", "100ms"]).await;
    svc.stock("SKU-1", "WH-A", "10").await;
    let mut notices = watch_holder(&svc, "").await;

    // Another holder's lock expiring is none of this holder's business.
    let mut theirs = lock_request("SKU-1", "WH-A", "1", "theirs");
    (theirs.holder, theirs.ttl) = ("someone-else".into(), millis(200));
    svc.client.clone().lock(theirs).await.unwrap();

    // An unrenewed lock: first told that it is due, then that it expired.
    let mut short = lock_request("SKU-1", "WH-A", "1", "short");
    short.ttl = millis(400);
    let short = svc.client.clone().lock(short).await.unwrap().into_inner().lock.unwrap();
    let due = next(&mut notices).await;
    assert_eq!((due.kind(), due.lock_id.as_str()), (pb::HolderEventKind::RenewDue, short.lock_id.as_str()));
    assert_eq!(due.at, short.expires_at);
    let expired = next(&mut notices).await;
    assert_eq!((expired.kind(), expired.lock_id.as_str()), (pb::HolderEventKind::LockExpired, short.lock_id.as_str()));
    assert_eq!((expired.cause.as_str(), expired.fencing_token), ("ttl", short.fencing_token));
    let resume_from = expired.event_id.clone();

    // A forced unlock names who approved it and why it was asked for.
    let long = svc.lock("SKU-1", "WH-A", "2", "long").await.unwrap().lock.unwrap();
    force_unlock(&svc, pb::lock_selector::Target::LockId(long.lock_id.clone())).await;
    let forced = loop {
        let notice = next(&mut notices).await;
        if notice.kind() != pb::HolderEventKind::RenewDue {
            break notice;
        }
    };
    assert_eq!((forced.kind(), forced.lock_id.as_str()), (pb::HolderEventKind::ForceReleased, long.lock_id.as_str()));
    assert_eq!((forced.operator.as_str(), forced.reason.as_str()), ("bob", "test"));

    // A session that lapses: the session, then each of its locks.
    let session = open(&svc, 300, "s-1").await;
    let in_it = svc.client.clone().lock(in_session("SKU-1", "WH-A", "3", "l-1", &session)).await.unwrap();
    let in_it = in_it.into_inner().lock.unwrap();
    // (In either order: on a cluster the session and its lock live in
    // different partitions, whose streams have no common order.)
    let mut two = [next(&mut notices).await, next(&mut notices).await];
    two.sort_by_key(|n| std::cmp::Reverse(n.kind));
    let [ended, gone] = two;
    assert_eq!(
        (ended.kind(), ended.session_id.as_str()),
        (pb::HolderEventKind::SessionExpired, session.session_id.as_str())
    );
    assert_eq!((gone.kind(), gone.lock_id.as_str()), (pb::HolderEventKind::LockExpired, in_it.lock_id.as_str()));
    assert_eq!((gone.cause.as_str(), gone.session_id.as_str()), ("session_expired", session.session_id.as_str()));

    // A watch that reconnects after a notice gets the ones after it, the same.
    let mut resumed = watch_holder(&svc, &resume_from).await;
    let mut again = Vec::new();
    while again.len() < 3 {
        let notice = next(&mut resumed).await;
        if notice.kind() != pb::HolderEventKind::RenewDue {
            again.push((notice.kind(), notice.lock_id, notice.session_id));
        }
    }
    again[1..].sort_by_key(|(kind, _, _)| std::cmp::Reverse(*kind));
    assert_eq!(
        again,
        [
            (pb::HolderEventKind::ForceReleased, long.lock_id, String::new()),
            (pb::HolderEventKind::SessionExpired, String::new(), session.session_id.clone()),
            (pb::HolderEventKind::LockExpired, in_it.lock_id, session.session_id.clone()),
        ]
    );
}

/// Clients blocked in XREAD: the event tailers (the ingestion reader
/// blocks in XREADGROUP).
async fn blocked_clients(svc: &TestService) -> usize {
    let mut conn = svc.redis_conn().await;
    let list: String = redis::cmd("CLIENT").arg("LIST").query_async(&mut conn).await.unwrap();
    list.lines().filter(|l| l.contains(" flags=b ") && l.contains(" cmd=xread ")).count()
}

#[tokio::test]
async fn a_watch_whose_client_left_lets_go_of_the_event_streams() {
    let svc = start().await;
    if svc.cluster.is_some() {
        // INFO reaches one node; the standalone run covers this.
        return;
    }
    // Someone watches: the tailers read the event streams (XREAD BLOCK).
    svc.stock("SKU-1", "WH-A", "10").await;
    let notices = watch_holder(&svc, "").await;
    let keys = vec![pb::StockKey { sku: "SKU-1".into(), warehouse_id: "WH-A".into() }];
    let request = pb::WatchAvailabilityRequest { keys, after_event_id: String::new() };
    let changes = svc.client.clone().watch_availability(request).await.unwrap().into_inner();
    assert!(eventually(Duration::from_secs(5), || async { blocked_clients(&svc).await > 0 }).await);
    // The clients leave while nothing happens to what they watch: their
    // watches must end, and with the last one the tailers stop.
    // (A tailer unblocks for a moment between reads: it must stay
    // unblocked for longer than one read blocks, a second.)
    drop((notices, changes));
    let started = std::time::Instant::now();
    let mut idle_since = None;
    while idle_since.is_none_or(|since: std::time::Instant| since.elapsed() < Duration::from_millis(1500)) {
        assert!(started.elapsed() < Duration::from_secs(10), "a watch without a client still holds the tailers");
        match blocked_clients(&svc).await {
            0 => idle_since = idle_since.or(Some(std::time::Instant::now())),
            _ => idle_since = None,
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn an_index_entry_without_its_session_does_not_stop_other_sessions_ending() {
    let svc = start_with(&["--min-ttl", "100ms", "--sweep-interval", "100ms"]).await;
    svc.stock("SKU-1", "WH-A", "10").await;
    // An entry whose session hash is gone (a late CloseSession retry puts an
    // ended session back, and its hash may expire before the next sweep).
    let ghost = stocklock::domain::SessionId::parse("00000000000000aa", "session_id").unwrap();
    let index = svc.keys().sessions(svc.keys().session_home(&ghost));
    let mut conn = svc.redis_conn().await;
    let () = redis::cmd("ZADD").arg(&index).arg(0).arg(ghost.as_str()).query_async(&mut conn).await.unwrap();

    let session = open(&svc, 300, "s-1").await;
    svc.client.clone().lock(in_session("SKU-1", "WH-A", "3", "l-1", &session)).await.unwrap();
    assert!(
        eventually(Duration::from_secs(5), || async { svc.available("SKU-1", "WH-A").await == "10" }).await,
        "the session's locks were not returned"
    );
    assert!(
        eventually(Duration::from_secs(5), || {
            let (index, ghost, svc) = (index.clone(), ghost.clone(), &svc);
            async move {
                let mut conn = svc.redis_conn().await;
                let score: Option<f64> =
                    redis::cmd("ZSCORE").arg(&index).arg(ghost.as_str()).query_async(&mut conn).await.unwrap();
                score.is_none()
            }
        })
        .await,
        "the entry of a session that does not exist stays in the index"
    );
}

#[tokio::test]
async fn sessions_end_while_a_stream_of_lock_expiries_keeps_the_sweeper_busy() {
    let svc = start_with(&["--min-ttl", "100ms", "--sweep-interval", "100ms"]).await;
    svc.stock("SKU-1", "WH-A", "100000").await;
    svc.stock("SKU-2", "WH-A", "10").await;
    // Other traffic: locks that expire all the time, so every sweep round
    // finds some.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let lockers: Vec<_> = (0..8)
        .map(|k| {
            let (client, stop) = (svc.client.clone(), stop.clone());
            tokio::spawn(async move {
                let mut i = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    i += 1;
                    let mut request = lock_request("SKU-1", "WH-A", "1", &format!("t-{k}-{i}"));
                    request.ttl = millis(100);
                    let _ = client.clone().lock(request).await;
                }
            })
        })
        .collect();
    let session = open(&svc, 300, "s-1").await;
    svc.client.clone().lock(in_session("SKU-2", "WH-A", "4", "l-1", &session)).await.unwrap();
    let back = eventually(Duration::from_secs(5), || async { svc.available("SKU-2", "WH-A").await == "10" }).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for locker in lockers {
        locker.await.unwrap();
    }
    assert!(back, "the session's lock outlived it while other locks kept expiring");
}

#[tokio::test]
async fn a_close_counts_every_lock_it_ends_while_the_sweeper_runs_flat_out() {
    // The sweeper's session loop runs every millisecond: a close that made
    // its session due at once had the sweeper end part of its locks beside
    // it, and answered only its own share.
    let svc = start_with(&["--sweep-interval", "1ms"]).await;
    svc.stock("SKU-1", "WH-A", "1000").await;
    for round in 0..5 {
        let session = open(&svc, 30_000, &format!("s-{round}")).await;
        for i in 0..130 {
            let request = in_session("SKU-1", "WH-A", "1", &format!("l-{round}-{i}"), &session);
            svc.client.clone().lock(request).await.unwrap();
        }
        let closed = close(&svc, &session).await;
        assert_eq!((closed.released, closed.closed_now), (130, true), "round {round}");
        assert_eq!(svc.available("SKU-1", "WH-A").await, "1000");
    }
}
