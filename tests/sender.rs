//! Sender-constrained tokens through the proxy: DPoP (RFC 9449) with both nonce kinds, and
//! certificate-bound tokens (RFC 8705 §3), against servers that verify proofs strictly.

mod support;

use std::time::Duration;

use oauth_egress_devserver::{ClientAuthSpec, ClientRegistration, TestPki};
use support::{Harness, Setup, CLIENT_ID, SCOPE};

fn dpop_route() -> String {
    format!("scopes = [\"{SCOPE}\"]\ndpop = true")
}

async fn get(h: &Harness) -> (u16, String) {
    let res = h
        .client()
        .get(format!("{}/d?q=1", h.api_url()))
        .send()
        .await
        .unwrap();
    (res.status().as_u16(), res.text().await.unwrap())
}

#[tokio::test]
async fn a_dpop_route_gets_a_bound_token_and_proves_possession_on_every_request() {
    let h = Harness::start(Setup {
        route_extra: dpop_route(),
        ..Setup::default()
    })
    .await;
    for _ in 0..3 {
        let (status, body) = get(&h).await;
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(h.auth.token_requests(), 1);
    assert_eq!(h.auth.dpop_proofs(), 1, "the token request carried a proof");
    let proof = h.auth.last_dpop_proof().unwrap();
    assert_eq!(proof["claims"]["htm"], "POST");
    assert_eq!(proof["claims"]["htu"], h.auth.token_endpoint());
    let seen = h.api.seen();
    assert_eq!(seen.len(), 3);
    for s in &seen {
        assert!(s.dpop, "a verified proof on every request");
        assert!(s.authorization.as_deref().unwrap().starts_with("DPoP "));
    }
    let last = h.api.last_dpop_proof().unwrap();
    assert_eq!(last["claims"]["htm"], "GET");
    assert_eq!(
        last["claims"]["htu"],
        format!("{}/d", h.api_url()),
        "no query in htu"
    );
    assert!(last["claims"]["ath"].is_string());
    h.stop().await;
}

#[tokio::test]
async fn both_nonce_dances_cost_one_round_trip_each_then_nonces_are_remembered() {
    let h = Harness::start(Setup {
        route_extra: dpop_route(),
        ..Setup::default()
    })
    .await;
    h.auth.set_dpop_nonce_required(true);
    h.api.set_dpop_nonce_required(true);
    let (status, body) = get(&h).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(h.auth.dpop_nonce_challenges(), 1);
    assert_eq!(h.api.dpop_nonce_challenges(), 1);
    assert_eq!(h.auth.tokens_issued(), 1);
    // Steady traffic carries the remembered nonce: no more challenges.
    for _ in 0..3 {
        assert_eq!(get(&h).await.0, 200);
    }
    assert_eq!(h.api.dpop_nonce_challenges(), 1);
    // The resource server rotates its nonce: one challenge, same token (not invalidated).
    h.api.rotate_dpop_nonce();
    assert_eq!(get(&h).await.0, 200);
    assert_eq!(h.api.dpop_nonce_challenges(), 2);
    assert_eq!(
        h.auth.token_requests(),
        2,
        "first token request + its nonce resend only"
    );
    h.stop().await;
}

#[tokio::test]
async fn a_request_sees_at_most_one_nonce_resend_and_one_token_resend() {
    let h = Harness::start(Setup {
        route_extra: dpop_route(),
        ..Setup::default()
    })
    .await;
    h.api.set_dpop_nonce_required(true);
    h.api.set_reject_all(true);
    let (status, _) = get(&h).await;
    assert_eq!(status, 401);
    let attempts = h.api.requests();
    assert!(
        (2..=3).contains(&attempts),
        "never a loop: {attempts} attempts"
    );
    h.stop().await;
}

#[tokio::test]
async fn a_bearer_answer_on_a_dpop_route_is_refused_by_default() {
    let h = Harness::start(Setup {
        route_extra: dpop_route(),
        ..Setup::default()
    })
    .await;
    h.auth.set_dpop_answers_bearer(true);
    let (status, body) = get(&h).await;
    assert_eq!(status, 502);
    assert!(body.contains("dpop_required"), "{body}");
    assert_eq!(h.api.requests(), 0);
    h.stop().await;
}

#[tokio::test]
async fn the_401_retry_on_a_dpop_route_sends_a_fresh_proof_with_the_new_token() {
    let h = Harness::start(Setup {
        route_extra: dpop_route(),
        ..Setup::default()
    })
    .await;
    let (_, first) = get(&h).await;
    let jti: serde_json::Value = serde_json::from_str(&first).unwrap();
    h.api.revoke(jti["jti"].as_str().unwrap());
    let (status, body) = get(&h).await;
    assert_eq!(status, 200, "{body}");
    let seen = h.api.seen();
    assert!(seen[seen.len() - 1].dpop);
    assert_eq!(h.auth.token_requests(), 2);
    h.stop().await;
}

#[tokio::test]
async fn a_certificate_bound_token_travels_only_with_its_certificate() {
    let client_pki = TestPki::new("client CA").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, support::CLIENT_SECRET).unwrap();
    let (cert, key) = support::client_identity(&client_pki, "svc.clients.test", dir.path());
    let setup = |bound: bool| {
        Setup {
        client_toml: Some(format!(
            "client_id = \"{CLIENT_ID}\"\nissuer = \"{{issuer}}\"\nauth = \"client_secret_basic\"\n\
             client_secret = {{ file = \"{}\" }}\nclient_cert = \"{cert}\"\nclient_key = {{ file = \"{key}\" }}",
            secret.display()
        )),
        route_extra: format!("scopes = [\"{SCOPE}\"]\nmtls_bound = {bound}"),
        api_client_ca: Some(client_pki.ca_cert_der()),
        ..Setup::default()
    }
    };
    for bound in [true, false] {
        let h = Harness::start(setup(bound)).await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        h.auth
            .enable_mtls(listener, &h.pki, &["localhost"], client_pki.ca_cert_der())
            .unwrap();
        h.auth.set_certificate_bound_tokens(true);
        h.auth.register_client(
            ClientRegistration::new(CLIENT_ID, ClientAuthSpec::secret(support::CLIENT_SECRET))
                .with_scopes(&[SCOPE]),
        );
        let (status, body) = get(&h).await;
        if bound {
            assert_eq!(status, 200, "{body}");
        } else {
            assert_eq!(
                status, 401,
                "without the certificate the bound token is refused: {body}"
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        h.stop().await;
    }
}
