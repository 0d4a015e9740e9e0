//! Stock changes straight from a warehouse's MariaDB: the binlog follower
//! against a real server (see `common::mariadb`), in snapshot and movement
//! mode, through restarts, kill -9, a takeover, bad rows, rotation, a schema
//! change, a dropped connection and a restart of the database.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use mysql_async::prelude::Queryable;
use stocklock::cdc::position::Position;

const STOCK_TABLE: &str = "CREATE TABLE stock (
    id INT AUTO_INCREMENT PRIMARY KEY,
    item VARCHAR(64) NOT NULL,
    warehouse_id VARCHAR(64) NOT NULL,
    on_hand DECIMAL(12,2) NOT NULL,
    reserved DECIMAL(12,2) NOT NULL DEFAULT 0,
    in_transit DECIMAL(12,2) NOT NULL DEFAULT 0,
    UNIQUE KEY (item, warehouse_id)
) ENGINE=InnoDB";

const STOCK_COLUMNS: &str = "sku=item,physical=on_hand,reserved=reserved,in_transit=in_transit";

const MOVEMENTS_TABLE: &str = "CREATE TABLE movements (
    id BIGINT PRIMARY KEY,
    sku VARCHAR(64) NOT NULL,
    warehouse_id VARCHAR(64) NOT NULL,
    quantity INT NOT NULL,
    note VARCHAR(64)
) ENGINE=InnoDB";

/// The service's follower flags for `table` of `db`, and `extra`.
fn follower_args(db: &MariaDb, table: &str, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> =
        ["--cdc-mysql-url", &db.url(), "--cdc-table", table, "--cdc-lease", "2s"].map(str::to_owned).to_vec();
    args.extend(extra.iter().map(|arg| (*arg).to_owned()));
    args
}

async fn follow(db: &MariaDb, table: &str, extra: &[&str]) -> TestService {
    let args = follower_args(db, table, extra);
    start_with(&args.iter().map(String::as_str).collect::<Vec<_>>()).await
}

async fn follow_on(redis_url: &str, db: &MariaDb, table: &str, extra: &[&str]) -> TestService {
    let args = follower_args(db, table, extra);
    serve(redis_url, &args.iter().map(String::as_str).collect::<Vec<_>>()).await
}

/// A record's (physical, reserved, in_transit), or None while it does not exist.
async fn figures(svc: &TestService, sku: &str, warehouse: &str) -> Option<(String, String, String)> {
    let response = svc
        .client
        .clone()
        .get_availability(stocklock::pb::GetAvailabilityRequest { sku: sku.into(), warehouse_id: warehouse.into() })
        .await
        .ok()?
        .into_inner();
    let record = response.records.into_iter().next()?;
    Some((record.physical, record.reserved, record.in_transit))
}

async fn physical(svc: &TestService, sku: &str, warehouse: &str) -> Option<String> {
    figures(svc, sku, warehouse).await.map(|(physical, _, _)| physical)
}

/// Waits until a record's physical stock is `expected`.
async fn wait_physical(svc: &TestService, sku: &str, warehouse: &str, expected: &str, limit: Duration) {
    let reached =
        eventually(limit, || async { physical(svc, sku, warehouse).await.as_deref() == Some(expected) }).await;
    assert!(reached, "{sku}|{warehouse}: physical {:?}, expected {expected}", physical(svc, sku, warehouse).await);
}

/// The server's current binlog position, `file:offset`.
async fn server_position(db: &MariaDb) -> String {
    let mut conn = db.root().await;
    let row: mysql_async::Row = conn.query_first("SHOW MASTER STATUS").await.unwrap().unwrap();
    let (file, offset): (String, u64) = (row.get(0).unwrap(), row.get(1).unwrap());
    conn.disconnect().await.unwrap();
    format!("{file}:{offset}")
}

/// The follower's checkpoint in Redis, `file:offset`.
async fn checkpoint(svc: &TestService, table: &str) -> Option<String> {
    let mut conn = svc.redis_conn().await;
    let saved: Option<String> =
        redis::cmd("GET").arg(format!("{{sl:binlog}}:checkpoint:shop.{table}")).query_async(&mut conn).await.unwrap();
    saved.map(|text| text.rsplit_once('@').unwrap().0.to_owned())
}

