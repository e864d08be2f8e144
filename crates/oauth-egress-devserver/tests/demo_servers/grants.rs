//! The grants beyond client credentials: token exchange, refresh token rotation
//! and the JWT bearer grant.

use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey};
use oauth_egress_devserver::WorkloadIssuer;
use serde_json::{json, Value};

use super::{basic, error_code, fresh_jti, now, setup, sign, status_and_json, Env, SECRET};

const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
const TT_JWT: &str = "urn:ietf:params:oauth:token-type:jwt";
const TT_ACCESS: &str = "urn:ietf:params:oauth:token-type:access_token";

impl Env {
    /// A token request from svc-a via HTTP Basic.
    async fn as_svc_a(&self, form: &[(&str, &str)]) -> (u16, Value) {
        let response = self
            .token_request(form, Some(&basic("svc-a", SECRET)))
            .await;
        status_and_json(response).await
    }

    fn claims_of(&self, body: &Value) -> Value {
        let token = body["access_token"].as_str().expect("access_token");
        let claims = self
            .auth
            .verifier()
            .verify(token, None, None)
            .expect("valid");
        serde_json::to_value(claims).expect("claims")
    }
}

#[tokio::test]
async fn token_exchange_puts_subject_and_actor_into_the_token() {
    let env = setup().await;
    let workload = WorkloadIssuer::new("https://k8s.example").expect("issuer");
    env.auth
        .trust_issuer(workload.iss(), workload.public_key().expect("key"));
    let subject = workload
        .mint(
            "system:serviceaccount:ns:app",
            "sts",
            Duration::from_secs(300),
        )
        .expect("mint");

    let form = [
        ("grant_type", TOKEN_EXCHANGE),
        ("subject_token", subject.as_str()),
        ("subject_token_type", TT_JWT),
        ("audience", super::AUDIENCE),
        ("scope", "read"),
    ];
    let (status, body) = env.as_svc_a(&form).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["issued_token_type"], TT_ACCESS);
    assert_eq!(body["scope"], "read");
    let claims = env.claims_of(&body);
    assert_eq!(claims["sub"], "system:serviceaccount:ns:app");
    assert_eq!(claims["act"], json!({ "sub": "svc-a" }));
    assert_eq!(claims["aud"], super::AUDIENCE);
    assert_eq!(
        env.auth.last_subject_sub().as_deref(),
        Some("system:serviceaccount:ns:app")
    );
    let token = body["access_token"].as_str().expect("token").to_string();
    assert_eq!(env.call_api(Some(&token)).await.status(), 200);

    // With an actor token; and the server's own access token as the subject.
    let actor = workload
        .mint("spiffe://example/agent", "sts", Duration::from_secs(60))
        .expect("mint");
    let form = [
        ("grant_type", TOKEN_EXCHANGE),
        ("subject_token", token.as_str()),
        ("subject_token_type", TT_ACCESS),
        ("actor_token", actor.as_str()),
        ("actor_token_type", TT_JWT),
    ];
    let (status, body) = env.as_svc_a(&form).await;
    assert_eq!(status, 200, "{body}");
    let claims = env.claims_of(&body);
    assert_eq!(claims["sub"], "system:serviceaccount:ns:app");
    assert_eq!(claims["act"]["sub"], "spiffe://example/agent");

    // Expired, untrusted or missing subject tokens are refused.
    let expired = workload
        .mint_claims(&json!({
            "iss": workload.iss(), "sub": "late", "aud": "sts",
            "iat": now() - 600, "exp": now() - 60,
        }))
        .expect("mint");
    let stranger = WorkloadIssuer::new("https://stranger.example").expect("issuer");
    let untrusted = stranger
        .mint("x", "sts", Duration::from_secs(60))
        .expect("mint");
    for (token, kind, code) in [
        (expired.as_str(), TT_JWT, "invalid_grant"),
        (untrusted.as_str(), TT_JWT, "invalid_grant"),
        ("not-a-jwt", TT_JWT, "invalid_grant"),
        (subject.as_str(), "", "invalid_request"),
        ("", TT_JWT, "invalid_request"),
    ] {
        let form = [
            ("grant_type", TOKEN_EXCHANGE),
            ("subject_token", token),
            ("subject_token_type", kind),
        ];
        let (status, body) = env.as_svc_a(&form).await;
        assert_eq!((status, error_code(&body)), (400, code), "{body}");
    }
    assert_eq!(env.auth.grants().get(TOKEN_EXCHANGE), Some(&2));
}

