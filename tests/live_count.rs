//! The count of live locks a record keeps beside `locked` is checked by the
//! invariant auditor and mended by a repair, like `locked` itself. Its own
//! file: the auditor's gauges are the process's, and this test breaks them.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use stocklock::pb;

fn locked_drift(metrics: &HashMap<String, f64>) -> f64 {
    metrics.get("stocklock_invariant_violations{kind=\"locked_drift\"}").copied().unwrap_or(-1.0)
}

#[tokio::test]
async fn a_drifted_live_count_is_reported_and_repaired() {
    let svc = start_with(&["--invariant-check-interval", "100ms"]).await;
    svc.stock("COUNT", "WH-A", "10").await;
    for i in 0..3 {
        svc.lock("COUNT", "WH-A", "1", &format!("c{i}")).await.unwrap();
    }
    // Behind the service's back: the record claims five more live locks.
    let mut conn = svc.redis_conn().await;
    let _: i64 = redis::cmd("HINCRBY")
        .arg(svc.stock_key("COUNT", "WH-A"))
        .arg("live")
        .arg(5)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(svc.record("COUNT", "WH-A").await.live_locks, 8);

    let found = eventually(Duration::from_secs(5), || async { locked_drift(&scrape(&svc).await) == 1.0 }).await;
    assert!(found, "the auditor reports the count: {}", locked_drift(&scrape(&svc).await));

    let request = pb::RepairRecordRequest {
        sku: "COUNT".into(),
        warehouse_id: "WH-A".into(),
        reason: "INC-7: live count drift".into(),
        request_id: "fix-count".into(),
        operator: "alice".into(),
    };
    let mended = svc.admin().await.repair_record(request).await.unwrap().into_inner();
    assert_eq!(mended.record.unwrap().live_locks, 3);
    assert!(eventually(Duration::from_secs(5), || async { locked_drift(&scrape(&svc).await) == 0.0 }).await);
}
