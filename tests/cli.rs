//! `stocklock admin` driven end to end: its output and its exit codes.

mod common;

use common::*;
use serde_json::Value;

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

async fn admin(svc: &TestService, token: Option<&str>, args: &[&str]) -> Run {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_stocklock"));
    command.arg("admin").args(args).env("STOCKLOCK_ADDR", format!("http://{}", svc.addr)).env_remove("STOCKLOCK_TOKEN");
    if let Some(token) = token {
        command.env("STOCKLOCK_TOKEN", token);
    }
    let output = command.output().await.unwrap();
    Run {
        code: output.status.code().unwrap(),
        stdout: String::from_utf8(output.stdout).unwrap(),
        stderr: String::from_utf8(output.stderr).unwrap(),
    }
}

const ALICE: Option<&str> = Some("alice-token-0123456789");
const BOB: Option<&str> = Some("bob-token-0123456789");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_finds_a_stale_lock_and_gets_it_released_with_approval() {
    let svc = start_authed(&["--stale-threshold", "200ms"]).await;
    let mut root = svc.inventory_as(Some("root-token-0123456789")).await;
    stock_as_root(&mut root, "SKU-1", "WH-A", "10").await;
    let mut checkout = svc.inventory_as(Some("checkout-token-0123456789")).await;
    let lock = checkout.lock(lock_request("SKU-1", "WH-A", "4", "r1")).await.unwrap().into_inner().lock.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;

    // Find it.
    let stats = admin(&svc, ALICE, &["lock-stats"]).await;
    assert_eq!(stats.code, 0, "{}", stats.stderr);
    assert!(stats.stdout.starts_with("LIVE  STALE"), "{}", stats.stdout);
    let stale = admin(&svc, ALICE, &["locks", "--stale", "--json"]).await;
    assert_eq!(stale.code, 0, "{}", stale.stderr);
    let rows: Vec<Value> = serde_json::from_str(&stale.stdout).unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["lock_id"], lock.lock_id.as_str());
    assert_eq!(rows[0]["holder"], "checkout");
    let table = admin(&svc, ALICE, &["locks", "--holder", "checkout"]).await;
    assert!(table.stdout.lines().next().unwrap().starts_with("LOCK_ID"), "{}", table.stdout);
    assert!(table.stdout.contains(&lock.lock_id));

    // Request, try to self-approve, get a colleague's approval.
    let requested =
        admin(&svc, ALICE, &["unlock", "request", "--stale", "--reason", "order service crashed", "--json"]).await;
    assert_eq!(requested.code, 0, "{}", requested.stderr);
    let rows: Value = serde_json::from_str(&requested.stdout).unwrap();
    let id = rows["id"].as_str().unwrap().to_owned();
    assert_eq!(rows["state"], "FORCE_UNLOCK_STATE_PENDING", "the protobuf JSON mapping, as over HTTP");
    let own = admin(&svc, ALICE, &["unlock", "approve", &id]).await;
    assert_eq!(own.code, 1);
    assert!(own.stderr.contains("TWO_PERSON_RULE") && own.stderr.contains("hint: a colleague"), "{}", own.stderr);
    let approved = admin(&svc, BOB, &["unlock", "approve", &id, "--comment", "confirmed"]).await;
    assert_eq!(approved.code, 0, "{}", approved.stderr);
    assert!(approved.stdout.contains("executed"), "{}", approved.stdout);
    let again = admin(&svc, BOB, &["unlock", "approve", &id]).await;
    assert_eq!(again.code, 1, "{}", again.stderr);

    // The audit entry shows it.
    let audit = admin(&svc, ALICE, &["audit", "--action", "force_unlock.approved", "--json"]).await;
    assert_eq!(audit.code, 0, "{}", audit.stderr);
    let events: Vec<Value> = serde_json::from_str(&audit.stdout).unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["actor"], "bob");
    assert_eq!(events[0]["lock_ids"], serde_json::json!([lock.lock_id]));
    let listed = admin(&svc, ALICE, &["unlock", "list", "--state", "executed"]).await;
    assert!(listed.stdout.contains(&id), "{}", listed.stdout);
    let available = admin(&svc, ALICE, &["availability", "SKU-1"]).await;
    assert!(available.stdout.contains("total available: 10"), "{}", available.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes_tell_scripts_what_went_wrong() {
    let svc = start_authed(&[]).await;
    let denied = admin(&svc, Some("wrong-token-0123456789"), &["locks"]).await;
    assert_eq!(denied.code, 4, "{}", denied.stderr);
    assert!(denied.stderr.contains("hint: pass --token"), "{}", denied.stderr);
    let role = admin(&svc, Some("transfer-token-0123456789"), &["locks"]).await;
    assert_eq!(role.code, 4, "{}", role.stderr);
    assert!(role.stderr.contains("ROLE_NOT_ALLOWED"), "{}", role.stderr);
    let missing = admin(&svc, ALICE, &["unlock", "approve", "fu-0000000000000000"]).await;
    assert_eq!(missing.code, 3, "{}", missing.stderr);
    let usage = admin(&svc, ALICE, &["unlock", "request", "--reason", "x"]).await;
    assert_eq!(usage.code, 2, "{}", usage.stderr);
    let nothing = admin(&svc, ALICE, &["unlock", "request", "--order", "none", "--reason", "x"]).await;
    assert_eq!(nothing.code, 1, "{}", nothing.stderr);
    assert!(nothing.stderr.contains("NO_LOCKS_MATCHED"), "{}", nothing.stderr);

    let port = svc.addr.port();
    svc.stop().await.unwrap();
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_stocklock"))
        .args(["admin", "--addr", &format!("http://127.0.0.1:{port}"), "locks"])
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(5), "{}", String::from_utf8_lossy(&output.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_lock_the_audit_stream_and_the_timeout() {
    // Redis calls may take 5 s here, so that only --timeout can end the last call early.
    let svc = start_with(&["--store-timeout", "5s"]).await;
    svc.stock("SKU-G", "WH-A", "5").await;
    let lock = svc.lock("SKU-G", "WH-A", "2", "g1").await.unwrap().lock.unwrap();

    // A live lock, as the API's JSON mapping writes it (u64 as a string).
    let live = admin(&svc, None, &["get-lock", &lock.lock_id, "--json"]).await;
    assert_eq!(live.code, 0, "{}", live.stderr);
    let json: Value = serde_json::from_str(&live.stdout).unwrap();
    assert_eq!((json["lock_id"].as_str(), json["quantity"].as_str()), (Some(lock.lock_id.as_str()), Some("2")));
    assert_eq!(json["fencing_token"], lock.fencing_token.to_string());
    assert_eq!(json["state"], "LOCK_STATE_ACTIVE");
    // An ended one: not found, and how it ended.
    svc.release(&lock.lock_id, "rel").await.unwrap();
    let ended = admin(&svc, None, &["get-lock", &lock.lock_id]).await;
    assert_eq!(ended.code, 3, "{}", ended.stderr);
    assert!(ended.stderr.contains("LOCK_NOT_FOUND"), "{}", ended.stderr);

    // `audit --follow --json` is a stream of events, one JSON object a line.
    let mut follow = tokio::process::Command::new(env!("CARGO_BIN_EXE_stocklock"))
        .args(["admin", "audit", "--follow", "--json"])
        .env("STOCKLOCK_ADDR", format!("http://{}", svc.addr))
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(follow.stdout.take().unwrap()));
    let ten_seconds = std::time::Duration::from_secs(10);
    let line = tokio::time::timeout(ten_seconds, lines.next_line()).await.unwrap().unwrap().unwrap();
    let first: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(first["action"], "stock.set", "{first}");
    svc.stock("SKU-G", "WH-A", "7").await;
    let line = tokio::time::timeout(ten_seconds, lines.next_line()).await.unwrap().unwrap().unwrap();
    let next: Value = serde_json::from_str(&line).unwrap();
    assert_eq!((next["action"].as_str(), next["sku"].as_str()), (Some("stock.set"), Some("SKU-G")), "{next}");
    follow.kill().await.unwrap();

    // A change the ingestion could not apply, as the operator sees it.
    xadd(&svc, "sl:ingest", &[("type", "teleport"), ("sku", "SKU-G"), ("warehouse_id", "WH-A")]).await;
    let dead = eventually(std::time::Duration::from_secs(5), || async {
        admin(&svc, None, &["dead-letters", "--json"]).await.stdout.contains("teleport")
    })
    .await;
    assert!(dead, "the dead letter never showed");
    let letters: Value = serde_json::from_str(&admin(&svc, None, &["dead-letters", "--json"]).await.stdout).unwrap();
    assert_eq!(
        (letters[0]["reason"].as_str(), letters[0]["fields"]["type"].as_str()),
        (Some("INVALID_ARGUMENT"), Some("teleport"))
    );
    let table = admin(&svc, None, &["dead-letters"]).await;
    assert!(table.stdout.starts_with("AT") && table.stdout.contains("type=teleport"), "{}", table.stdout);

    // A service that does not answer: the command gives up after --timeout.
    let pid = svc.redis.as_ref().unwrap().pid().unwrap();
    signal(pid, "-STOP");
    let started = std::time::Instant::now();
    let slow = admin(&svc, None, &["--timeout", "300ms", "get-lock", "SKU-G|WH-A|1-ab"]).await;
    signal(pid, "-CONT");
    assert_eq!(slow.code, 5, "{}", slow.stderr);
    assert!(started.elapsed() < std::time::Duration::from_secs(3), "gave up after {:?}", started.elapsed());
    assert!(slow.stderr.contains("hint: no answer within --timeout"), "{}", slow.stderr);
}

#[test]
fn completions_and_the_man_page_are_generated() {
    let run = |args: &[&str]| std::process::Command::new(env!("CARGO_BIN_EXE_stocklock")).args(args).output().unwrap();
    let bash = run(&["completions", "bash"]);
    assert!(bash.status.success());
    assert!(String::from_utf8_lossy(&bash.stdout).contains("get-lock"), "the admin commands complete");
    let man = run(&["man"]);
    assert!(man.status.success());
    assert!(String::from_utf8_lossy(&man.stdout).starts_with(".ie"), "a roff page");
}
