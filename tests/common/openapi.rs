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
/// (each status a handler answers is documented on its own, not as a
/// range), with the document's components beside it so that its `$ref`s
/// resolve.
pub fn response_schema(doc: &Value, method: &str, path: &str, status: u16) -> Value {
    let response = &doc["paths"][path][method]["responses"][status.to_string()];
    assert!(!response.is_null(), "{method} {path} does not document status {status}");
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
