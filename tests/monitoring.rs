//! The dashboard and the alert rules use only metric names the service
//! really exports: every family is made to report (a lock, a Redis timeout,
//! a forced unlock, a seeded bad hour...) and the names are checked against
//! a real scrape. Metrics are process-wide, so this file holds one test.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use stocklock::pb;

/// Every `stocklock_*` identifier in a text, without recording-rule names.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("stocklock_") {
        let start = i + at;
        let before_ok = start == 0
            || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_' || bytes[start - 1] == b':');
        let end = start
            + text[start..].find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(text.len() - start);
        if before_ok {
            names.insert(text[start..end].to_owned());
        }
        i = end;
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboards_and_alerts_use_only_exported_metrics() {
    let svc = start_with(&["--metrics-refresh", "100ms", "--store-timeout", "100ms", "--query-rate-limit", "1"]).await;
    svc.stock("S", "W", "10").await;
    let lock = svc.lock("S", "W", "1", "r1").await.unwrap().lock.unwrap();
    force_unlock(&svc, pb::lock_selector::Target::LockId(lock.lock_id)).await;
    for _ in 0..3 {
        let _ = http_get(svc.http_addr, "/stock/available?sku=S", None).await;
    }
    let mut conn = svc.redis_conn().await;
    for hours_ago in [1, 2] {
        let _: () = redis::cmd("HSET")
            .arg(format!("sl:{{lockhealth}}:{}", hour_start(hours_ago)))
            .arg("W|OK")
            .arg(90)
            .arg("W|STORE_UNAVAILABLE")
            .arg(10)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    // A Redis timeout, for the error counter.
    let pid = svc.redis.as_ref().unwrap().pid().unwrap();
    std::process::Command::new("kill").args(["-STOP", &pid.to_string()]).status().unwrap();
    let _ = svc.lock("S", "W", "1", "r2").await;
    std::process::Command::new("kill").args(["-CONT", &pid.to_string()]).status().unwrap();

    let scrape = || async {
        let (_, body, _) = http_get(svc.http_addr, "/metrics", None).await;
        body.as_str().unwrap().to_owned()
    };
    let mut exported = BTreeSet::new();
    let mut missing = BTreeSet::new();
    let used: BTreeSet<String> = [
        std::fs::read_to_string("monitoring/grafana-dashboard.json").unwrap(),
        std::fs::read_to_string("monitoring/alerts.yaml").unwrap(),
    ]
    .iter()
    .flat_map(|text| metric_names(text))
    .collect();
    assert!(used.len() >= 10, "{used:?}");
    for _ in 0..50 {
        let text = scrape().await;
        exported = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split(['{', ' ']).next())
            .map(str::to_owned)
            .collect();
        // A histogram's base name (in prose, say) stands for its series.
        missing = used
            .iter()
            .filter(|name| !exported.contains(*name) && !exported.contains(&format!("{name}_bucket")))
            .cloned()
            .collect();
        if missing.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(missing.is_empty(), "used but not exported: {missing:?}\nexported: {exported:?}");
}

/// Every alert links a runbook, and every link lands on a heading of
/// docs/runbooks.md (GitHub's anchors: the heading in lower case, spaces as
/// dashes, other punctuation dropped).
#[test]
fn every_alert_has_a_runbook_section() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let rules = std::fs::read_to_string(root.join("monitoring/alerts.yaml")).unwrap();
    let runbooks = std::fs::read_to_string(root.join("docs/runbooks.md")).unwrap();
    let anchors: BTreeSet<String> = runbooks
        .lines()
        .filter_map(|line| line.strip_prefix("## "))
        .map(|heading| {
            heading
                .to_lowercase()
                .chars()
                .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
                .map(|c| if c == ' ' { '-' } else { c })
                .collect()
        })
        .collect();
    let alerts = rules.matches("- alert: ").count();
    let links: Vec<&str> = rules
        .lines()
        .filter_map(|line| line.trim().strip_prefix("runbook_url: \""))
        .map(|url| url.trim_end_matches('"'))
        .collect();
    assert_eq!(links.len(), alerts, "an alert without a runbook_url");
    for link in links {
        let (page, anchor) = link.split_once('#').unwrap();
        assert!(page.ends_with("/docs/runbooks.md"), "{link}");
        assert!(anchors.contains(anchor), "{link}: no such heading in docs/runbooks.md");
    }
}
