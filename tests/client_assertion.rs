//! `auth = "client_assertion"`: the client authenticates with a JWT its platform issued (a
//! projected service-account token), read from a file the platform rotates. The test
//! "platform" mints it as oidc-provider and RFC 7523 servers want it (`iss` = `sub` =
//! client_id, `aud` the token endpoint) and the development server trusts its key for that
//! client.

use oauth_egress_devserver::{ClientAuthSpec, ClientRegistration, JwtPublicKey};

mod support;

const CLIENT: &str = "workload-client";

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A platform token for `CLIENT`, signed with `key`, expiring at `exp`.
fn mint(key: &rcgen::KeyPair, aud: &str, exp: u64, jti: &str) -> String {
    let claims = serde_json::json!({
        "iss": CLIENT, "sub": CLIENT, "aud": aud, "exp": exp, "iat": now(), "jti": jti,
    });
    let key = jsonwebtoken::EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).unwrap();
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256),
        &claims,
        &key,
    )
    .unwrap()
}

#[tokio::test]
async fn a_platform_token_authenticates_the_client_and_an_expired_one_is_never_sent() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("idp-token");
    let h = support::Harness::start(support::Setup {
        client_toml: Some(format!(
            "token_endpoint = \"{{token_endpoint}}\"\nclient_id = \"{CLIENT}\"\n\
             auth = \"client_assertion\"\nclient_assertion = {{ file = \"{}\" }}",
            token_file.display()
        )),
        tokens: "invalidate_cooldown_secs = 0".into(),
        ..Default::default()
    })
    .await;
    let platform = rcgen::KeyPair::generate().unwrap();
    let public = JwtPublicKey::from_pem(&platform.public_key_pem()).unwrap();
    h.auth.register_client(ClientRegistration::new(
        CLIENT,
        ClientAuthSpec::private_key_jwt(public, &[]),
    ));
    let aud = h.auth.token_endpoint();
    std::fs::write(&token_file, mint(&platform, &aud, now() + 300, "one")).unwrap();
    let res = h.client().get(h.api_url()).send().await.unwrap();
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
    let form = h.auth.last_form();
    assert!(form.contains(&(
        "client_assertion_type".into(),
        "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".into()
    )));
    assert_eq!(
        h.auth.last_auth_method().as_deref(),
        Some("private_key_jwt")
    );

    // The platform's token has expired (the kubelet stopped rotating it): the next token
    // request is refused by the proxy, naming the file, and never reaches the server.
    h.api.set_reject_all(true);
    std::fs::write(&token_file, mint(&platform, &aud, now() - 30, "two")).unwrap();
    let before = h.auth.token_requests();
    let res = h.client().get(h.api_url()).send().await.unwrap();
    h.api.set_reject_all(false);
    let status = res.status();
    let body = res.text().await.unwrap();
    assert_eq!(status, 502, "{body}");
    assert!(
        body.contains("client_assertion") && body.contains("idp-token"),
        "{body}"
    );
    assert!(body.contains("expired"), "{body}");
    assert_eq!(
        h.auth.token_requests(),
        before,
        "an expired assertion was sent"
    );
    h.stop().await;
}
