//! Metrics after a scripted mix of calls. Metrics are process-wide, so this
//! file holds one test: no other test's calls can move the counters it reads.

mod common;

use std::time::Duration;

use common::*;

fn delta(
    before: &std::collections::HashMap<String, f64>,
    after: &std::collections::HashMap<String, f64>,
    key: &str,
) -> f64 {
    after.get(key).copied().unwrap_or(0.0) - before.get(key).copied().unwrap_or(0.0)
}

#[tokio::test]
async fn counters_and_histograms_move_with_the_calls() {
    let svc = start_with(&["--metrics-refresh", "100ms"]).await;
    svc.stock("S", "WH-MIX", "3").await;
    let before = scrape(&svc).await;
    for i in 0..3 {
        svc.lock("S", "WH-MIX", "1", &format!("r{i}")).await.unwrap();
    }
    svc.lock("S", "WH-MIX", "1", "short").await.unwrap_err();
    svc.lock("S", "WH-MIX", "-1", "bad").await.unwrap_err();
    let after = scrape(&svc).await;

    let outcome = |reason: &str| format!("stocklock_lock_outcomes_total{{warehouse=\"WH-MIX\",reason=\"{reason}\"}}");
    assert_eq!(delta(&before, &after, &outcome("OK")), 3.0);
    assert_eq!(delta(&before, &after, &outcome("INSUFFICIENT_STOCK")), 1.0);
    let rpc = |code: &str| {
        format!("stocklock_rpc_duration_seconds_count{{method=\"InventoryService/Lock\",code=\"{code}\"}}")
    };
    assert_eq!(delta(&before, &after, &rpc("Ok")), 3.0);
    assert_eq!(delta(&before, &after, &rpc("FailedPrecondition")), 1.0);
    assert_eq!(delta(&before, &after, &rpc("InvalidArgument")), 1.0);
    // Sub-millisecond buckets exist and are cumulative.
    let fine = "stocklock_rpc_duration_seconds_bucket{le=\"0.0005\",method=\"InventoryService/Lock\",code=\"Ok\"}";
    assert!(after.contains_key(fine), "no 500 us bucket");
    assert!(delta(&before, &after, "stocklock_redis_duration_seconds_count{op=\"lock\"}") >= 4.0);
    assert!(
        eventually(Duration::from_secs(3), || async { scrape(&svc).await.get("stocklock_live_locks") == Some(&3.0) })
            .await
    );

    // A scraper that asks for OpenMetrics gets it, labelled as such; others
    // get the classic content type. Both name the build.
    let scrape_as = |accept: &'static str| {
        let url = format!("http://{}/metrics", svc.http_addr);
        async move {
            let response = reqwest::Client::new().get(url).header("accept", accept).send().await.unwrap();
            let content_type = response.headers()["content-type"].to_str().unwrap().to_owned();
            (content_type, response.text().await.unwrap())
        }
    };
    let prometheus = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
    let (content_type, body) = scrape_as(prometheus).await;
    assert_eq!(content_type, "application/openmetrics-text; version=1.0.0; charset=utf-8");
    assert!(body.ends_with("# EOF\n"), "{body}");
    let build = format!("stocklock_build_info{{version=\"{}\",revision=", env!("CARGO_PKG_VERSION"));
    assert!(body.contains(&build), "{body}");
    let (content_type, body) = scrape_as("text/plain").await;
    assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
    // Only types the classic format knows, or its parsers drop the scrape.
    for line in body.lines().filter(|l| l.starts_with("# TYPE ")) {
        let kind = line.rsplit(' ').next().unwrap();
        assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
    }
}
