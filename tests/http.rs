//! The HTTP API for the transfer system, checked against its own OpenAPI
//! description.

mod common;

use common::*;
use serde_json::{Value, json};

/// Checks a request body against the document's request schema of `path`.
fn request_conforms(doc: &Value, path: &str, body: &Value) {
    let mut schema = doc["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"].clone();
    schema["components"] = doc["components"].clone();
    if let Err(e) = jsonschema::validate(&schema, body) {
        panic!("the request to {path} does not match its OpenAPI schema: {e}\n{body:#}");
    }
}

#[tokio::test]
async fn availability_queries_match_the_openapi_description() {
    let svc = start().await;
    let doc = openapi(&svc).await;
    svc.stock("S", "A", "10").await;
    svc.stock("S", "B", "5").await;
    svc.stock_scaled("T", "A", "2.5", 1).await;
    svc.lock("S", "B", "2", "r1").await.unwrap();

    let (status, body, _) = http_get(svc.http_addr, "/stock/available?sku=S&warehouse=B", None).await;
    assert_eq!(status, 200);
    conforms(&doc, "/stock/available", 200, &body);
    assert_eq!(body["results"][0]["records"][0]["available"], "3");

    let (status, body, _) = http_get(svc.http_addr, "/stock/available?sku=S", None).await;
    conforms(&doc, "/stock/available", status, &body);
    let warehouses: Vec<&str> =
        body["results"][0]["records"].as_array().unwrap().iter().map(|r| r["warehouse_id"].as_str().unwrap()).collect();
    assert_eq!(warehouses, ["A", "B"]);
    assert_eq!(body["results"][0]["total_available"], "13");

    let (status, body, _) = http_get(svc.http_addr, "/stock/available?sku=S&sku=T&sku=NOPE&warehouse=A", None).await;
    assert_eq!(status, 200);
    conforms(&doc, "/stock/available", 200, &body);
    let totals: Vec<&str> =
        body["results"].as_array().unwrap().iter().map(|r| r["total_available"].as_str().unwrap()).collect();
    assert_eq!(totals, ["10", "2.5", "0"]);
    assert_eq!(body["missing"], serde_json::json!([{ "sku": "NOPE", "warehouse_id": "A" }]));

    for path in ["/healthz", "/readyz"] {
        let (status, body, _) = http_get(svc.http_addr, path, None).await;
        assert_eq!(status, 200, "{path}");
        conforms(&doc, path, 200, &body);
    }
    let (status, body, _) = http_get(svc.http_addr, "/ingest/stats", None).await;
    conforms(&doc, "/ingest/stats", status, &body);
}

#[tokio::test]
async fn bad_queries_get_the_grpc_reasons_with_http_codes() {
    let svc = start().await;
    let doc = openapi(&svc).await;
    svc.stock("S", "A", "10").await;
    let cases = [
        ("/stock/available", 400, "INVALID_ARGUMENT", Some("sku")),
        ("/stock/available?sku=", 400, "INVALID_ARGUMENT", Some("sku")),
        ("/stock/available?sku=a%7Bb", 400, "INVALID_ARGUMENT", Some("sku")),
        ("/stock/available?sku=S&color=red", 400, "INVALID_ARGUMENT", Some("color")),
        ("/stock/available?sku=S&warehouse=A&warehouse=B", 400, "INVALID_ARGUMENT", Some("warehouse")),
        ("/stock/available?sku=S&warehouse=Z", 404, "SKU_NOT_AVAILABLE_IN_WAREHOUSE", None),
    ];
    for (path, want_status, want_reason, want_field) in cases {
        let (status, body, _) = http_get(svc.http_addr, path, None).await;
        assert_eq!(status, want_status, "{path}: {body}");
        conforms(&doc, "/stock/available", status, &body);
        assert_eq!(body["error"]["reason"], want_reason, "{path}");
        assert_eq!(body["error"]["field"].as_str(), want_field, "{path}");
    }
}

