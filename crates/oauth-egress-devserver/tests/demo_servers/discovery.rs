//! Discovery documents and their knobs, and connection-level failures.

use oauth_egress_devserver::{DiscoveryMode, Failure};
use serde_json::Value;

use super::{basic, setup, Env, SECRET};

impl Env {
    async fn get_status(&self, url: &str) -> (u16, Option<Value>) {
        let response = self.http.get(url).send().await.expect("get");
        let status = response.status().as_u16();
        (status, response.json().await.ok())
    }
}

#[tokio::test]
async fn discovery_modes_and_knobs() {
    let env = setup().await;
    let oidc = env.auth.openid_configuration_url();
    let oauth = env.auth.oauth_metadata_url();
    assert!(oidc.ends_with("/.well-known/openid-configuration"));
    for url in [&oidc, &oauth] {
        let (status, doc) = env.get_status(url).await;
        assert_eq!(status, 200);
        let doc = doc.expect("json");
        assert_eq!(doc["issuer"], env.auth.issuer());
        assert_eq!(doc["token_endpoint"], env.auth.token_endpoint());
        assert_eq!(doc["jwks_uri"], env.auth.jwks_uri());
        let methods = doc["token_endpoint_auth_methods_supported"].to_string();
        for method in [
            "client_secret_basic",
            "private_key_jwt",
            "tls_client_auth",
            "none",
        ] {
            assert!(methods.contains(method), "{methods}");
        }
        assert!(doc["token_endpoint_auth_signing_alg_values_supported"]
            .to_string()
            .contains("PS256"));
        assert!(doc.get("mtls_endpoint_aliases").is_none());
    }

    env.auth.set_discovery(DiscoveryMode::OAuthOnly);
    assert_eq!(env.get_status(&oidc).await.0, 404);
    assert_eq!(env.get_status(&oauth).await.0, 200);
    env.auth.set_discovery(DiscoveryMode::None);
    assert_eq!(env.get_status(&oidc).await.0, 404);
    assert_eq!(env.get_status(&oauth).await.0, 404);
    env.auth.set_discovery(DiscoveryMode::Both);

    env.auth
        .set_advertised_issuer(Some("https://evil.example".to_string()));
    env.auth
        .set_advertised_auth_methods(vec!["private_key_jwt".to_string()]);
    let doc = env.get_status(&oauth).await.1.expect("json");
    assert_eq!(doc["issuer"], "https://evil.example");
    assert_eq!(
        doc["token_endpoint_auth_methods_supported"],
        serde_json::json!(["private_key_jwt"])
    );
    assert_eq!(env.auth.discovery_requests(), 7);

    let client_pki = oauth_egress_devserver::TestPki::new("client CA").expect("pki");
    let alias = env
        .auth
        .enable_mtls(
            super::listener().await,
            &env.pki,
            &["localhost"],
            client_pki.ca_cert_der(),
        )
        .expect("mtls");
    let doc = env.get_status(&oidc).await.1.expect("json");
    assert_eq!(
        doc["mtls_endpoint_aliases"]["token_endpoint"],
        alias.as_str()
    );
}

#[tokio::test]
async fn unavailable_and_dropped_connections() {
    let env = setup().await;
    let grant = [("grant_type", "client_credentials")];
    let auth = basic("svc-a", SECRET);

    env.auth.fail_next(
        1,
        Failure::Unavailable503 {
            retry_after_secs: Some(7),
        },
    );
    let response = env.token_request(&grant, Some(&auth)).await;
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "7");
    env.auth.fail_next(
        1,
        Failure::Unavailable503 {
            retry_after_secs: None,
        },
    );
    let response = env.token_request(&grant, Some(&auth)).await;
    assert_eq!(response.status(), 503);
    assert!(response.headers().get("retry-after").is_none());

    env.auth.fail_next(2, Failure::CloseConnection);
    for _ in 0..2 {
        let result = env
            .http
            .post(env.auth.token_endpoint())
            .header("authorization", &auth)
            .form(&grant)
            .send()
            .await;
        assert!(result.is_err(), "expected a dropped connection: {result:?}");
    }
    assert_eq!(env.token_request(&grant, Some(&auth)).await.status(), 200);
    assert_eq!(env.auth.token_requests(), 5);
}