/// Waits until the follower's checkpoint reaches the server's position:
/// every change committed so far is applied.
async fn caught_up(svc: &TestService, db: &MariaDb, table: &str) {
    let target = Position::parse(&server_position(db).await).unwrap();
    let reached = eventually(Duration::from_secs(20), || async {
        checkpoint(svc, table).await.and_then(|saved| Position::parse(&saved)).is_some_and(|saved| saved >= target)
    })
    .await;
    assert!(reached, "the checkpoint {:?} did not reach {target}", checkpoint(svc, table).await);
}

/// Waits until the follower's published status satisfies `check`.
async fn status_shows(svc: &TestService, what: &str, check: impl Fn(&serde_json::Value) -> bool) {
    let shown = eventually(Duration::from_secs(30), || async { check(&binlog_stats(svc).await) }).await;
    assert!(shown, "the status did not show {what}: {}", binlog_stats(svc).await);
}

/// The follower's status in `/ingest/stats`, which matches its OpenAPI schema.
async fn binlog_stats(svc: &TestService) -> serde_json::Value {
    let (status, body, _) = http_get(svc.http_addr, "/ingest/stats", None).await;
    assert_eq!(status, 200, "{body}");
    conforms(&openapi(svc).await, "/ingest/stats", 200, &body);
    body["binlog"].clone()
}

/// The table's figures per record, as the database has them.
async fn table_figures(db: &MariaDb) -> HashMap<(String, String), (String, String, String)> {
    let mut conn = db.root().await;
    let rows: Vec<(String, String, String, String, String)> = conn
        .query("SELECT item, warehouse_id, CAST(on_hand AS CHAR), CAST(reserved AS CHAR), CAST(in_transit AS CHAR) FROM shop.stock")
        .await
        .unwrap();
    conn.disconnect().await.unwrap();
    let trim = |text: String| {
        if text.contains('.') { text.trim_end_matches('0').trim_end_matches('.').to_owned() } else { text }
    };
    rows.into_iter().map(|(sku, wh, p, r, t)| ((sku, wh), (trim(p), trim(r), trim(t)))).collect()
}

#[tokio::test]
async fn snapshot_mode_reads_the_table_then_follows_it_in_commit_order() {
    let db = MariaDb::start().await;
    db.sql(STOCK_TABLE).await;
    db.sql("INSERT INTO stock (item, warehouse_id, on_hand, reserved) VALUES ('OLD', 'W1', 7, 2)").await;
    let svc = follow(&db, "stock", &["--cdc-columns", STOCK_COLUMNS, "--cdc-unit-scale", "2"]).await;
    // What the table held before the follower started: the initial read.
    wait_physical(&svc, "OLD", "W1", "7", Duration::from_secs(10)).await;
    assert_eq!(figures(&svc, "OLD", "W1").await.unwrap().1, "2");

    db.sql("INSERT INTO stock (item, warehouse_id, on_hand) VALUES ('NEW', 'W1', 12.5)").await;
    wait_physical(&svc, "NEW", "W1", "12.5", Duration::from_secs(5)).await;

    // Order across many records: each of 40 records updated five times in
    // one transaction and again in later ones, interleaved.
    let mut statements = String::from("START TRANSACTION;");
    for round in 1..=5 {
        for i in 0..40 {
            statements.push_str(&format!(
                "INSERT INTO stock (item, warehouse_id, on_hand, in_transit) VALUES ('S{i}', 'W{}', {}, {round}) \
                 ON DUPLICATE KEY UPDATE on_hand = VALUES(on_hand), in_transit = VALUES(in_transit);",
                i % 3,
                round * 10 + i
            ));
        }
    }
    statements.push_str("COMMIT;");
    db.sql(&statements).await;
    for i in (0..40).step_by(2) {
        db.sql(&format!("UPDATE stock SET on_hand = on_hand + 1, reserved = 1 WHERE item = 'S{i}'")).await;
    }
    db.sql("UPDATE stock SET warehouse_id = 'W9' WHERE item = 'S39'").await;
    db.sql("DELETE FROM stock WHERE item = 'OLD'").await;
    caught_up(&svc, &db, "stock").await;

    let table = table_figures(&db).await;
    assert_eq!(table.len(), 41);
    for ((sku, warehouse), expected) in &table {
        assert_eq!(figures(&svc, sku, warehouse).await.as_ref(), Some(expected), "{sku}|{warehouse}");
    }
    // The deleted row and the row's old warehouse are zero.
    assert_eq!(figures(&svc, "OLD", "W1").await.unwrap().0, "0");
    assert_eq!(figures(&svc, "S39", "W0").await.unwrap().0, "0");

    // The initial row, 200 upserts (collapsed per event), 20 updates, the
    // move and the delete: at least one write per record and statement.
    status_shows(&svc, "the rows applied", |s| s["rows_applied"].as_u64() >= Some(63)).await;
    let stats = binlog_stats(&svc).await;
    assert_eq!((stats["table"].as_str(), stats["state"].as_str()), (Some("shop.stock"), Some("following")));
    assert_eq!(stats["leader"].as_str(), leader(&svc, "stock").await.as_deref(), "{stats}");
    // The metrics are the process's, shared by the tests running in it: here, only that they are served.
    let metrics = scrape(&svc).await;
    assert!(
        metrics.contains_key("stocklock_cdc_rows_applied_total") && metrics.contains_key("stocklock_cdc_lag_seconds")
    );
    assert!(dead_letters(&svc).await.is_empty());
}

