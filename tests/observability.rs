//! Hourly lock health with its heatmap, and the health rule on a seeded
//! bad history.

mod common;

use std::time::Duration;

use common::*;
use stocklock::pb;

async fn seed(svc: &TestService, hours_ago: i64, warehouse: &str, ok: u64, failed: u64) {
    let mut conn = svc.redis_conn().await;
    let key = format!("sl:{{lockhealth}}:{}", hour_start(hours_ago));
    let _: () = redis::cmd("HSET")
        .arg(&key)
        .arg(format!("{warehouse}|OK"))
        .arg(ok)
        .arg(format!("{warehouse}|STORE_UNAVAILABLE"))
        .arg(failed)
        .arg(format!("{warehouse}|INSUFFICIENT_STOCK"))
        .arg(7)
        .query_async(&mut conn)
        .await
        .unwrap();
}

#[tokio::test]
async fn lock_health_and_its_heatmap_from_a_seeded_history() {
    let svc = start().await;
    seed(&svc, 3, "WH-A", 10_000, 0).await;
    seed(&svc, 2, "WH-A", 9_996, 4).await;
    seed(&svc, 1, "WH-A", 9_000, 100).await;
    seed(&svc, 2, "WH-B", 500, 0).await;
    // Live traffic counts too, in the current hour.
    svc.stock("S", "WH-B", "10").await;
    svc.lock("S", "WH-B", "1", "r1").await.unwrap();
    // Counts reach Redis in the next flush (about a second): wait for it.
    let flushed = eventually(Duration::from_secs(5), || async {
        let mut conn = svc.redis_conn().await;
        let ok: Option<u64> = redis::cmd("HGET")
            .arg(format!("sl:{{lockhealth}}:{}", hour_start(0)))
            .arg("WH-B|OK")
            .query_async(&mut conn)
            .await
            .unwrap();
        ok == Some(1)
    })
    .await;
    assert!(flushed, "the live lock's outcome was never flushed");

    let mut admin = svc.admin().await;
    let since = pbjson_types::Timestamp { seconds: hour_start(3) / 1000, nanos: 0 };
    let response = admin
        .lock_health(pb::LockHealthRequest { since: Some(since), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.target, 0.9995);
    let cell = |warehouse: &str, hours_ago: i64| {
        response
            .cells
            .iter()
            .find(|c| c.warehouse_id == warehouse && c.hour.unwrap().seconds * 1000 == hour_start(hours_ago))
            .unwrap_or_else(|| panic!("no cell for {warehouse} {hours_ago} h ago: {:?}", response.cells))
            .clone()
    };
    let bad = cell("WH-A", 1);
    assert_eq!((bad.attempts, bad.locked, bad.failures, bad.below_target), (9_107, 9_000, 100, true));
    assert!((bad.success_rate - (1.0 - 100.0 / 9_107.0)).abs() < 1e-9);
    // 4 of 10,007 failed: 99.96%, just over the target.
    assert!(!cell("WH-A", 2).below_target);
    assert!(!cell("WH-A", 3).below_target);
    assert_eq!(cell("WH-B", 0).by_reason["OK"], 1);

    // The operator's heatmap: terminal and SVG.
    let svg = std::env::temp_dir().join(format!("stocklock-heatmap-{}.svg", svc.addr.port()));
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_stocklock"))
        .args([
            "admin",
            "--addr",
            &format!("http://{}", svc.addr),
            "lock-health",
            "--since",
            "4h",
            "--svg",
            svg.to_str().unwrap(),
        ])
        .output()
        .await
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let text = String::from_utf8(output.stdout).unwrap();
    let row = text.lines().find(|l| l.starts_with("WH-A")).unwrap();
    assert!(row.contains("####XX"), "{text}");
    let drawn = std::fs::read_to_string(&svg).unwrap();
    assert!(drawn.starts_with("<svg") && drawn.contains("#c62828"), "{drawn}");
    std::fs::remove_file(svg).ok();
}

#[tokio::test]
async fn the_health_rule_fires_on_two_bad_hours_in_a_row() {
    let svc = start_with(&["--metrics-refresh", "100ms"]).await;
    seed(&svc, 2, "WH-RULE-BAD", 990, 10).await;
    seed(&svc, 1, "WH-RULE-BAD", 980, 20).await;
    seed(&svc, 2, "WH-RULE-OK", 990, 10).await;
    seed(&svc, 1, "WH-RULE-OK", 1000, 0).await;
    let unhealthy = |warehouse: &str| format!("stocklock_warehouse_unhealthy{{warehouse=\"{warehouse}\"}}");
    assert!(
        eventually(Duration::from_secs(3), || async {
            scrape(&svc).await.get(&unhealthy("WH-RULE-BAD")) == Some(&1.0)
        })
        .await,
        "the rule did not fire"
    );
    let metrics = scrape(&svc).await;
    assert_ne!(metrics.get(&unhealthy("WH-RULE-OK")), Some(&1.0));
}
