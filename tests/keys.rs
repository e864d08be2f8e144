//! Key and certificate material: where it may come from (`"path"`, `{ file }`, `{ env }`),
//! and that nothing in the product signs with the `rsa` crate.

mod support;

use oauth_egress_devserver::{ClientAuthSpec, ClientRegistration, TestPki};
use support::{Harness, Setup, CLIENT_ID, SCOPE};

/// The product's source, without test modules (`#[cfg(test)]` to the end of a file, and
/// `*_tests.rs` files).
fn product_sources() -> Vec<(String, String)> {
    fn walk(dir: &std::path::Path, out: &mut Vec<(String, String)>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs")
                && !path.to_string_lossy().ends_with("_tests.rs")
            {
                let text = std::fs::read_to_string(&path).unwrap();
                let product = text.split("#[cfg(test)]").next().unwrap_or("").to_string();
                out.push((path.display().to_string(), product));
            }
        }
    }
    let mut out = Vec::new();
    walk(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &mut out,
    );
    assert!(out.len() > 20, "found the sources");
    out
}

/// RSA assertions are signed by ring: the `rsa` crate (RUSTSEC-2023-0071, slow) must not
/// sign anything in the product. jsonwebtoken's `EncodingKey::from_rsa_*` is how it did.
#[test]
fn nothing_in_the_product_signs_with_the_rsa_crate() {
    for (path, text) in product_sources() {
        // (`DecodingKey::from_rsa_*` is verification, in the development server.)
        assert!(
            !text.contains("EncodingKey::from_rsa"),
            "{path} signs with jsonwebtoken's RSA (the rsa crate): sign RSA with ring"
        );
    }
}

/// `client_cert` and `client_key` given as `{ env = "NAME" }` holding PEM (a Kubernetes
/// Secret as environment variables) authenticate with mutual TLS.
#[tokio::test]
async fn client_cert_and_key_from_the_environment() {
    let client_pki = TestPki::new("client CA").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = support::client_identity(&client_pki, "svc.clients.test", dir.path());
    // Unique names: the environment is shared by every test in this process.
    let (cert_var, key_var) = (
        "OAUTH_EGRESS_TEST_KEYS_ENV_CLIENT_CERT",
        "OAUTH_EGRESS_TEST_KEYS_ENV_CLIENT_KEY",
    );
    std::env::set_var(cert_var, std::fs::read_to_string(&cert).unwrap());
    std::env::set_var(key_var, std::fs::read_to_string(&key).unwrap());
    std::fs::remove_file(&cert).unwrap();
    std::fs::remove_file(&key).unwrap();
    let h = Harness::start(Setup {
        client_toml: Some(format!(
            "client_id = \"{CLIENT_ID}\"\nissuer = \"{{issuer}}\"\nauth = \"tls_client_auth\"\n\
             client_cert = {{ env = \"{cert_var}\" }}\nclient_key = {{ env = \"{key_var}\" }}"
        )),
        ..Setup::default()
    })
    .await;
    let mtls_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    h.auth
        .enable_mtls(
            mtls_listener,
            &h.pki,
            &["localhost"],
            client_pki.ca_cert_der(),
        )
        .unwrap();
    h.auth.register_client(
        ClientRegistration::new(
            CLIENT_ID,
            ClientAuthSpec::tls_client_auth("svc.clients.test"),
        )
        .with_scopes(&[SCOPE]),
    );
    let res = h.client().get(h.api_url()).send().await.unwrap();
    let status = res.status().as_u16();
    let body = res.text().await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        h.auth.last_auth_method().as_deref(),
        Some("tls_client_auth")
    );
    h.stop().await;
}