#[tokio::test]
async fn refresh_tokens_rotate_and_reuse_revokes_the_family() {
    let env = setup().await;
    let first = env.auth.issue_refresh_token("svc-a", Some("read write"));
    let refresh = |token: &str| {
        [
            ("grant_type", "refresh_token".to_string()),
            ("refresh_token", token.to_string()),
        ]
    };
    let send = |token: String| {
        let env = &env;
        async move {
            let form = refresh(&token);
            let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
            env.as_svc_a(&form).await
        }
    };

    let (status, body) = send(first.clone()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["scope"], "read write");
    let second = body["refresh_token"].as_str().expect("rotated").to_string();
    assert_ne!(second, first);
    assert_eq!(env.claims_of(&body)["sub"], "svc-a");

    let (status, body) = send(second.clone()).await;
    assert_eq!(status, 200, "the rotated token works: {body}");
    let third = body["refresh_token"].as_str().expect("rotated").to_string();

    // Reusing the first (dead) token fails and revokes the family: the newest too.
    let (status, body) = send(first.clone()).await;
    assert_eq!((status, error_code(&body)), (400, "invalid_grant"));
    assert!(body["error_description"]
        .as_str()
        .unwrap_or_default()
        .contains("reused"));
    let (status, body) = send(third).await;
    assert_eq!((status, error_code(&body)), (400, "invalid_grant"));
    assert_eq!(env.auth.refresh_grants(), 4);
    assert_eq!(env.auth.grants().get("refresh_token"), Some(&2));

    // Narrowing the scope works, widening does not; other clients cannot use it.
    let fresh = env.auth.issue_refresh_token("svc-a", Some("read"));
    let form = [
        ("grant_type", "refresh_token"),
        ("refresh_token", fresh.as_str()),
        ("scope", "read write"),
    ];
    let (status, body) = env.as_svc_a(&form).await;
    assert_eq!((status, error_code(&body)), (400, "invalid_scope"));
    let form = [
        ("grant_type", "refresh_token"),
        ("refresh_token", fresh.as_str()),
    ];
    let response = env
        .token_request(&form, Some(&basic("svc-any", "any-secret")))
        .await;
    let (status, body) = status_and_json(response).await;
    assert_eq!((status, error_code(&body)), (400, "invalid_grant"));

    // Without rotation the same token keeps working and none is returned.
    env.auth.set_rotate_refresh_tokens(false);
    for _ in 0..2 {
        let (status, body) = send(fresh.clone()).await;
        assert_eq!(status, 200, "{body}");
        assert!(body.get("refresh_token").is_none());
    }
}

#[tokio::test]
async fn jwt_bearer_grant_checks_the_assertion() {
    let env = setup().await;
    let signer = WorkloadIssuer::new("svc-account@example.iam").expect("signer");
    env.auth
        .trust_assertion_key(
            signer.iss(),
            signer.public_key().expect("key"),
            Algorithm::ES256,
        )
        .expect("trust");
    let key = EncodingKey::from_ec_pem(signer.private_key_pem().as_bytes()).expect("key");
    let claims = |aud: &str| {
        json!({
            "iss": signer.iss(), "sub": "user@example.com", "aud": aud,
            "scope": "read write", "iat": now(), "exp": now() + 600, "jti": fresh_jti(),
        })
    };

    // No client authentication at all.
    let assertion = sign(Algorithm::ES256, &key, &claims(&env.auth.token_endpoint()));
    let form = [
        ("grant_type", JWT_BEARER),
        ("assertion", assertion.as_str()),
    ];
    let (status, body) = status_and_json(env.token_request(&form, None).await).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["scope"], "read write");
    let issued = env.claims_of(&body);
    assert_eq!(issued["sub"], "user@example.com");
    assert_eq!(issued["client_id"], signer.iss());
    assert_eq!(env.auth.grants().get(JWT_BEARER), Some(&1));
    assert_eq!(env.auth.last_auth_method(), None);

    // The same assertion again (jti replay), a wrong aud, too long-lived, bad key.
    let (status, body) = status_and_json(env.token_request(&form, None).await).await;
    assert_eq!(
        (status, error_code(&body)),
        (400, "invalid_grant"),
        "{body}"
    );
    let wrong_aud = sign(Algorithm::ES256, &key, &claims(&env.auth.issuer()));
    let mut long = claims(&env.auth.token_endpoint());
    long["exp"] = json!(now() + 7200);
    let long = sign(Algorithm::ES256, &key, &long);
    let impostor = WorkloadIssuer::new(signer.iss()).expect("impostor");
    let forged = impostor
        .mint_claims(&claims(&env.auth.token_endpoint()))
        .expect("mint");
    for bad in [wrong_aud, long, forged] {
        let form = [("grant_type", JWT_BEARER), ("assertion", bad.as_str())];
        let (status, body) = status_and_json(env.token_request(&form, None).await).await;
        assert_eq!(
            (status, error_code(&body)),
            (400, "invalid_grant"),
            "{body}"
        );
    }

    // With client authentication, the client's scope limits apply.
    let assertion = sign(Algorithm::ES256, &key, &claims(&env.auth.token_endpoint()));
    let form = [
        ("grant_type", JWT_BEARER),
        ("assertion", assertion.as_str()),
        ("scope", "admin"),
    ];
    let (status, body) = env.as_svc_a(&form).await;
    assert_eq!((status, error_code(&body)), (400, "invalid_scope"));
}
