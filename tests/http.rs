//! The HTTP API for the transfer system, checked against its own OpenAPI
//! description.

mod common;

use common::*;
use serde_json::Value;

/// The served OpenAPI document.
async fn openapi(svc: &TestService) -> Value {
    let (status, doc, _) = http_get(svc.http_addr, "/openapi.json", None).await;
    assert_eq!(status, 200);
    assert_eq!(doc["openapi"], "3.1.0");
    doc
}

/// Checks `value` against a schema of the document: type, required,
/// properties, items, additionalProperties and $ref (what the document uses).
fn validate(doc: &Value, schema: &Value, value: &Value, path: &str) -> Result<(), String> {
    if let Some(reference) = schema["$ref"].as_str() {
        let name = reference.trim_start_matches("#/components/schemas/");
        return validate(doc, &doc["components"]["schemas"][name], value, path);
    }
    let types: Vec<&str> = match &schema["type"] {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
        _ => vec![],
    };
    let fits = |t: &str| match t {
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "integer" => value.is_i64() || value.is_u64(),
        "null" => value.is_null(),
        _ => false,
    };
    if !types.is_empty() && !types.iter().any(|t| fits(t)) {
        return Err(format!("{path}: {value} is not {types:?}"));
    }
    if let Some(pattern) = schema["pattern"].as_str() {
        // The only pattern in the document: a plain decimal.
        assert!(pattern.contains("[0-9]"));
        let text = value.as_str().unwrap_or_default();
        let digits = text.trim_start_matches('-');
        let ok = !digits.is_empty()
            && digits.split('.').count() <= 2
            && digits.split('.').all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
        if !ok {
            return Err(format!("{path}: {text:?} is not a decimal"));
        }
    }
    for required in schema["required"].as_array().into_iter().flatten() {
        let name = required.as_str().unwrap();
        if value.get(name).is_none() {
            return Err(format!("{path}: missing {name}"));
        }
    }
    if let (Some(properties), Some(object)) = (schema["properties"].as_object(), value.as_object()) {
        for (name, field) in object {
            match properties.get(name) {
                Some(sub) => validate(doc, sub, field, &format!("{path}.{name}"))?,
                None => return Err(format!("{path}: {name} is not in the schema")),
            }
        }
    }
    if let (Some(additional), Some(object)) = (schema.get("additionalProperties"), value.as_object()) {
        for (name, field) in object {
            validate(doc, additional, field, &format!("{path}.{name}"))?;
        }
    }
    if let (Some(items), Some(array)) = (schema.get("items"), value.as_array()) {
        for (i, item) in array.iter().enumerate() {
            validate(doc, items, item, &format!("{path}[{i}]"))?;
        }
    }
    Ok(())
}

/// Checks a response against the document's description of `path` and `status`.
fn conforms(doc: &Value, path: &str, status: u16, body: &Value) {
    let mut response = &doc["paths"][path]["get"]["responses"][status.to_string()];
    assert!(!response.is_null(), "{path} does not document status {status}");
    if let Some(reference) = response["$ref"].as_str() {
        response = &doc["components"]["responses"][reference.trim_start_matches("#/components/responses/")];
    }
    let schema = &response["content"]["application/json"]["schema"];
    if let Err(e) = validate(doc, schema, body, "$") {
        panic!("{path} {status} does not match its OpenAPI schema: {e}\n{body:#}");
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
