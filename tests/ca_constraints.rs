//! Issue 12, "the interception CA": `proxy.ca_name_constraints`. A generated CA carries X.509
//! permitted DNS subtrees (and excludes every IP), so a real TLS client (rustls' webpki
//! verifier) rejects a leaf it signed outside them; `check` refuses routes outside them and
//! an existing CA without them.

mod support;

use std::sync::Arc;

use oauth_egress::intercept::ca::CertificateAuthority;
use oauth_egress::secret::SecretSource;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A TLS handshake over loopback: the proxy's leaf for `host`, verified by a rustls client
/// that trusts only `ca` and asks for `host`. `Err` carries the client's verdict.
async fn handshake(ca: &CertificateAuthority, host: &str) -> Result<(), String> {
    let server = tokio_rustls::TlsAcceptor::from(ca.server_config(host).unwrap());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let serving = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        if let Ok(mut tls) = server.accept(tcp).await {
            let _ = tls.write_all(b"ok").await;
            let _ = tls.shutdown().await;
        }
    });
    let client = tokio_rustls::TlsConnector::from(Arc::new(support::client_tls(ca.cert_pem())));
    let name = rustls::pki_types::ServerName::try_from(host.to_string()).unwrap();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let result = match client.connect(name, tcp).await {
        Ok(mut tls) => {
            let mut got = Vec::new();
            let _ = tls.read_to_end(&mut got).await;
            assert_eq!(got, b"ok");
            Ok(())
        }
        Err(err) => Err(err.to_string()),
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), serving).await;
    result
}

#[tokio::test]
async fn a_real_tls_client_accepts_leaves_inside_the_constraints_only() {
    let subtrees = vec!["payments.example".to_string(), "crm.example".to_string()];
    let constrained = CertificateAuthority::generate_constrained(&subtrees).unwrap();
    for inside in ["payments.example", "api.payments.example", "crm.example"] {
        handshake(&constrained, inside)
            .await
            .unwrap_or_else(|e| panic!("{inside}: {e}"));
    }
    for outside in ["evil.example", "xpayments.example", "127.0.0.1"] {
        let err = handshake(&constrained, outside).await.unwrap_err();
        assert!(
            err.to_lowercase().contains("name constraint")
                || err.contains("NameConstraint")
                || err.contains("NotValidForName"),
            "{outside}: {err}"
        );
    }
    // The same hosts verify under an unconstrained CA: the constraints are what refused them.
    let open = CertificateAuthority::generate().unwrap();
    handshake(&open, "evil.example").await.unwrap();
}

#[test]
fn a_generated_ca_keeps_its_constraints_and_an_unconstrained_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (
        SecretSource::File(dir.path().join("ca.pem")),
        SecretSource::File(dir.path().join("ca.key")),
    );
    let subtrees = vec!["payments.example".to_string()];
    let (_, created) =
        CertificateAuthority::load_or_create_constrained(&cert, &key, &subtrees).unwrap();
    assert!(created);
    let (_, created) =
        CertificateAuthority::load_or_create_constrained(&cert, &key, &subtrees).unwrap();
    assert!(!created, "loaded again, constraints matched");
    let other = vec!["crm.example".to_string()];
    let err = CertificateAuthority::load_or_create_constrained(&cert, &key, &other)
        .unwrap_err()
        .to_string();
    assert!(err.contains("carries [payments.example]"), "{err}");

    let plain = tempfile::tempdir().unwrap();
    let (cert, key) = (
        SecretSource::File(plain.path().join("ca.pem")),
        SecretSource::File(plain.path().join("ca.key")),
    );
    CertificateAuthority::load_or_create(&cert, &key).unwrap();
    let err = CertificateAuthority::load_or_create_constrained(&cert, &key, &subtrees)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("carries no name constraints") && err.contains("move"),
        "{err}"
    );
}

fn check(dir: &std::path::Path, toml: &str) -> (bool, String) {
    std::fs::write(dir.join("routes.toml"), toml).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_oauth-egress"))
        .args(["check", "-c", "routes.toml"])
        .current_dir(dir)
        .env("CC_SECRET", "x")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn check_refuses_a_route_outside_the_constraints_and_an_unconstrained_ca() {
    let dir = tempfile::tempdir().unwrap();
    let config = |hosts: &[&str]| {
        let mut toml = "[proxy]\nlisten = \"127.0.0.1:0\"\n\
             ca_name_constraints = [\"payments.example\"]\n\
             [clients.c]\ntoken_endpoint = \"https://idp.example/token\"\nclient_id = \"c\"\n\
             auth = \"client_secret_basic\"\nclient_secret = { env = \"CC_SECRET\" }\n"
            .to_string();
        for (i, host) in hosts.iter().enumerate() {
            toml.push_str(&format!(
                "[[route]]\nname = \"r{i}\"\nhost = \"{host}\"\nclient = \"c\"\n"
            ));
        }
        toml
    };
    let (ok, text) = check(
        dir.path(),
        &config(&["api.payments.example", "evil.example"]),
    );
    assert!(!ok, "{text}");
    assert!(
        text.contains("route r1: host evil.example is outside proxy.ca_name_constraints"),
        "{text}"
    );
    assert!(!text.contains("route r0"), "{text}");
    let (ok, text) = check(dir.path(), &config(&["*.payments.example"]));
    assert!(ok, "{text}");
    // An existing CA generated without the constraints: refused, with what to do.
    CertificateAuthority::load_or_create(
        &SecretSource::File(dir.path().join("ca/ca.pem")),
        &SecretSource::File(dir.path().join("ca/ca.key")),
    )
    .unwrap();
    let (ok, text) = check(dir.path(), &config(&["*.payments.example"]));
    assert!(!ok, "{text}");
    assert!(text.contains("carries no name constraints"), "{text}");
}
