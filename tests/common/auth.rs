//! Tokens and authenticated clients.

use super::*;

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
pub struct Bearer(pub Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(value) = &self.0 {
            request.metadata_mut().insert("authorization", value.clone());
        }
        Ok(request)
    }
}

pub type AuthedChannel = tonic::service::interceptor::InterceptedService<Channel, Bearer>;

/// The tokens of the test token file: `<role>-token-0123456789` for principals
/// checkout (service), other-service (service), transfer (reader), alice and
/// bob (operator) and root (admin).
pub const TOKENS: &str = "\
checkout-token-0123456789  checkout       service
other-token-0123456789     other-service  service
transfer-token-0123456789  transfer       reader
alice-token-0123456789     alice          operator
bob-token-0123456789       bob            operator
root-token-0123456789      root           admin
";

/// A fresh token file with `content`.
pub fn token_file(content: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("stocklock-tokens-{:016x}", rand_u64()));
    std::fs::write(&path, content).unwrap();
    path
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos());
    h.finish()
}

/// A fresh Redis and a service with authentication on (the [`TOKENS`] file).
pub async fn start_authed(extra: &[&str]) -> TestService {
    let path = token_file(TOKENS);
    let mut args = vec!["--auth-tokens", path.to_str().unwrap()];
    args.extend_from_slice(extra);
    start_with(&args).await
}

impl TestService {
    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr)).unwrap().connect().await.unwrap()
    }

    /// An InventoryService client sending `token` (None: no authorization).
    pub async fn inventory_as(&self, token: Option<&str>) -> InventoryServiceClient<AuthedChannel> {
        let value = token.map(|t| format!("Bearer {t}").parse().unwrap());
        InventoryServiceClient::with_interceptor(self.channel().await, Bearer(value))
    }

    /// An AdminService client sending `token`.
    pub async fn admin_as(&self, token: Option<&str>) -> pb::admin_service_client::AdminServiceClient<AuthedChannel> {
        let value = token.map(|t| format!("Bearer {t}").parse().unwrap());
        pb::admin_service_client::AdminServiceClient::with_interceptor(self.channel().await, Bearer(value))
    }

    /// An AdminService client without credentials (authentication off).
    pub async fn admin(&self) -> pb::admin_service_client::AdminServiceClient<Channel> {
        pb::admin_service_client::AdminServiceClient::new(self.channel().await)
    }
}
