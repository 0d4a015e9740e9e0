//! HTTP against the service's HTTP listener, with reqwest.

/// A GET: (status, body as JSON, or as a JSON string when it is not JSON,
/// and the response headers as `name: value` lines).
pub async fn http_get(addr: std::net::SocketAddr, path: &str, token: Option<&str>) -> (u16, serde_json::Value, String) {
    let mut request = reqwest::Client::new().get(format!("http://{addr}{path}"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    answer(request).await
}

/// A POST of `body` as JSON, with extra `headers`: as [`http_get`].
pub async fn http_post(
    addr: std::net::SocketAddr,
    path: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: &serde_json::Value,
) -> (u16, serde_json::Value, String) {
    let mut request = reqwest::Client::new().post(format!("http://{addr}{path}")).json(body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    answer(request).await
}

async fn answer(request: reqwest::RequestBuilder) -> (u16, serde_json::Value, String) {
    let response = request.send().await.expect("the HTTP listener answers");
    let status = response.status().as_u16();
    let head = response
        .headers()
        .iter()
        .map(|(name, value)| format!("{name}: {}", value.to_str().unwrap_or_default()))
        .collect::<Vec<_>>()
        .join("\r\n");
    let text = response.text().await.expect("a body");
    let json = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
    (status, json, head)
}
