//! Client authentication methods: `client_secret_jwt`, `private_key_jwt`,
//! `tls_client_auth` on the mTLS alias, and public clients.

use jsonwebtoken::{Algorithm, EncodingKey};
use oauth_egress_devserver::{
    AssertionAudience, ClientAuthSpec, ClientRegistration, JwtPublicKey, TestPki,
};
use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
use serde_json::{json, Value};

use super::{assertion_claims, error_code, listener, now, setup, sign, status_and_json, Env};

const JWT_BEARER_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

impl Env {
    /// A client credentials request authenticated by `assertion` (no client_id).
    async fn with_assertion(&self, assertion: &str) -> (u16, Value) {
        let form = [
            ("grant_type", "client_credentials"),
            ("client_assertion_type", JWT_BEARER_TYPE),
            ("client_assertion", assertion),
        ];
        status_and_json(self.token_request(&form, None).await).await
    }
}

/// Asserts a `401 invalid_client` whose description contains `why`.
fn assert_refused((status, body): (u16, Value), why: &str) {
    assert_eq!(status, 401, "{body}");
    assert_eq!(error_code(&body), "invalid_client", "{body}");
    let description = body["error_description"].as_str().unwrap_or_default();
    assert!(description.contains(why), "{description:?} lacks {why:?}");
}

#[tokio::test]
async fn client_secret_jwt_checks_every_claim() {
    let env = setup().await;
    let secret = "jwt-secret-of-at-least-32-bytes!!";
    env.auth.register_client(ClientRegistration::new(
        "svc-hs",
        ClientAuthSpec::secret_jwt(secret),
    ));
    let key = EncodingKey::from_secret(secret.as_bytes());
    let endpoint = env.auth.token_endpoint();

    let good = sign(
        Algorithm::HS256,
        &key,
        &assertion_claims("svc-hs", &endpoint, 60),
    );
    let (status, body) = env.with_assertion(&good).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        env.auth.last_auth_method().as_deref(),
        Some("client_secret_jwt")
    );
    let recorded = env.auth.last_assertion().expect("assertion recorded");
    assert_eq!(recorded["header"]["alg"], "HS256");
    assert_eq!(recorded["claims"]["aud"], endpoint.as_str());
    let token = body["access_token"].as_str().expect("token");
    let claims = env
        .auth
        .verifier()
        .verify(token, None, None)
        .expect("valid");
    assert_eq!(claims.sub, "svc-hs");

    assert_refused(env.with_assertion(&good).await, "jti reused");

    let mut bad_cases: Vec<(Value, &str)> = Vec::new();
    let base = |f: &dyn Fn(&mut Value)| {
        let mut claims = assertion_claims("svc-hs", &endpoint, 60);
        f(&mut claims);
        claims
    };
    bad_cases.push((base(&|c| c["aud"] = json!(env.auth.issuer())), "aud"));
    bad_cases.push((base(&|c| c["exp"] = json!(now() - 5)), "expired"));
    bad_cases.push((base(&|c| c["exp"] = json!(now() + 3600)), "ahead"));
    bad_cases.push((base(&|c| c["iat"] = json!(now() + 120)), "iat"));
    bad_cases.push((base(&|c| c["nbf"] = json!(now() + 120)), "nbf"));
    bad_cases.push((
        base(&|c| {
            c.as_object_mut().expect("object").remove("jti");
        }),
        "jti",
    ));
    bad_cases.push((
        base(&|c| {
            c.as_object_mut().expect("object").remove("exp");
        }),
        "exp",
    ));
    bad_cases.push((base(&|c| c["iss"] = json!("someone-else")), "iss"));
    for (claims, why) in bad_cases {
        assert_refused(
            env.with_assertion(&sign(Algorithm::HS256, &key, &claims))
                .await,
            why,
        );
    }
    // Signed with another secret.
    let wrong = EncodingKey::from_secret(b"another-secret-of-32-bytes-length");
    let claims = assertion_claims("svc-hs", &endpoint, 60);
    assert_refused(
        env.with_assertion(&sign(Algorithm::HS256, &wrong, &claims))
            .await,
        "signature",
    );
    // The secret itself is no good as client_secret_post for this client.
    let form = [
        ("grant_type", "client_credentials"),
        ("client_id", "svc-hs"),
        ("client_secret", secret),
    ];
    assert_refused(
        status_and_json(env.token_request(&form, None).await).await,
        "not registered for client_secret_post",
    );

    // A client whose registration says assertions name the issuer.
    let issuer_aud =
        ClientAuthSpec::secret_jwt(secret).with_assertion_audience(AssertionAudience::Issuer);
    env.auth
        .register_client(ClientRegistration::new("svc-iss", issuer_aud));
    let to_issuer = assertion_claims("svc-iss", &env.auth.issuer(), 60);
    let (status, _) = env
        .with_assertion(&sign(Algorithm::HS256, &key, &to_issuer))
        .await;
    assert_eq!(status, 200);
    let to_endpoint = assertion_claims("svc-iss", &endpoint, 60);
    assert_refused(
        env.with_assertion(&sign(Algorithm::HS256, &key, &to_endpoint))
            .await,
        "aud",
    );
}