#[tokio::test]
async fn movement_mode_applies_each_movement_once_across_restarts() {
    let db = MariaDb::start().await;
    db.sql(MOVEMENTS_TABLE).await;
    db.sql("INSERT INTO movements VALUES (1, 'S', 'W', 100, 'before the follower')").await;
    let columns = ["--cdc-mode", "movement", "--cdc-columns", "physical=quantity,reason=note"];
    let svc = follow(&db, "movements", &columns).await;
    let redis_url = svc.redis_url.clone();
    // A movement table is history: the follower starts at the server's
    // position when it first follows, and goes on from there.
    caught_up(&svc, &db, "movements").await;
    svc.stock("S", "W", "50").await;
    db.sql("INSERT INTO movements VALUES (2, 'S', 'W', 30, 'receipt'), (3, 'S', 'W', -5, 'shipment')").await;
    wait_physical(&svc, "S", "W", "75", Duration::from_secs(5)).await;
    caught_up(&svc, &db, "movements").await;

    // Stopped, with movements committed meanwhile: the next start resumes
    // at the checkpoint, skipping nothing and applying nothing twice.
    let mut svc = svc;
    // Its Redis outlives it.
    let redis = svc.redis.take();
    svc.stop().await.unwrap();
    db.sql("INSERT INTO movements VALUES (4, 'S', 'W', 1, NULL), (5, 'S', 'W', 2, NULL)").await;
    db.sql("DELETE FROM movements WHERE id = 1").await;
    let svc = follow_on(&redis_url, &db, "movements", &columns).await;
    wait_physical(&svc, "S", "W", "78", Duration::from_secs(10)).await;
    caught_up(&svc, &db, "movements").await;
    db.sql("INSERT INTO movements VALUES (6, 'S', 'W', 2, NULL)").await;
    caught_up(&svc, &db, "movements").await;
    assert_eq!(physical(&svc, "S", "W").await.as_deref(), Some("80"));
    drop(redis);
}

/// The service binary, following `table`: a process of its own, to kill.
fn spawn_binary(redis_url: &str, db: &MariaDb, table: &str, extra: &[&str]) -> tokio::process::Child {
    let (dir, _) = data_dir("binlog-log");
    let log = std::fs::File::create(dir.join("stocklock.log")).unwrap();
    tokio::process::Command::new(env!("CARGO_BIN_EXE_stocklock"))
        .args(["serve", "--redis-url", redis_url, "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"])
        .args(follower_args(db, table, extra))
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("the stocklock binary starts")
}

/// Who holds the follower's lease.
async fn leader(svc: &TestService, table: &str) -> Option<String> {
    let mut conn = svc.redis_conn().await;
    redis::cmd("GET").arg(format!("{{sl:binlog}}:lease:shop.{table}")).query_async(&mut conn).await.unwrap()
}

