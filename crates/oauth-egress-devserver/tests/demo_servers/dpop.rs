//! Sender-constrained tokens: DPoP (RFC 9449) at the token endpoint and the echo
//! API, with proofs built here from scratch (p256, raw `r||s` ES256 signatures).
//! Certificate-bound tokens (RFC 8705 §3) are in `mtls_bound.rs`.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use oauth_egress_devserver::jwk_thumbprint;
use p256::ecdsa::signature::Signer as _;
use p256::ecdsa::{Signature, SigningKey};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::{basic, error_code, fresh_jti, now, setup, status_and_json, Env, AUDIENCE, SECRET};

/// A client's DPoP key pair and its public JWK.
pub(super) struct DpopKey {
    key: SigningKey,
    pub(super) jwk: Value,
}

impl DpopKey {
    pub(super) fn new() -> DpopKey {
        let key = loop {
            if let Ok(key) = SigningKey::from_slice(&rand::random::<[u8; 32]>()) {
                break key;
            }
        };
        let point = key.verifying_key().to_encoded_point(false);
        let coordinate = |c: Option<&_>| URL_SAFE_NO_PAD.encode(c.expect("uncompressed point"));
        let jwk = json!({
            "kty": "EC", "crv": "P-256",
            "x": coordinate(point.x()), "y": coordinate(point.y()),
        });
        DpopKey { key, jwk }
    }

    /// A compact JWS of `header` and `claims`, signed ES256 with this key.
    pub(super) fn sign(&self, header: &Value, claims: &Value) -> String {
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature: Signature = self.key.sign(input.as_bytes());
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.to_bytes()))
    }

    /// The standard proof header: `typ` `dpop+jwt`, ES256 and our public JWK.
    pub(super) fn header(&self) -> Value {
        json!({ "typ": "dpop+jwt", "alg": "ES256", "jwk": self.jwk })
    }

    /// A fresh proof for `htm` `htu`, with `ath` of `token` and `nonce` if given.
    pub(super) fn proof(
        &self,
        htm: &str,
        htu: &str,
        token: Option<&str>,
        nonce: Option<&str>,
    ) -> String {
        let mut claims = json!({ "jti": fresh_jti(), "htm": htm, "htu": htu, "iat": now() });
        if let Some(token) = token {
            claims["ath"] = json!(ath(token));
        }
        if let Some(nonce) = nonce {
            claims["nonce"] = json!(nonce);
        }
        self.sign(&self.header(), &claims)
    }

    pub(super) fn thumbprint(&self) -> String {
        jwk_thumbprint(&self.jwk).expect("thumbprint")
    }
}

/// base64url(SHA-256(token)).
pub(super) fn ath(token: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(token.as_bytes()))
}

/// The claims of a JWT, unverified.
pub(super) fn jwt_claims(jwt: &str) -> Value {
    let payload = jwt.split('.').nth(1).expect("payload");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).expect("b64")).expect("json")
}

const FORM: [(&str, &str); 3] = [
    ("grant_type", "client_credentials"),
    ("scope", "read"),
    ("audience", AUDIENCE),
];

impl Env {
    /// A client credentials request for svc-a with `proof` as the `DPoP` header.
    async fn dpop_token_request(&self, proof: Option<&str>) -> reqwest::Response {
        let mut request = self
            .http
            .post(self.auth.token_endpoint())
            .header("authorization", basic("svc-a", SECRET))
            .form(&FORM);
        if let Some(proof) = proof {
            request = request.header("dpop", proof);
        }
        request.send().await.expect("token request")
    }

    /// A DPoP-bound token for `key`.
    async fn dpop_token(&self, key: &DpopKey) -> String {
        let proof = key.proof("POST", &self.auth.token_endpoint(), None, None);
        let (status, body) = status_and_json(self.dpop_token_request(Some(&proof)).await).await;
        assert_eq!(status, 200, "{body}");
        body["access_token"].as_str().expect("token").to_string()
    }

    /// `POST /v1/items?x=1` at the echo API with `Authorization: {scheme} {token}`.
    async fn dpop_call(&self, scheme: &str, token: &str, proof: Option<&str>) -> reqwest::Response {
        let mut request = self
            .http
            .post(self.api_url("/v1/items?x=1"))
            .header("authorization", format!("{scheme} {token}"))
            .body("hello");
        if let Some(proof) = proof {
            request = request.header("dpop", proof);
        }
        request.send().await.expect("api request")
    }
}