#[tokio::test]
async fn tokens_roles_and_rate_limits_apply_over_http() {
    let svc = start_authed(&["--query-rate-limit", "5"]).await;
    let doc = openapi(&svc).await;
    let (status, body, _) = http_get(svc.http_addr, "/stock/available?sku=S", None).await;
    assert_eq!((status, body["error"]["reason"].as_str()), (401, Some("UNAUTHENTICATED")));
    conforms(&doc, "/stock/available", 401, &body);
    let (status, _, _) = http_get(svc.http_addr, "/stock/available?sku=S", Some("transfer-token-0123456789")).await;
    assert_eq!(status, 200);
    let (status, body, _) = http_get(svc.http_addr, "/ingest/stats", Some("transfer-token-0123456789")).await;
    assert_eq!((status, body["error"]["reason"].as_str()), (403, Some("ROLE_NOT_ALLOWED")));
    conforms(&doc, "/ingest/stats", 403, &body);
    let mut limited = None;
    for _ in 0..20 {
        let (status, body, head) =
            http_get(svc.http_addr, "/stock/available?sku=S", Some("transfer-token-0123456789")).await;
        if status == 429 {
            limited = Some((body, head));
            break;
        }
    }
    let (body, head) = limited.expect("the limit was reached");
    assert_eq!(body["error"]["reason"], "RATE_LIMITED");
    assert!(head.to_ascii_lowercase().contains("retry-after:"), "{head}");
    conforms(&doc, "/stock/available", 429, &body);
    // Probes need no token.
    assert_eq!(http_get(svc.http_addr, "/healthz", None).await.0, 200);
}

#[tokio::test]
async fn readiness_follows_redis() {
    let mut svc = start().await;
    assert_eq!(http_get(svc.http_addr, "/readyz", None).await.0, 200);
    svc.stop_redis().await;
    let (status, body, _) = http_get(svc.http_addr, "/readyz", None).await;
    assert_eq!((status, body["status"].as_str()), (503, Some("not ready")));
    assert_eq!(http_get(svc.http_addr, "/healthz", None).await.0, 200, "alive, though not ready");
}

/// POSTs `body` to `path`, checks the request and the answer against the
/// document, and returns (status, body).
async fn post(svc: &TestService, doc: &Value, path: &str, headers: &[(&str, &str)], body: Value) -> (u16, Value) {
    request_conforms(doc, path, &body);
    let (status, answer, _) = http_post(svc.http_addr, path, None, headers, &body).await;
    conforms_to(doc, "post", path, status, &answer);
    (status, answer)
}