#[tokio::test]
async fn a_leader_killed_mid_transaction_is_replaced_and_nothing_is_lost_or_doubled() {
    let db = MariaDb::start().await;
    db.sql(MOVEMENTS_TABLE).await;
    let columns = ["--cdc-mode", "movement", "--cdc-columns", "physical=quantity"];
    let reader = start().await;
    reader.stock("S", "W", "0").await;
    // A, a process of its own, leads: it started first.
    let mut a = spawn_binary(&reader.redis_url, &db, "movements", &columns);
    let a_pid = a.id().unwrap();
    let a_leads = eventually(Duration::from_secs(20), || async {
        leader(&reader, "movements").await.is_some_and(|l| l.starts_with(&format!("{a_pid}-")))
    })
    .await;
    assert!(a_leads, "A did not take the lease: {:?}", leader(&reader, "movements").await);
    // A follows: its first checkpoint is saved.
    caught_up(&reader, &db, "movements").await;
    let b = follow_on(&reader.redis_url, &db, "movements", &columns).await;

    // One transaction of 20,000 movements of +1; A is killed in its middle.
    db.sql("INSERT INTO movements (id, sku, warehouse_id, quantity) SELECT seq, 'S', 'W', 1 FROM seq_1_to_20000").await;
    let applied = || async { physical(&reader, "S", "W").await.unwrap().parse::<u64>().unwrap() };
    let partial = eventually(Duration::from_secs(30), || async { applied().await > 0 }).await;
    a.start_kill().unwrap();
    a.wait().await.unwrap();
    let at_kill = applied().await;
    assert!(partial && at_kill < 20_000, "A was not killed in the middle of the transaction: {at_kill} applied");

    // B takes over when A's lease lapses, at A's last checkpoint (before
    // the transaction): the movements A applied are not applied again.
    wait_physical(&reader, "S", "W", "20000", Duration::from_secs(60)).await;
    caught_up(&reader, &db, "movements").await;
    assert_eq!(physical(&reader, "S", "W").await.as_deref(), Some("20000"));
    let b_leads =
        leader(&reader, "movements").await.is_some_and(|l| l.starts_with(&format!("{}-", std::process::id())));
    assert!(b_leads, "B does not lead: {:?}", leader(&reader, "movements").await);
    let stats = binlog_stats(&b).await;
    assert_eq!(stats["leader"].as_str(), leader(&reader, "movements").await.as_deref(), "{stats}");
}

#[tokio::test]
async fn rows_that_cannot_be_applied_are_dead_lettered_and_the_follower_goes_on() {
    let db = MariaDb::start().await;
    db.sql("CREATE TABLE counts (item VARCHAR(64) PRIMARY KEY, warehouse_id VARCHAR(64), on_hand DECIMAL(12,3), scale INT)")
        .await;
    let svc = follow(&db, "counts", &["--cdc-columns", "sku=item,physical=on_hand,unit_scale=scale"]).await;
    caught_up(&svc, &db, "counts").await;
    db.sql(
        "INSERT INTO counts VALUES ('NEG', 'W', -1, 0), ('FRACTION', 'W', 1.5, 0), ('SCALE', 'W', 1, 9), \
         ('BAD SKU', 'W', 1, 0), ('GOOD', 'W', 2.25, 2)",
    )
    .await;
    wait_physical(&svc, "GOOD", "W", "2.25", Duration::from_secs(5)).await;
    let dead = dead_letters(&svc).await;
    assert_eq!(dead.len(), 4, "{dead:?}");
    for (letter, (column, item)) in
        dead.iter().zip([("on_hand", "NEG"), ("on_hand", "FRACTION"), ("scale", "SCALE"), ("item", "BAD SKU")])
    {
        assert_eq!(letter["dead.source"], "binlog");
        assert_eq!(letter["dead.table"], "shop.counts");
        assert_eq!(letter["dead.reason"], "INVALID_ARGUMENT");
        assert!(letter["dead.position"].starts_with("binlog."), "{letter:?}");
        assert!(letter["dead.error"].contains(column), "{letter:?}");
        assert_eq!(letter["sku"], item);
    }
    // The follower went on: a later row applies.
    db.sql("UPDATE counts SET on_hand = 3 WHERE item = 'GOOD'").await;
    wait_physical(&svc, "GOOD", "W", "3", Duration::from_secs(5)).await;
    status_shows(&svc, "four dead letters", |s| s["dead_letters"] == 4).await;
    let (_, stats, _) = http_get(svc.http_addr, "/ingest/stats", None).await;
    assert_eq!(stats["dead_letters"], 4);
}