fn rsa_key() -> (EncodingKey, JwtPublicKey) {
    let private = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).expect("rsa key");
    let pem = private.to_pkcs8_pem(LineEnding::LF).expect("pem");
    let public = private
        .to_public_key()
        .to_public_key_pem(LineEnding::LF)
        .expect("public pem");
    (
        EncodingKey::from_rsa_pem(pem.as_bytes()).expect("encoding key"),
        JwtPublicKey::from_pem(&public).expect("public key"),
    )
}

#[tokio::test]
async fn private_key_jwt_with_rsa_and_ec_keys() {
    let env = setup().await;
    let endpoint = env.auth.token_endpoint();
    let (rsa_private, rsa_public) = rsa_key();
    env.auth.register_client(ClientRegistration::new(
        "svc-rsa",
        ClientAuthSpec::private_key_jwt(rsa_public, &[Algorithm::RS256, Algorithm::PS256]),
    ));
    for alg in [Algorithm::RS256, Algorithm::PS256] {
        let claims = assertion_claims("svc-rsa", &endpoint, 300);
        let (status, body) = env.with_assertion(&sign(alg, &rsa_private, &claims)).await;
        assert_eq!(status, 200, "{alg:?}: {body}");
        assert_eq!(
            env.auth.last_auth_method().as_deref(),
            Some("private_key_jwt")
        );
    }
    // Signed by a key that is not the registered one.
    let (other_private, _) = rsa_key();
    let claims = assertion_claims("svc-rsa", &endpoint, 300);
    assert_refused(
        env.with_assertion(&sign(Algorithm::RS256, &other_private, &claims))
            .await,
        "signature",
    );

    // An EC client registered by JWK, allowed ES256 only.
    let ec = oauth_egress_devserver::WorkloadIssuer::new("unused").expect("ec key");
    let ec_private = EncodingKey::from_ec_pem(ec.private_key_pem().as_bytes()).expect("ec");
    let ec_public = JwtPublicKey::from_jwk(ec.public_jwk()).expect("jwk");
    env.auth.register_client(
        ClientRegistration::new(
            "svc-ec",
            ClientAuthSpec::private_key_jwt(ec_public, &[Algorithm::ES256]),
        )
        .with_scopes(&["read"]),
    );
    let claims = assertion_claims("svc-ec", &endpoint, 300);
    let (status, body) = env
        .with_assertion(&sign(Algorithm::ES256, &ec_private, &claims))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["scope"], "read");
    // The RSA client may not use ES256, and the EC key is not its key anyway.
    let claims = assertion_claims("svc-rsa", &endpoint, 300);
    assert_refused(
        env.with_assertion(&sign(Algorithm::ES256, &ec_private, &claims))
            .await,
        "not allowed",
    );
    // A secret client cannot use private_key_jwt.
    let claims = assertion_claims("svc-a", &endpoint, 300);
    assert_refused(
        env.with_assertion(&sign(Algorithm::ES256, &ec_private, &claims))
            .await,
        "not registered for private_key_jwt",
    );
    // Wrong client_assertion_type.
    let claims = assertion_claims("svc-ec", &endpoint, 300);
    let form = [
        ("grant_type", "client_credentials"),
        ("client_assertion_type", "urn:example:wrong"),
        (
            "client_assertion",
            &sign(Algorithm::ES256, &ec_private, &claims),
        ),
    ];
    let (status, body) = status_and_json(env.token_request(&form, None).await).await;
    assert_eq!((status, error_code(&body)), (400, "invalid_request"));
}