fn challenge(response: &reqwest::Response) -> String {
    response
        .headers()
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

fn nonce_header(response: &reqwest::Response) -> Option<String> {
    let value = response.headers().get("dpop-nonce")?;
    Some(value.to_str().expect("ascii").to_string())
}

#[tokio::test]
async fn token_endpoint_binds_tokens_to_the_proof_key() {
    let env = setup().await;
    let key = DpopKey::new();
    let endpoint = env.auth.token_endpoint();

    // Normalisation: upper-case scheme/host and an explicit query are fine.
    let loud = endpoint.replace("https://localhost", "HTTPS://LOCALHOST") + "?x=1";
    let proof = key.proof("POST", &loud, None, None);
    let (status, body) = status_and_json(env.dpop_token_request(Some(&proof)).await).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["token_type"], "DPoP");
    let claims = jwt_claims(body["access_token"].as_str().expect("token"));
    assert_eq!(claims["cnf"], json!({ "jkt": key.thumbprint() }));
    assert_eq!(env.auth.dpop_proofs(), 1);
    let recorded = env.auth.last_dpop_proof().expect("recorded");
    assert_eq!(recorded["header"]["typ"], "dpop+jwt");
    assert_eq!(recorded["claims"]["htm"], "POST");

    // The same proof again is a replay.
    let (status, body) = status_and_json(env.dpop_token_request(Some(&proof)).await).await;
    assert_eq!((status, error_code(&body)), (400, "invalid_dpop_proof"));

    // No proof: a plain Bearer token without cnf.
    let (status, body) = status_and_json(env.dpop_token_request(None).await).await;
    assert_eq!((status, body["token_type"].as_str()), (200, Some("Bearer")));
    assert!(jwt_claims(body["access_token"].as_str().expect("token"))["cnf"].is_null());

    // Broken proofs.
    let other_port = format!("https://localhost:1{}", "/token");
    let wrong_typ = key.sign(
        &json!({ "typ": "JWT", "alg": "ES256", "jwk": key.jwk }),
        &json!({ "jti": fresh_jti(), "htm": "POST", "htu": endpoint, "iat": now() }),
    );
    let mut private_jwk = key.jwk.clone();
    private_jwk["d"] = json!("AAAA");
    let private = key.sign(
        &json!({ "typ": "dpop+jwt", "alg": "ES256", "jwk": private_jwk }),
        &json!({ "jti": fresh_jti(), "htm": "POST", "htu": endpoint, "iat": now() }),
    );
    let stale = key.sign(
        &key.header(),
        &json!({ "jti": fresh_jti(), "htm": "POST", "htu": endpoint, "iat": now() - 120 }),
    );
    let forged = {
        let good = key.proof("POST", &endpoint, None, None);
        let (input, _) = good.rsplit_once('.').expect("jws");
        let other = DpopKey::new().sign(&key.header(), &json!({}));
        format!("{input}.{}", other.rsplit_once('.').expect("jws").1)
    };
    for bad in [
        key.proof("GET", &endpoint, None, None),
        key.proof("POST", &other_port, None, None),
        wrong_typ,
        private,
        stale,
        forged,
        "not.a.jws".to_string(),
    ] {
        let (status, body) = status_and_json(env.dpop_token_request(Some(&bad)).await).await;
        assert_eq!(
            (status, error_code(&body)),
            (400, "invalid_dpop_proof"),
            "{body}"
        );
    }

    // The Bearer knob: still bound, but labelled Bearer.
    env.auth.set_dpop_answers_bearer(true);
    let proof = key.proof("POST", &endpoint, None, None);
    let (status, body) = status_and_json(env.dpop_token_request(Some(&proof)).await).await;
    assert_eq!((status, body["token_type"].as_str()), (200, Some("Bearer")));
    let claims = jwt_claims(body["access_token"].as_str().expect("token"));
    assert_eq!(claims["cnf"]["jkt"], key.thumbprint());
}