#[tokio::test]
async fn rotation_a_schema_change_a_dropped_connection_and_a_database_restart_are_followed_through() {
    let mut db = MariaDb::start().await;
    db.sql(STOCK_TABLE).await;
    let svc = follow(&db, "stock", &["--cdc-columns", STOCK_COLUMNS, "--cdc-unit-scale", "2"]).await;
    caught_up(&svc, &db, "stock").await;
    db.sql("INSERT INTO stock (item, warehouse_id, on_hand) VALUES ('S', 'W', 1)").await;
    wait_physical(&svc, "S", "W", "1", Duration::from_secs(5)).await;

    // Rotation: the server starts a new binlog file.
    db.sql("FLUSH BINARY LOGS; UPDATE stock SET on_hand = 2").await;
    wait_physical(&svc, "S", "W", "2", Duration::from_secs(5)).await;
    caught_up(&svc, &db, "stock").await;

    // A column added in front of the mapped ones and one dropped: rows are
    // read by column name.
    db.sql("ALTER TABLE stock ADD COLUMN note VARCHAR(20) FIRST, ADD COLUMN bin VARCHAR(8)").await;
    db.sql("UPDATE stock SET on_hand = 3, note = 'counted'").await;
    wait_physical(&svc, "S", "W", "3", Duration::from_secs(5)).await;
    db.sql("ALTER TABLE stock DROP COLUMN bin; UPDATE stock SET on_hand = 4").await;
    wait_physical(&svc, "S", "W", "4", Duration::from_secs(5)).await;

    // The follower's connection dropped by the server.
    let mut root = db.root().await;
    let dumps: Vec<u64> =
        root.query("SELECT ID FROM information_schema.PROCESSLIST WHERE COMMAND = 'Binlog Dump'").await.unwrap();
    assert_eq!(dumps.len(), 1, "one follower reads the binlog");
    root.query_drop(format!("KILL {}", dumps[0])).await.unwrap();
    root.disconnect().await.unwrap();
    db.sql("UPDATE stock SET on_hand = 5").await;
    wait_physical(&svc, "S", "W", "5", Duration::from_secs(10)).await;

    // The database restarted: a new binlog file, and the follower back.
    db.stop().await;
    db.restart().await;
    db.sql("UPDATE stock SET on_hand = 6, reserved = 1").await;
    wait_physical(&svc, "S", "W", "6", Duration::from_secs(30)).await;
    caught_up(&svc, &db, "stock").await;
    assert_eq!(figures(&svc, "S", "W").await.unwrap(), ("6".into(), "1".into(), "0".into()));
    assert!(dead_letters(&svc).await.is_empty());

    // A server that goes silent without closing the connection (frozen, as
    // behind a network that dropped it): taken for dead within five
    // heartbeats, and followed again once it answers.
    db.freeze();
    status_shows(&svc, "a silent stream", |s| s["state"].as_str().is_some_and(|state| state.contains("silent"))).await;
    db.thaw();
    db.sql("UPDATE stock SET on_hand = 7").await;
    wait_physical(&svc, "S", "W", "7", Duration::from_secs(30)).await;
}