/// The transfer system's session of the README, over HTTP: lock from
/// candidates with a split, move part of a hold, a partial batch, renew,
/// commit, read, release. Every request and answer matches the document.
#[tokio::test]
async fn the_lock_api_over_http_follows_its_openapi_description() {
    let svc = start().await;
    let doc = openapi(&svc).await;
    for (warehouse, physical) in [("WH-A", "2"), ("WH-B", "5"), ("WH-C", "10")] {
        svc.stock("SKU-1", warehouse, physical).await;
    }
    svc.stock("SKU-2", "WH-A", "1").await;

    let lock = json!({
        "sku": "SKU-1",
        "quantity": "8",
        "order_id": "TO-1001",
        "holder": "transfer-system",
        "request_id": "to-1001-lock",
        "ttl": "60s",
        "candidates": { "warehouse_ids": ["WH-A", "WH-B", "WH-C"], "strategy": "ALLOCATION_STRATEGY_PRIORITY", "allow_split": true }
    });
    let (status, locked) = post(&svc, &doc, "/stock/lock", &[], lock).await;
    assert_eq!(status, 200, "{locked}");
    let got: Vec<(&str, &str)> = locked["locks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| (l["warehouse_id"].as_str().unwrap(), l["quantity"].as_str().unwrap()))
        .collect();
    assert_eq!(got, [("WH-A", "2"), ("WH-B", "5"), ("WH-C", "1")]);
    assert!(locked["locks"][0]["fencing_token"].is_string(), "64-bit integers are strings in the JSON mapping");
    // The validator is no formality: a token as a number breaks the schema.
    let schema = response_schema(&doc, "post", "/stock/lock", 200);
    let mut wrong = locked.clone();
    wrong["locks"][0]["fencing_token"] = json!(5);
    assert!(jsonschema::validate(&schema, &wrong).is_err());

    // Move 3 of WH-B's hold to WH-C.
    let from_b = locked["locks"][1]["lock_id"].as_str().unwrap().to_owned();
    let transfer =
        json!({ "lock_id": from_b, "to_warehouse_id": "WH-C", "quantity": "3", "holder": "transfer-system" });
    let (status, moved) =
        post(&svc, &doc, "/stock/lock/transfer", &[("Idempotency-Key", "to-1001-move")], transfer).await;
    assert_eq!(status, 200, "{moved}");
    assert_eq!(
        (moved["moved"]["warehouse_id"].as_str(), moved["remaining"]["quantity"].as_str()),
        (Some("WH-C"), Some("2"))
    );

    // A partial batch: SKU-2 has 1 of the 3 asked for.
    let batch = json!({
        "lines": [{ "sku": "SKU-2", "warehouse_id": "WH-A", "quantity": "3" }],
        "order_id": "TO-1002", "holder": "transfer-system", "request_id": "to-1002", "policy": "BATCH_LOCK_POLICY_PARTIAL"
    });
    let (status, partial) = post(&svc, &doc, "/stock/lock/batch", &[], batch).await;
    assert_eq!(status, 200, "{partial}");
    let line = &partial["lines"][0];
    assert_eq!((line["locked"].as_str(), line["short"].as_str()), (Some("1"), Some("2")));

    // Renew by batch, read one lock, commit the moved one, release the rest.
    let batch_id = partial["batch_id"].as_str().unwrap();
    let renew = json!({ "batch_id": batch_id, "holder": "transfer-system", "request_id": "to-1002-renew" });
    assert_eq!(post(&svc, &doc, "/stock/lock/renew", &[], renew).await.0, 200);
    let moved_id = moved["moved"]["lock_id"].as_str().unwrap();
    let path = format!("/stock/locks/{}", moved_id.replace('|', "%7C"));
    let (status, read, _) = http_get(svc.http_addr, &path, None).await;
    assert_eq!((status, read["lock"]["quantity"].as_str()), (200, Some("3")), "{read}");
    conforms_to(&doc, "get", "/stock/locks/{lock_id}", status, &read);
    let commit = json!({ "lock_id": moved_id, "holder": "transfer-system", "request_id": "to-1001-commit" });
    let (status, committed) = post(&svc, &doc, "/stock/lock/commit", &[], commit).await;
    assert_eq!((status, committed["committed_quantity"].as_str()), (200, Some("3")), "{committed}");
    let release = json!({ "lock_id": from_b, "holder": "transfer-system", "request_id": "to-1001-release" });
    let (status, released) = post(&svc, &doc, "/stock/lock/release", &[], release).await;
    assert_eq!(status, 200, "{released}");
    // WH-C had 10: 1 locked by the split, 3 moved there and committed.
    let (_, available, _) = http_get(svc.http_addr, "/stock/available?sku=SKU-1&warehouse_id=WH-C", None).await;
    assert_eq!(available["results"][0]["records"][0]["available"], "6");
    assert_eq!(available["results"][0]["records"][0]["physical"], "7");
}

#[tokio::test]
async fn http_lock_calls_are_idempotent_by_request_id_or_idempotency_key() {
    let svc = start().await;
    let doc = openapi(&svc).await;
    svc.stock("SKU-1", "WH-A", "5").await;
    let body = json!({ "sku": "SKU-1", "warehouse_id": "WH-A", "quantity": "2", "order_id": "O-1", "holder": "h" });
    let key = [("Idempotency-Key", "key-1")];
    let (status, first) = post(&svc, &doc, "/stock/lock", &key, body.clone()).await;
    assert_eq!((status, first["replayed"].as_bool()), (200, Some(false)), "{first}");
    let (status, again) = post(&svc, &doc, "/stock/lock", &key, body.clone()).await;
    assert_eq!((status, again["replayed"].as_bool()), (200, Some(true)));
    assert_eq!(first["lock"], again["lock"]);
    // The same key in the body is the same request.
    let mut with_id = body.clone();
    with_id["request_id"] = json!("key-1");
    assert_eq!(post(&svc, &doc, "/stock/lock", &[], with_id.clone()).await.1["replayed"], json!(true));
    // Two different keys for one request are refused.
    let (status, refused) = post(&svc, &doc, "/stock/lock", &[("Idempotency-Key", "key-2")], with_id).await;
    assert_eq!((status, refused["error"]["field"].as_str()), (400, Some("request_id")), "{refused}");
    assert_eq!(svc.available("SKU-1", "WH-A").await, "3");
}

#[tokio::test]
async fn http_lock_errors_carry_the_grpc_reasons_and_change_nothing() {
    let svc = start().await;
    let doc = openapi(&svc).await;
    svc.stock("SKU-1", "WH-A", "5").await;
    let lock = |quantity: &str| json!({ "sku": "SKU-1", "warehouse_id": "WH-A", "quantity": quantity, "order_id": "O", "holder": "h", "request_id": format!("r-{quantity}") });
    let (status, short) = post(&svc, &doc, "/stock/lock", &[], lock("9")).await;
    assert_eq!((status, short["error"]["reason"].as_str()), (409, Some("INSUFFICIENT_STOCK")));
    assert_eq!(
        (short["error"]["metadata"]["requested"].as_str(), short["error"]["metadata"]["available"].as_str()),
        (Some("9"), Some("5"))
    );
    let (status, bad) = post(&svc, &doc, "/stock/lock", &[], lock("-1")).await;
    assert_eq!((status, bad["error"]["field"].as_str()), (400, Some("quantity")));

    // Not JSON, an unknown field, a wrong type: 400 naming the body.
    for body in ["{", r#"{"sku":"SKU-1","colour":"red"}"#, r#"{"sku":7}"#] {
        let response = reqwest::Client::new()
            .post(format!("http://{}/stock/lock", svc.http_addr))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{body}");
        let answer: Value = response.json().await.unwrap();
        conforms_to(&doc, "post", "/stock/lock", 400, &answer);
        assert_eq!(answer["error"]["field"], "body", "{body}: {answer}");
    }
    let (status, gone, _) = http_get(svc.http_addr, "/stock/locks/SKU-1%7CWH-A%7C99-0badc0de", None).await;
    assert_eq!((status, gone["error"]["reason"].as_str()), (404, Some("LOCK_NOT_FOUND")), "{gone}");
    conforms_to(&doc, "get", "/stock/locks/{lock_id}", status, &gone);
    assert_eq!(svc.record("SKU-1", "WH-A").await.live_locks, 0);
}

#[tokio::test]
async fn http_lock_calls_need_the_role_of_their_grpc_method() {
    let svc = start_authed(&[]).await;
    let mut root = svc.inventory_as(Some("root-token-0123456789")).await;
    stock_as_root(&mut root, "SKU-1", "WH-A", "5").await;
    let body = json!({ "sku": "SKU-1", "warehouse_id": "WH-A", "quantity": "1", "order_id": "O", "request_id": "r1" });
    let (status, refused, _) = http_post(svc.http_addr, "/stock/lock", None, &[], &body).await;
    assert_eq!((status, refused["error"]["reason"].as_str()), (401, Some("UNAUTHENTICATED")));
    let (status, refused, _) =
        http_post(svc.http_addr, "/stock/lock", Some("transfer-token-0123456789"), &[], &body).await;
    assert_eq!((status, refused["error"]["reason"].as_str()), (403, Some("ROLE_NOT_ALLOWED")));
    let (status, locked, _) =
        http_post(svc.http_addr, "/stock/lock", Some("checkout-token-0123456789"), &[], &body).await;
    assert_eq!(status, 200, "{locked}");
    // The holder is the caller's identity, whatever the body says.
    assert_eq!(locked["lock"]["holder"], "checkout");
}

/// Review: the HTTP lock routes ran the gRPC handlers without the gRPC
/// server's admission, so an HTTP burst went straight to Redis. Past the
/// concurrency limit and the queue they are shed at once, as gRPC calls are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_lock_calls_past_the_limit_are_shed_like_grpc_calls() {
    let svc =
        start_with(&["--max-in-flight", "1", "--max-queued", "1", "--max-queue-wait", "5s", "--store-timeout", "2s"])
            .await;
    svc.stock("SKU-O", "WH-A", "100").await;
    // A stalled Redis holds the admitted call for the store timeout.
    let pid = svc.redis.as_ref().unwrap().pid().unwrap();
    signal(pid, "-STOP");
    let calls = (0..4).map(|i| {
        let body = json!({ "sku": "SKU-O", "warehouse_id": "WH-A", "quantity": "1", "order_id": "O", "holder": "h", "request_id": format!("o{i}") });
        async move {
            let started = std::time::Instant::now();
            let (status, answer, head) = http_post(svc.http_addr, "/stock/lock", None, &[], &body).await;
            (status, answer, head, started.elapsed())
        }
    });
    let results = futures::future::join_all(calls).await;
    signal(pid, "-CONT");
    let shed: Vec<_> = results.iter().filter(|(status, ..)| *status == 429).collect();
    assert!(shed.len() >= 2, "one call runs, one waits, the rest are shed: {results:?}");
    let shed_count = shed.len();
    for (_, answer, head, took) in shed {
        assert_eq!(answer["error"]["reason"], "OVERLOADED");
        assert!(head.contains("retry-after"), "{head}");
        assert!(*took < std::time::Duration::from_millis(1500), "shed at once, not after the stall: {took:?}");
    } // Counted as failed lock attempts of their warehouse, as over gRPC.
    let metrics = scrape(&svc).await;
    let refused = metrics.get("stocklock_lock_outcomes_total{warehouse=\"WH-A\",reason=\"OVERLOADED\"}");
    assert!(refused.is_some_and(|n| *n >= shed_count as f64), "{refused:?} for {shed_count} shed");
}