#[tokio::test]
async fn tls_client_auth_only_on_the_mtls_alias() {
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
    assert_eq!(
        env.auth.mtls_token_endpoint().as_deref(),
        Some(alias.as_str())
    );
    env.auth.register_client(
        ClientRegistration::new(
            "svc-mtls",
            ClientAuthSpec::tls_client_auth("svc-mtls.clients.test"),
        )
        .with_scopes(&["read"]),
    );
    let form = [
        ("grant_type", "client_credentials"),
        ("client_id", "svc-mtls"),
    ];
    let with_cert = |pki: &TestPki, names: &[&str]| {
        let (chain, key) = pki.client_leaf(names).expect("client leaf");
        let config = env.pki.client_config_with_cert(chain, key).expect("config");
        reqwest::Client::builder()
            .use_preconfigured_tls(config)
            .no_proxy()
            .resolve("localhost", std::net::SocketAddr::from(([127, 0, 0, 1], 0)))
            .build()
            .expect("client")
    };

    let good = with_cert(&client_pki, &["svc-mtls.clients.test"]);
    let response = good.post(&alias).form(&form).send().await.expect("post");
    let (status, body) = status_and_json(response).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        env.auth.last_auth_method().as_deref(),
        Some("tls_client_auth")
    );
    assert_eq!(body["scope"], "read");

    // The same client on the ordinary listener has no certificate to show.
    let response = good
        .post(env.auth.token_endpoint())
        .form(&form)
        .send()
        .await
        .expect("post");
    assert_refused(status_and_json(response).await, "mTLS endpoint alias");

    // A certificate from the right CA for another name.
    let other = with_cert(&client_pki, &["svc-other.clients.test"]);
    let response = other.post(&alias).form(&form).send().await.expect("post");
    assert_refused(status_and_json(response).await, "tls_client_auth_san_dns");

    // A certificate from another CA, and no certificate at all: no handshake.
    let foreign = with_cert(&env.pki, &["svc-mtls.clients.test"]);
    assert!(foreign.post(&alias).form(&form).send().await.is_err());
    assert!(env.http.post(&alias).form(&form).send().await.is_err());

    // Secret clients work on the alias too (with any accepted certificate).
    let form = [
        ("grant_type", "client_credentials"),
        ("client_id", "svc-any"),
        ("client_secret", "any-secret"),
    ];
    let response = other.post(&alias).form(&form).send().await.expect("post");
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn public_clients_send_only_their_id() {
    let env = setup().await;
    env.auth.register_client(ClientRegistration::new(
        "app-public",
        ClientAuthSpec::public(),
    ));
    let refresh = env.auth.issue_refresh_token("app-public", Some("read"));
    let form = [
        ("grant_type", "refresh_token"),
        ("client_id", "app-public"),
        ("refresh_token", refresh.as_str()),
    ];
    let (status, body) = status_and_json(env.token_request(&form, None).await).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(env.auth.last_auth_method().as_deref(), Some("none"));
    assert_eq!(body["scope"], "read");

    // Public clients may not use client_credentials.
    let form = [
        ("grant_type", "client_credentials"),
        ("client_id", "app-public"),
    ];
    let (status, body) = status_and_json(env.token_request(&form, None).await).await;
    assert_eq!((status, error_code(&body)), (400, "unauthorized_client"));

    // A public client must not present a secret it was never given.
    let form = [
        ("grant_type", "client_credentials"),
        ("client_id", "app-public"),
        ("client_secret", "guess"),
    ];
    let (status, body) = status_and_json(env.token_request(&form, None).await).await;
    assert_eq!((status, error_code(&body)), (401, "invalid_client"));

    // A secret-only client cannot act as a public one.
    let form = [("grant_type", "client_credentials"), ("client_id", "svc-a")];
    assert_refused(
        status_and_json(env.token_request(&form, None).await).await,
        "not registered as public",
    );
}