#[tokio::test]
async fn a_table_or_setting_the_follower_cannot_use_stops_the_service_with_exit_code_2() {
    let db = MariaDb::start().await;
    db.sql(STOCK_TABLE).await;
    let redis = stocklock::embedded_redis::EmbeddedRedis::start(std::path::Path::new("redis-server")).await.unwrap();
    let run = |extra: Vec<String>| {
        let mut args = vec!["--cdc-mysql-url".to_owned(), db.url()];
        args.extend(extra);
        let config = config(&redis.url(), &args.iter().map(String::as_str).collect::<Vec<_>>());
        async move {
            let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let ended = stocklock::server::run(config, listeners(grpc).await, async {}).await;
            match ended {
                Err(stocklock::server::RunError::Config(message)) => message,
                other => panic!("the service started: {other:?}"),
            }
        }
    };
    let missing_column = run(vec!["--cdc-columns".into(), "sku=item,physical=qty".into()]).await;
    assert!(missing_column.contains("physical=qty") && missing_column.contains("on_hand"), "{missing_column}");
    let float = {
        db.sql("CREATE TABLE floats (sku VARCHAR(9), warehouse_id VARCHAR(9), physical DOUBLE)").await;
        run(vec!["--cdc-table".into(), "floats".into()]).await
    };
    assert!(float.contains("must be exact"), "{float}");
    db.sql("SET GLOBAL binlog_format = 'STATEMENT'").await;
    let statement = run(vec!["--cdc-columns".into(), STOCK_COLUMNS.into()]).await;
    assert!(statement.contains("binlog_format is STATEMENT, not ROW"), "{statement}");
    db.sql("SET GLOBAL binlog_format = 'ROW'; SET GLOBAL log_bin_compress = ON").await;
    let compressed = run(vec!["--cdc-columns".into(), STOCK_COLUMNS.into()]).await;
    assert!(compressed.contains("log_bin_compress is ON"), "{compressed}");
    db.sql("SET GLOBAL log_bin_compress = OFF").await;

    // The binary: exit code 2 and the reason.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_stocklock"))
        .args(["serve", "--redis-url", &redis.url(), "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"])
        .args(["--cdc-mysql-url", &db.url(), "--cdc-table", "nowhere"])
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("table shop.nowhere does not exist"), "{stderr}");
}

#[tokio::test]
async fn a_checkpoint_in_a_purged_binlog_file_is_reported_never_skipped() {
    let db = MariaDb::start().await;
    db.sql(MOVEMENTS_TABLE).await;
    let columns = ["--cdc-mode", "movement", "--cdc-columns", "physical=quantity"];
    let mut svc = follow(&db, "movements", &columns).await;
    caught_up(&svc, &db, "movements").await;
    let saved = checkpoint(&svc, "movements").await.unwrap();
    let redis = svc.redis.take();
    svc.stop().await.unwrap();
    // While it is stopped, a movement, and the file it is in purged.
    db.sql("INSERT INTO movements VALUES (1, 'S', 'W', 5, NULL); FLUSH BINARY LOGS").await;
    let current = server_position(&db).await;
    let current_file = current.split(':').next().unwrap();
    // The server purges a file only once nothing uses it (its dump
    // thread gone, InnoDB's binlog checkpoint past it): until then, again.
    let first_file = saved.split(':').next().unwrap().to_owned();
    let purged = eventually(Duration::from_secs(20), || async {
        let mut root = db.root().await;
        root.query_drop(format!("PURGE BINARY LOGS TO '{current_file}'")).await.unwrap();
        let files: Vec<mysql_async::Row> = root.query("SHOW BINARY LOGS").await.unwrap();
        root.disconnect().await.unwrap();
        files.iter().all(|row| row.get::<String, _>(0).unwrap() != first_file)
    })
    .await;
    assert!(purged, "{first_file} was not purged");

    let svc = follow_on(&redis.as_ref().unwrap().url(), &db, "movements", &columns).await;
    let stats = || async { binlog_stats(&svc).await["state"].as_str().unwrap_or_default().to_owned() };
    let reported = eventually(Duration::from_secs(10), || async { stats().await.contains("was purged") }).await;
    assert!(reported, "state: {}", stats().await);
    assert_eq!(checkpoint(&svc, "movements").await.as_deref(), Some(saved.as_str()), "the checkpoint moved");

    // A binlog that started over, its positions below the checkpoint's.
    db.sql("RESET MASTER").await;
    let reported = eventually(Duration::from_secs(40), || async { stats().await.contains("started over") }).await;
    assert!(reported, "state: {}", stats().await);
    assert_eq!(checkpoint(&svc, "movements").await.as_deref(), Some(saved.as_str()), "the checkpoint moved");
}