#[tokio::test]
async fn token_endpoint_nonce_dance() {
    let env = setup().await;
    env.auth.set_dpop_nonce_required(true);
    let key = DpopKey::new();
    let endpoint = env.auth.token_endpoint();

    let response = env
        .dpop_token_request(Some(&key.proof("POST", &endpoint, None, None)))
        .await;
    let nonce = nonce_header(&response).expect("DPoP-Nonce on the challenge");
    assert_eq!(nonce, env.auth.dpop_nonce());
    let (status, body) = status_and_json(response).await;
    assert_eq!((status, error_code(&body)), (400, "use_dpop_nonce"));
    assert_eq!(env.auth.dpop_nonce_challenges(), 1);

    let proof = key.proof("POST", &endpoint, None, Some(&nonce));
    let response = env.dpop_token_request(Some(&proof)).await;
    assert_eq!(nonce_header(&response).as_deref(), Some(nonce.as_str()));
    let (status, body) = status_and_json(response).await;
    assert_eq!((status, body["token_type"].as_str()), (200, Some("DPoP")));

    // After a rotation the old nonce is refused again.
    let fresh = env.auth.rotate_dpop_nonce();
    let proof = key.proof("POST", &endpoint, None, Some(&nonce));
    let response = env.dpop_token_request(Some(&proof)).await;
    assert_eq!(nonce_header(&response), Some(fresh));
    assert_eq!(response.status(), 400);
    assert_eq!(env.auth.dpop_nonce_challenges(), 2);
    assert_eq!(env.auth.dpop_proofs(), 3);
}

#[tokio::test]
async fn echo_api_checks_dpop_bound_tokens() {
    let env = setup().await;
    let key = DpopKey::new();
    let token = env.dpop_token(&key).await;
    let htu = env.api_url("/v1/items");

    let good = key.proof("POST", &htu, Some(&token), None);
    let response = env.dpop_call("DPoP", &token, Some(&good)).await;
    assert_eq!(response.status(), 200);
    assert!(nonce_header(&response).is_none());
    let seen = env.api.seen().pop().expect("seen");
    assert!(seen.dpop && !seen.dpop_nonce_challenged);
    assert_eq!(env.api.dpop_proofs(), 1);

    let other = DpopKey::new();
    let cases = [
        ("replayed proof", good.clone()),
        ("wrong htm", key.proof("PUT", &htu, Some(&token), None)),
        (
            "wrong htu",
            key.proof("POST", &env.api_url("/v1/other"), Some(&token), None),
        ),
        ("wrong ath", key.proof("POST", &htu, Some("another"), None)),
        ("no ath", key.proof("POST", &htu, None, None)),
        ("other key", other.proof("POST", &htu, Some(&token), None)),
    ];
    for (what, proof) in cases {
        let response = env.dpop_call("DPoP", &token, Some(&proof)).await;
        assert_eq!(response.status(), 401, "{what}");
        let challenge = challenge(&response);
        assert!(
            challenge.starts_with("DPoP error=\"invalid_dpop_proof\""),
            "{what}: {challenge}"
        );
        assert!(!env.api.seen().pop().expect("seen").dpop, "{what}");
    }

    // No proof at all, and the DPoP token as a Bearer token.
    let response = env.dpop_call("DPoP", &token, None).await;
    assert!(challenge(&response).contains("invalid_dpop_proof"));
    let fresh = key.proof("POST", &htu, Some(&token), None);
    let response = env.dpop_call("Bearer", &token, Some(&fresh)).await;
    assert_eq!(response.status(), 401);
    assert!(challenge(&response).contains("error=\"invalid_token\""));
    let (_, body) = status_and_json(response).await;
    assert_eq!(error_code(&body), "invalid_token");

    // An unbound token under the DPoP scheme is refused; as Bearer it works.
    let bearer = env.good_token().await;
    let proof = key.proof("POST", &htu, Some(&bearer), None);
    let response = env.dpop_call("DPoP", &bearer, Some(&proof)).await;
    assert!(challenge(&response).contains("invalid_token"));
    assert_eq!(env.call_api(Some(&bearer)).await.status(), 200);

    // The nonce dance.
    env.api.set_dpop_nonce_required(true);
    let proof = key.proof("POST", &htu, Some(&token), None);
    let response = env.dpop_call("DPoP", &token, Some(&proof)).await;
    assert_eq!(response.status(), 401);
    assert!(challenge(&response).starts_with("DPoP error=\"use_dpop_nonce\""));
    let nonce = nonce_header(&response).expect("DPoP-Nonce");
    assert_eq!(nonce, env.api.dpop_nonce());
    assert!(env.api.seen().pop().expect("seen").dpop_nonce_challenged);
    assert_eq!(env.api.dpop_nonce_challenges(), 1);
    let proof = key.proof("POST", &htu, Some(&token), Some(&nonce));
    let response = env.dpop_call("DPoP", &token, Some(&proof)).await;
    assert_eq!(response.status(), 200);
    assert_eq!(nonce_header(&response), Some(nonce));
    // Every answer carries the nonce, refusals too.
    assert!(nonce_header(&env.call_api(None).await).is_some());
}
