//! Certificate-bound access tokens (RFC 8705 §3): issued with `cnf.x5t#S256` on
//! the mTLS alias, accepted by the echo API only over a connection with that
//! client certificate.

use std::net::SocketAddr;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use oauth_egress_devserver::{EchoApi, TestPki};
use serde_json::json;
use sha2::{Digest, Sha256};

use super::dpop::{jwt_claims, DpopKey};
use super::{basic, error_code, listener, setup, status_and_json, AUDIENCE, SECRET};

const FORM: [(&str, &str); 3] = [
    ("grant_type", "client_credentials"),
    ("scope", "read"),
    ("audience", AUDIENCE),
];

#[tokio::test]
async fn certificate_bound_tokens_need_the_same_certificate() {
    let env = setup().await;
    let client_pki = TestPki::new("client CA").expect("client pki");
    let alias = env
        .auth
        .enable_mtls(
            listener().await,
            &env.pki,
            &["localhost"],
            client_pki.ca_cert_der(),
        )
        .expect("mtls");

    let api_tls = env
        .pki
        .server_config_client_auth(&["127.0.0.1"], client_pki.ca_cert_der())
        .expect("api tls");
    let api = EchoApi::start(
        listener().await,
        Some(api_tls),
        Some(env.auth.verifier()),
        Some(AUDIENCE.to_string()),
        Some("read".to_string()),
    )
    .await
    .expect("echo api");
    let api_url = format!("https://127.0.0.1:{}/v1/items", api.addr.port());

    let with_cert = |names: &[&str]| {
        let (chain, key) = client_pki.client_leaf(names).expect("client leaf");
        let thumbprint = URL_SAFE_NO_PAD.encode(Sha256::digest(&chain[0]));
        let config = env.pki.client_config_with_cert(chain, key).expect("config");
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(config)
            .no_proxy()
            .resolve("localhost", SocketAddr::from(([127, 0, 0, 1], 0)))
            .build()
            .expect("client");
        (client, thumbprint)
    };
    let (holder, thumbprint) = with_cert(&["svc-a.clients.test"]);
    let (stranger, _) = with_cert(&["svc-a.clients.test"]);

    // Off by default: a token fetched over the alias is not bound.
    let form = [
        ("grant_type", "client_credentials"),
        ("client_id", "svc-any"),
        ("client_secret", "any-secret"),
    ];
    let (plain_client, _) = with_cert(&["svc-any.clients.test"]);
    let response = plain_client.post(&alias).form(&form).send().await;
    let (status, body) = status_and_json(response.expect("token")).await;
    assert_eq!(status, 200, "{body}");
    assert!(jwt_claims(body["access_token"].as_str().expect("token"))["cnf"].is_null());
    let doc: serde_json::Value = env
        .http
        .get(env.auth.oauth_metadata_url())
        .send()
        .await
        .expect("metadata")
        .json()
        .await
        .expect("json");
    assert_eq!(doc["tls_client_certificate_bound_access_tokens"], false);
    env.auth.set_certificate_bound_tokens(true);

    // A secret client on the alias with a certificate gets a bound token.
    let response = holder
        .post(&alias)
        .header("authorization", basic("svc-a", SECRET))
        .form(&FORM)
        .send()
        .await
        .expect("token");
    let (status, body) = status_and_json(response).await;
    assert_eq!((status, body["token_type"].as_str()), (200, Some("Bearer")));
    let token = body["access_token"].as_str().expect("token").to_string();
    assert_eq!(jwt_claims(&token)["cnf"], json!({ "x5t#S256": thumbprint }));

    let call = |client: &reqwest::Client| client.get(&api_url).bearer_auth(&token).send();
    assert_eq!(call(&holder).await.expect("call").status(), 200);
    for client in [&stranger, &env.http] {
        let (status, body) = status_and_json(call(client).await.expect("call")).await;
        assert_eq!(
            (status, error_code(&body)),
            (401, "invalid_token"),
            "{body}"
        );
    }
    // Unbound tokens still work without a certificate.
    let bearer = env.good_token().await;
    let response = env.http.get(&api_url).bearer_auth(&bearer).send().await;
    assert_eq!(response.expect("call").status(), 200);

    // DPoP on the alias: the token is bound to both key and certificate.
    let key = DpopKey::new();
    let response = holder
        .post(&alias)
        .header("authorization", basic("svc-a", SECRET))
        .header("dpop", key.proof("POST", &alias, None, None))
        .form(&FORM)
        .send()
        .await
        .expect("token");
    let (status, body) = status_and_json(response).await;
    assert_eq!((status, body["token_type"].as_str()), (200, Some("DPoP")));
    let both = body["access_token"].as_str().expect("token").to_string();
    let cnf = &jwt_claims(&both)["cnf"];
    assert_eq!(cnf["x5t#S256"], thumbprint.as_str());
    assert_eq!(cnf["jkt"], key.thumbprint());
    let dpop_call = |client: &reqwest::Client| {
        client
            .get(&api_url)
            .header("authorization", format!("DPoP {both}"))
            .header("dpop", key.proof("GET", &api_url, Some(&both), None))
            .send()
    };
    assert_eq!(dpop_call(&holder).await.expect("call").status(), 200);
    assert_eq!(dpop_call(&stranger).await.expect("call").status(), 401);
}
