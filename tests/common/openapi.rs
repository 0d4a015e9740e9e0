//! The served OpenAPI document, and responses checked against it with a
//! JSON Schema validator.

use super::*;
use serde_json::Value;

/// The served OpenAPI document.
pub async fn openapi(svc: &TestService) -> Value {
    let (status, doc, _) = http_get(svc.http_addr, "/openapi.json", None).await;
    assert_eq!(status, 200);
    assert_eq!(doc["openapi"], "3.1.0");
    doc
}

/// The schema the document gives `method path` for a response of `status`
/// (or its 4XX / 5XX range), with the document's components beside it so
/// that its `$ref`s resolve.
pub fn response_schema(doc: &Value, method: &str, path: &str, status: u16) -> Value {
    let responses = &doc["paths"][path][method]["responses"];
    let range = format!("{}XX", status / 100);
    let response = [status.to_string(), range]
        .into_iter()
        .map(|code| &responses[code])
        .find(|r| !r.is_null())
        .unwrap_or_else(|| panic!("{method} {path} does not document status {status}"));
    let mut schema = response["content"]["application/json"]["schema"].clone();
    assert!(schema.is_object(), "{method} {path} {status} has no JSON schema");
    schema["components"] = doc["components"].clone();
    schema
}

/// Checks a response body against the document, with a JSON Schema validator.
pub fn conforms_to(doc: &Value, method: &str, path: &str, status: u16, body: &Value) {
    let schema = response_schema(doc, method, path, status);
    if let Err(e) = jsonschema::validate(&schema, body) {
        panic!("{method} {path} {status} does not match its OpenAPI schema: {e}\n{body:#}");
    }
}

pub fn conforms(doc: &Value, path: &str, status: u16, body: &Value) {
    conforms_to(doc, "get", path, status, body);
}
