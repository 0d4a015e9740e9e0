//! The service's metrics, and the hours of lock health.

use super::*;

/// Scrapes /metrics into `name{labels}` -> value.
pub async fn scrape(svc: &TestService) -> std::collections::HashMap<String, f64> {
    let (status, body, _) = http_get(svc.http_addr, "/metrics", None).await;
    assert_eq!(status, 200);
    let text = body.as_str().expect("metrics are text").to_owned();
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.rsplit_once(' ').map(|(k, v)| (k.to_owned(), v.parse().unwrap_or(f64::NAN))))
        .collect()
}

/// Start (ms since the epoch) of the hour `hours_ago` hours before this one.
pub fn hour_start(hours_ago: i64) -> i64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    now - now.rem_euclid(3_600_000) - hours_ago * 3_600_000
}

/// Waits (up to 5 s: the service flushes its counts about once a second)
/// until Redis's hourly lock-health counts of this hour and the one before
/// hold each of `expected` ("warehouse|reason", count); whether they did.
pub async fn hourly_counts_reach(svc: &TestService, expected: &[(&str, u64)]) -> bool {
    eventually(Duration::from_secs(5), || async {
        let mut conn = svc.redis_conn().await;
        let mut counts = std::collections::HashMap::<String, u64>::new();
        for hours_ago in [0, 1] {
            let key = format!("sl:{{lockhealth}}:{}", hour_start(hours_ago));
            let hour: std::collections::HashMap<String, u64> =
                redis::cmd("HGETALL").arg(key).query_async(&mut conn).await.unwrap();
            for (field, n) in hour {
                *counts.entry(field).or_default() += n;
            }
        }
        expected.iter().all(|(field, n)| counts.get(*field) == Some(n))
    })
    .await
}