#[tokio::test]
async fn a_body_past_the_limit_gets_the_documented_413() {
    let svc = start_with(&["--max-request-bytes", "1024"]).await;
    let doc = openapi(&svc).await;
    let body = json!({ "sku": "S", "warehouse_id": "W", "quantity": "1", "order_id": "x".repeat(2000), "holder": "h", "request_id": "r" });
    let (status, _, _) = http_post(svc.http_addr, "/stock/lock", None, &[], &body).await;
    assert_eq!(status, 413);
    assert!(!doc["paths"]["/stock/lock"]["post"]["responses"]["413"].is_null(), "413 is not documented");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shed_transfer_counts_against_its_destination() {
    let svc = start_with(&["--max-in-flight", "1", "--max-queued", "0", "--store-timeout", "1s"]).await;
    svc.stock("SKU-T", "WH-A", "10").await;
    svc.stock("SKU-T", "WH-SHED", "10").await;
    let lock = svc.lock("SKU-T", "WH-A", "2", "t1").await.unwrap().lock.unwrap();
    // A stalled Redis holds the one slot; the transfer finds no room at all.
    let pid = svc.redis.as_ref().unwrap().pid().unwrap();
    signal(pid, "-STOP");
    let mut holder = svc.client.clone();
    let hold = tokio::spawn(async move { holder.lock(lock_request("SKU-T", "WH-A", "1", "holder")).await });
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let body = json!({ "lock_id": lock.lock_id, "to_warehouse_id": "WH-SHED", "holder": "h", "request_id": "move" });
    let (status, answer, _) = http_post(svc.http_addr, "/stock/lock/transfer", None, &[], &body).await;
    signal(pid, "-CONT");
    let _ = hold.await.unwrap();
    assert_eq!((status, answer["error"]["reason"].as_str()), (429, Some("OVERLOADED")), "{answer}");
    // A move is a lock at its destination: its refusal is counted there.
    let metrics = scrape(&svc).await;
    let refused = "stocklock_lock_outcomes_total{warehouse=\"WH-SHED\",reason=\"OVERLOADED\"}";
    assert_eq!(metrics.get(refused).copied(), Some(1.0));
}
