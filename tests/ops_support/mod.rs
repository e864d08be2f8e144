//! What `startup.rs` and `operations.rs` share: a development authorization server and echo
//! API on loopback, the proxy started as `run` starts it, and a client going through it.
#![allow(dead_code)]

use std::sync::Arc;

use oauth_egress::config::Config;
use oauth_egress::intercept::ca::CertificateAuthority;
use oauth_egress::server::Running;
use oauth_egress_devserver::{AuthServer, DevClient, EchoApi, TestPki};
use tokio::net::TcpListener;

pub struct Env {
    pub pki: TestPki,
    pub auth: AuthServer,
    pub api: EchoApi,
    pub dir: tempfile::TempDir,
}

/// The servers, with client `ops-client` (secret in `secret` in `dir`), TLS from a CA named
/// `ca_name`.
pub async fn servers(ca_name: &str) -> Env {
    let pki = TestPki::new(ca_name).unwrap();
    let tls = pki.server_config(&["localhost"]).unwrap();
    let auth = AuthServer::start(
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        tls.clone(),
        "localhost",
        vec![DevClient {
            id: "ops-client".into(),
            secret: "ops-secret".into(),
            allowed_scopes: None,
        }],
    )
    .await
    .unwrap();
    let api = EchoApi::start(
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        Some(tls),
        Some(auth.verifier()),
        None,
        None,
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("secret"), "ops-secret").unwrap();
    Env {
        pki,
        auth,
        api,
        dir,
    }
}

/// The proxy on `config`, as `run` starts it, with a fresh CA.
pub async fn start(env: &Env, config: Config) -> (Running, Arc<CertificateAuthority>) {
    let ca = Arc::new(CertificateAuthority::generate().unwrap());
    let running = oauth_egress::server::start(config, ca.clone(), &[env.pki.ca_cert_der()])
        .await
        .unwrap();
    (running, ca)
}

/// A client sending everything through `running`, trusting its CA.
pub fn client(running: &Running, ca: &CertificateAuthority) -> reqwest::Client {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from_pem_slice(ca.cert_pem().as_bytes()).unwrap())
        .unwrap();
    let tls = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .proxy(reqwest::Proxy::all(format!("http://{}", running.proxy_addr)).unwrap())
        .build()
        .unwrap()
}
