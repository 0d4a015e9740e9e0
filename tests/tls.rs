//! Mutual TLS: certificates made here with rcgen; a client certificate from
//! another CA, or none, is refused.

mod common;

use std::path::PathBuf;

use common::*;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use stocklock::pb;
use stocklock::pb::inventory_service_client::InventoryServiceClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

struct Pki {
    ca_pem: String,
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Pki {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Self { ca_pem: issuer.pem(), issuer }
    }

    /// A certificate for `name` signed by this CA: (cert PEM, key PEM).
    fn issue(&self, name: &str) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec![name.to_owned()]).unwrap().signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

fn write(name: &str, content: &str) -> PathBuf {
    let path = token_file(content);
    let renamed = path.with_extension(name);
    std::fs::rename(&path, &renamed).unwrap();
    renamed
}

async fn connect_tls(
    addr: std::net::SocketAddr,
    ca: &str,
    client: Option<&(String, String)>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)).domain_name("localhost");
    if let Some((cert, key)) = client {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Channel::from_shared(format!("https://{addr}")).unwrap().tls_config(tls)?.connect().await
}

async fn get(channel: Channel) -> Result<(), tonic::Status> {
    let mut client = InventoryServiceClient::new(channel);
    client.get_availability(pb::GetAvailabilityRequest { sku: "S".into(), warehouse_id: "W".into() }).await.map(drop)
}

#[tokio::test]
async fn mutual_tls_admits_only_clients_of_the_trusted_ca() {
    let pki = Pki::new("stocklock test CA");
    let (server_cert, server_key) = pki.issue("localhost");
    let cert = write("crt", &server_cert);
    let key = write("key", &server_key);
    let ca = write("ca", &pki.ca_pem);
    let redis = stocklock::embedded_redis::EmbeddedRedis::start(std::path::Path::new("redis-server")).await.unwrap();
    let probe_addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let probe = probe_addr.to_string();
    let config = config(
        &redis.url(),
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
            "--tls-client-ca",
            ca.to_str().unwrap(),
            "--probe-listen",
            &probe,
        ],
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(stocklock::server::run(config, listeners(listener).await, async {
        let _ = rx.await;
    }));

    // A client of the trusted CA gets through (NOT_FOUND: the record does not exist).
    let good = pki.issue("checkout");
    let mut admitted = None;
    // Generous on a loaded machine; a server that stopped says why at once.
    for _ in 0..1200 {
        assert!(!server.is_finished(), "the server stopped before it served");
        if let Ok(channel) = connect_tls(addr, &pki.ca_pem, Some(&good)).await {
            admitted = Some(get(channel).await);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    let status = admitted.expect("the server came up").unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");

    // A certificate from another CA, or none at all, does not.
    let rogue = Pki::new("rogue CA").issue("checkout");
    for client in [Some(&rogue), None] {
        let refused = match connect_tls(addr, &pki.ca_pem, client).await {
            Err(_) => true,
            Ok(channel) => get(channel)
                .await
                .is_err_and(|s| s.code() == tonic::Code::Unavailable || s.code() == tonic::Code::Unknown),
        };
        assert!(
            refused,
            "a client {} was admitted",
            if client.is_some() { "of a rogue CA" } else { "without a certificate" }
        );
    }

    // Plaintext is not spoken on a TLS port.
    let plain = Channel::from_shared(format!("http://{addr}")).unwrap().connect().await;
    if let Ok(channel) = plain {
        assert!(get(channel).await.is_err());
    }

    // Probes that cannot speak TLS (the kubelet's) get health, and only health, in plaintext.
    let channel = Channel::from_shared(format!("http://{probe_addr}")).unwrap().connect().await.unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let request = tonic_health::pb::HealthCheckRequest { service: "stocklock.v1.InventoryService".into() };
    assert_eq!(health.check(request).await.unwrap().into_inner().status(), tonic_health::ServingStatus::Serving.into());
    assert_eq!(get(channel).await.unwrap_err().code(), tonic::Code::Unimplemented);
    tx.send(()).unwrap();
    server.await.unwrap().unwrap();
}
