//! Every way the proxy gets a token, against the development authorization server checking
//! what a strict server checks: client assertions (aud, jti, exp, signature), mutual TLS,
//! token exchange, refresh-token rotation, JWT bearer, discovery, and retries.

mod support;

use base64::Engine as _;

use std::time::Duration;

use jsonwebtoken::Algorithm;
use oauth_egress_devserver::{
    AssertionAudience, ClientAuthSpec, ClientRegistration, DiscoveryMode, Failure, JwtPublicKey,
    TestPki, WorkloadIssuer,
};
use support::{Harness, Setup, CLIENT_ID, SCOPE};

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

fn register(h: &Harness, auth: ClientAuthSpec) {
    h.auth
        .register_client(ClientRegistration::new(CLIENT_ID, auth).with_scopes(&[SCOPE]));
}

async fn get(h: &Harness) -> (u16, String) {
    let res = h.client().get(h.api_url()).send().await.unwrap();
    (res.status().as_u16(), res.text().await.unwrap())
}

fn client_toml(lines: &str) -> Option<String> {
    Some(format!("client_id = \"{CLIENT_ID}\"\n{lines}"))
}

/// `[clients.test]` authenticating with `auth` and the secret in the file `secret`.
fn secret_client(auth: &str, secret: &str) -> Option<String> {
    client_toml(&format!(
        "token_endpoint = \"{{token_endpoint}}\"\nauth = \"{auth}\"\nclient_secret = {{ file = \"{secret}\" }}"
    ))
}

fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> String {
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

#[tokio::test]
async fn client_secret_jwt_sends_a_fresh_strict_assertion() {
    let h = Harness::start(Setup {
        client_toml: client_toml(
            "token_endpoint = \"{token_endpoint}\"\nauth = \"client_secret_jwt\"\nclient_secret = { env = \"SET_IN_MEMORY\" }",
        ),
        ..Setup::default()
    })
    .await;
    // The secret comes from the harness' in-memory default; register the same one.
    register(&h, ClientAuthSpec::secret_jwt(support::CLIENT_SECRET));
    let (status, body) = get(&h).await;
    assert_eq!(status, 502, "the env var is unset: {body}");
    assert!(body.contains("SET_IN_MEMORY is not set"), "{body}");
    h.stop().await;

    let dir = tempfile::tempdir().unwrap();
    let secret = write(&dir, "secret", support::CLIENT_SECRET);
    let h = Harness::start(Setup {
        client_toml: secret_client("client_secret_jwt", &secret),
        ..Setup::default()
    })
    .await;
    register(&h, ClientAuthSpec::secret_jwt(support::CLIENT_SECRET));
    let (status, body) = get(&h).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        h.auth.last_auth_method().as_deref(),
        Some("client_secret_jwt")
    );
    let first = h.auth.last_assertion().unwrap();
    assert_eq!(first["header"]["alg"], "HS256");
    assert_eq!(first["claims"]["iss"], CLIENT_ID);
    assert_eq!(first["claims"]["sub"], CLIENT_ID);
    assert_eq!(first["claims"]["aud"], h.auth.token_endpoint());
    // A second token request (after a 401) carries a new jti, which the server accepts.
    h.api.revoke(json(&body)["jti"].as_str().unwrap());
    assert_eq!(get(&h).await.0, 200);
    let second = h.auth.last_assertion().unwrap();
    assert_ne!(first["claims"]["jti"], second["claims"]["jti"]);
    h.stop().await;
}

/// A harness whose client is `private_key_jwt` with `key` (PEM at `key_path`) plus `extra`
/// TOML, registered at the authorization server for ES256.
async fn es256_client(key: &rcgen::KeyPair, key_path: &str, extra: &str) -> Harness {
    let h = Harness::start(Setup {
        client_toml: client_toml(&format!(
            "token_endpoint = \"{{token_endpoint}}\"\nauth = \"private_key_jwt\"\nprivate_key = {{ file = \"{key_path}\" }}\n{extra}"
        )),
        ..Setup::default()
    })
    .await;
    let public = JwtPublicKey::from_pem(&key.public_key_pem()).unwrap();
    register(
        &h,
        ClientAuthSpec::private_key_jwt(public, &[Algorithm::ES256]),
    );
    h
}

#[tokio::test]
async fn private_key_jwt_with_ec_keys_in_pkcs8_and_sec1() {
    use p256::pkcs8::DecodePrivateKey;
    let key = rcgen::KeyPair::generate().unwrap();
    let pkcs8 = key.serialize_pem();
    let sec1 = p256::SecretKey::from_pkcs8_pem(&pkcs8)
        .unwrap()
        .to_sec1_pem(p256::pkcs8::LineEnding::LF)
        .unwrap()
        .to_string();
    for (name, pem) in [("pkcs8", pkcs8), ("sec1", sec1)] {
        let dir = tempfile::tempdir().unwrap();
        let path = write(&dir, "key.pem", &pem);
        let h = es256_client(&key, &path, &format!("key_id = \"k-{name}\"")).await;
        let (status, body) = get(&h).await;
        assert_eq!(status, 200, "{name}: {body}");
        let assertion = h.auth.last_assertion().unwrap();
        assert_eq!(assertion["header"]["alg"], "ES256");
        assert_eq!(assertion["header"]["kid"], format!("k-{name}"));
        h.stop().await;
    }
}

/// Entra ID's certificate credentials: the assertion names the key's certificate by `x5t`
/// (SHA-1) and `x5t#S256`, and the server still accepts the signature.
#[tokio::test]
async fn private_key_jwt_names_its_certificate_by_thumbprint() {
    use sha2::Digest;
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["reports-exporter".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let key_path = write(&dir, "key.pem", &key.serialize_pem());
    let cert_path = write(&dir, "cert.pem", &cert.pem());
    let h = es256_client(
        &key,
        &key_path,
        &format!("assertion_cert = \"{cert_path}\""),
    )
    .await;
    let (status, body) = get(&h).await;
    assert_eq!(status, 200, "{body}");
    let header = &h.auth.last_assertion().unwrap()["header"];
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let der = cert.der().as_ref();
    assert_eq!(header["x5t#S256"], b64(&sha2::Sha256::digest(der)));
    let sha1 = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, der);
    assert_eq!(header["x5t"], b64(sha1.as_ref()));
    h.stop().await;
}

#[tokio::test]
async fn private_key_jwt_with_rsa_keys_rs256_and_ps256() {
    use rsa::pkcs1::EncodeRsaPrivateKey;
    use rsa::pkcs8::EncodePublicKey;
    let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).unwrap();
    let private = key
        .to_pkcs1_pem(rsa::pkcs8::LineEnding::LF)
        .unwrap()
        .to_string();
    let public = key
        .to_public_key()
        .to_public_key_pem(rsa::pkcs8::LineEnding::LF)
        .unwrap();
    for alg in ["RS256", "PS256"] {
        let dir = tempfile::tempdir().unwrap();
        let path = write(&dir, "rsa.pem", &private);
        let h = Harness::start(Setup {
            client_toml: client_toml(&format!(
                "token_endpoint = \"{{token_endpoint}}\"\nauth = \"private_key_jwt\"\nprivate_key = {{ file = \"{path}\" }}\nsigning_alg = \"{alg}\""
            )),
            ..Setup::default()
        })
        .await;
        let accepted = if alg == "RS256" {
            Algorithm::RS256
        } else {
            Algorithm::PS256
        };
        register(
            &h,
            ClientAuthSpec::private_key_jwt(JwtPublicKey::from_pem(&public).unwrap(), &[accepted]),
        );
        let (status, body) = get(&h).await;
        assert_eq!(status, 200, "{alg}: {body}");
        assert_eq!(h.auth.last_assertion().unwrap()["header"]["alg"], alg);
        h.stop().await;
    }
}

#[tokio::test]
async fn a_server_that_wants_the_issuer_as_audience_gets_it() {
    let key = rcgen::KeyPair::generate().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, "key.pem", &key.serialize_pem());
    let toml = |aud: &str| {
        client_toml(&format!(
            "issuer = \"{{issuer}}\"\nauth = \"private_key_jwt\"\nprivate_key = {{ file = \"{path}\" }}\nassertion_audience = \"{aud}\""
        ))
    };
    let spec = || {
        ClientAuthSpec::private_key_jwt(JwtPublicKey::from_pem(&key.public_key_pem()).unwrap(), &[])
            .with_assertion_audience(AssertionAudience::Issuer)
    };
    // Default (token endpoint as aud): the strict server refuses it.
    let h = Harness::start(Setup {
        client_toml: toml("token_endpoint"),
        ..Setup::default()
    })
    .await;
    register(&h, spec());
    let (status, body) = get(&h).await;
    assert_eq!(status, 502);
    assert!(body.contains("invalid_client"), "{body}");
    h.stop().await;

    let h = Harness::start(Setup {
        client_toml: toml("issuer"),
        ..Setup::default()
    })
    .await;
    register(&h, spec());
    let (status, body) = get(&h).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        h.auth.last_assertion().unwrap()["claims"]["aud"],
        h.auth.issuer()
    );
    h.stop().await;
}

#[tokio::test]
async fn tls_client_auth_uses_the_discovered_mtls_alias() {
    let client_pki = TestPki::new("client CA").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key_path) = support::client_identity(&client_pki, "svc.clients.test", dir.path());
    let h = Harness::start(Setup {
        client_toml: client_toml(&format!(
            "issuer = \"{{issuer}}\"\nauth = \"tls_client_auth\"\nclient_cert = \"{cert}\"\nclient_key = {{ file = \"{key_path}\" }}"
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
    register(&h, ClientAuthSpec::tls_client_auth("svc.clients.test"));
    let (status, body) = get(&h).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        h.auth.last_auth_method().as_deref(),
        Some("tls_client_auth")
    );
    h.stop().await;
}

/// A harness whose route exchanges the caller's own token, the client authenticating with
/// `auth` (its secret in a file: the harness' in-memory secret only applies to its default
/// client block), and a workload issuer the authorization server trusts for subject tokens.
async fn inbound_exchange(auth: &str) -> (Harness, WorkloadIssuer, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let secret = write(&dir, "secret", support::CLIENT_SECRET);
    let h = Harness::start(Setup {
        client_toml: secret_client(auth, &secret),
        route_extra: format!(
            "scopes = [\"{SCOPE}\"]\ngrant = \"token_exchange\"\nsubject_token = \"inbound\""
        ),
        ..Setup::default()
    })
    .await;
    let workload = WorkloadIssuer::new("https://workloads.test").unwrap();
    h.auth
        .trust_issuer(workload.iss(), workload.public_key().unwrap());
    (h, workload, dir)
}

#[tokio::test]
async fn token_exchange_on_behalf_of_two_callers_never_shares_tokens() {
    let (h, workload, _dir) = inbound_exchange("client_secret_basic").await;
    let alice = workload
        .mint("alice", "proxy", Duration::from_secs(300))
        .unwrap();
    let bob = workload
        .mint("bob", "proxy", Duration::from_secs(300))
        .unwrap();
    let client = h.client();
    let call = |token: Option<String>| {
        let client = client.clone();
        let url = h.api_url();
        async move {
            let mut req = client.get(url);
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            let res = req.send().await.unwrap();
            (res.status().as_u16(), res.text().await.unwrap())
        }
    };
    for _ in 0..3 {
        let (status, body) = call(Some(alice.clone())).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(json(&body)["sub"], "alice");
        let (status, body) = call(Some(bob.clone())).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(json(&body)["sub"], "bob");
    }
    assert_eq!(
        h.auth.token_requests(),
        2,
        "one exchange per caller, then cached"
    );
    // The caller's own token never went upstream.
    assert!(h.api.seen().iter().all(|s| {
        let a = s.authorization.clone().unwrap_or_default();
        !a.contains(&alice) && !a.contains(&bob)
    }));
    // No token: the proxy answers 401 itself.
    let (status, body) = call(None).await;
    assert_eq!(status, 401);
    assert!(body.contains("Authorization: Bearer"), "{body}");
    // An expired caller token: 401 too, no exchange attempted.
    let expired = workload
        .mint_claims(&serde_json::json!({"iss": workload.iss(), "sub": "carol", "aud": "proxy", "exp": 1_000_000_000u64, "iat": 999_999_000u64}))
        .unwrap();
    let (status, body) = call(Some(expired)).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(h.auth.token_requests(), 2);
    // A token the authorization server refuses (an issuer it does not trust): the caller's
    // problem, so 401 with RFC 6750's invalid_token and the server's error, not a 502.
    let stranger = WorkloadIssuer::new("https://elsewhere.test")
        .unwrap()
        .mint("mallory", "proxy", Duration::from_secs(300))
        .unwrap();
    let res = client
        .get(h.api_url())
        .bearer_auth(&stranger)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    let challenge = res.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(challenge.contains("error=\"invalid_token\""), "{challenge}");
    let body = res.text().await.unwrap();
    assert!(body.contains("refused the caller's token"), "{body}");
    assert!(body.contains("invalid_grant"), "{body}");
    assert!(!body.contains(&stranger), "{body}");
    assert_eq!(h.auth.token_requests(), 3);
    h.stop().await;
}

#[tokio::test]
async fn an_exchanged_token_never_outlives_its_subject() {
    let (h, workload, _dir) = inbound_exchange("client_secret_post").await;
    let short = workload
        .mint("dave", "proxy", Duration::from_secs(2))
        .unwrap();
    let call = || {
        h.client()
            .get(h.api_url())
            .bearer_auth(short.clone())
            .send()
    };
    assert_eq!(call().await.unwrap().status(), 200);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(
        call().await.unwrap().status(),
        401,
        "the subject expired, so did its entry"
    );
    h.stop().await;
}

#[tokio::test]
async fn token_exchange_of_a_workload_token_file_follows_its_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let secret = write(&dir, "secret", support::CLIENT_SECRET);
    let workload = WorkloadIssuer::new("https://kubernetes.test").unwrap();
    let token_file = write(
        &dir,
        "sa-token",
        &workload
            .mint("system:serviceaccount:a", "idp", Duration::from_secs(600))
            .unwrap(),
    );
    let h = Harness::start(Setup {
        client_toml: secret_client("client_secret_basic", &secret),
        route_extra: format!(
            "scopes = [\"{SCOPE}\"]\ngrant = \"token_exchange\"\nsubject_token = {{ file = \"{token_file}\" }}"
        ),
        ..Setup::default()
    })
    .await;
    h.auth
        .trust_issuer(workload.iss(), workload.public_key().unwrap());
    let (status, body) = get(&h).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["sub"], "system:serviceaccount:a");
    std::fs::write(
        &token_file,
        workload
            .mint("system:serviceaccount:b", "idp", Duration::from_secs(600))
            .unwrap(),
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, body) = get(&h).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        json(&body)["sub"],
        "system:serviceaccount:b",
        "the rotated file was re-read"
    );
    // A workload token the server refuses is the operator's problem: 502, not 401.
    std::fs::write(
        &token_file,
        WorkloadIssuer::new("https://elsewhere.test")
            .unwrap()
            .mint("system:serviceaccount:c", "idp", Duration::from_secs(600))
            .unwrap(),
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    h.api.revoke(json(&body)["jti"].as_str().unwrap());
    let (status, body) = get(&h).await;
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("invalid_grant"), "{body}");
    h.stop().await;
}

#[tokio::test]
async fn refresh_token_rotation_is_saved_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let secret = write(&dir, "secret", support::CLIENT_SECRET);
    let refresh_file = dir.path().join("refresh");
    let mut h = Harness::start(Setup {
        client_toml: secret_client("client_secret_basic", &secret),
        route_extra: format!(
            "scopes = [\"{SCOPE}\"]\ngrant = \"refresh_token\"\nrefresh_token = {{ file = \"{}\" }}",
            refresh_file.display()
        ),
        ..Setup::default()
    })
    .await;
    let original = h.auth.issue_refresh_token(CLIENT_ID, Some(SCOPE));
    std::fs::write(&refresh_file, &original).unwrap();

    // Concurrent cold requests: one refresh, never two with the same refresh token.
    let client = h.client();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let (client, url) = (client.clone(), h.api_url());
        tasks.spawn(async move { client.get(url).send().await.unwrap().status().as_u16() });
    }
    while let Some(status) = tasks.join_next().await {
        assert_eq!(status.unwrap(), 200);
    }
    assert_eq!(h.auth.refresh_grants(), 1);
    let rotated = std::fs::read_to_string(&refresh_file).unwrap();
    assert_ne!(
        rotated.trim(),
        original,
        "the rotated token was written back"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&refresh_file)
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
    }

    // A restarted proxy uses the rotated token (the old one would be refused and would
    // revoke the whole family).
    h.restart_proxy().await;
    let (status, body) = get(&h).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(h.auth.refresh_grants(), 2);
    assert_ne!(std::fs::read_to_string(&refresh_file).unwrap(), rotated);
    h.stop().await;
}

#[tokio::test]
async fn a_refresh_that_may_have_been_processed_is_not_retried() {
    let dir = tempfile::tempdir().unwrap();
    let secret = write(&dir, "secret", support::CLIENT_SECRET);
    let refresh_file = dir.path().join("refresh");
    let h = Harness::start(Setup {
        client_toml: secret_client("client_secret_basic", &secret),
        route_extra: format!(
            "scopes = [\"{SCOPE}\"]\ngrant = \"refresh_token\"\nrefresh_token = {{ file = \"{}\" }}",
            refresh_file.display()
        ),
        tokens: "retry_max_elapsed_ms = 3000".into(),
        ..Setup::default()
    })
    .await;
    std::fs::write(&refresh_file, h.auth.issue_refresh_token(CLIENT_ID, None)).unwrap();
    h.auth.fail_next(1, Failure::Html500);
    assert_eq!(get(&h).await.0, 502);
    assert_eq!(
        h.auth.token_requests(),
        1,
        "a 500 may hide a rotation: not resent"
    );
    // A 503 says the server did not act: that one is retried.
    h.auth.fail_next(
        1,
        Failure::Unavailable503 {
            retry_after_secs: None,
        },
    );
    assert_eq!(get(&h).await.0, 200);
    assert_eq!(h.auth.token_requests(), 3);
    h.stop().await;
}

#[tokio::test]
async fn jwt_bearer_grant_signs_with_the_clients_key() {
    let key = rcgen::KeyPair::generate().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, "key.pem", &key.serialize_pem());
    let h = Harness::start(Setup {
        client_toml: client_toml(&format!(
            "token_endpoint = \"{{token_endpoint}}\"\nauth = \"none\"\nprivate_key = {{ file = \"{path}\" }}"
        )),
        route_extra: format!(
            "scopes = [\"{SCOPE}\"]\ngrant = \"jwt_bearer\"\nassertion_issuer = \"exporter@project.test\"\nassertion_subject = \"erin\"\nassertion_scope = \"claim\""
        ),
        ..Setup::default()
    })
    .await;
    register(&h, ClientAuthSpec::public());
    h.auth
        .trust_assertion_key(
            "exporter@project.test",
            JwtPublicKey::from_pem(&key.public_key_pem()).unwrap(),
            Algorithm::ES256,
        )
        .unwrap();
    let (status, body) = get(&h).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["sub"], "erin");
    assert_eq!(
        h.auth
            .grants()
            .get("urn:ietf:params:oauth:grant-type:jwt-bearer"),
        Some(&1)
    );
    h.stop().await;
}

#[tokio::test]
async fn discovery_falls_back_to_rfc8414_and_refuses_mismatches() {
    let setup = || {
        Setup {
        client_toml: client_toml(
            "issuer = \"{issuer}\"\nauth = \"client_secret_post\"\nclient_secret = { env = \"SET_IN_MEMORY\" }",
        ),
        ..Setup::default()
    }
    };
    let h = Harness::start(setup()).await;
    h.auth.set_discovery(DiscoveryMode::OAuthOnly);
    let config = oauth_egress::config::from_toml(
        &format!(
            "[clients.a]\nissuer = \"{}\"\nclient_id = \"x\"\nauth = \"client_secret_post\"\nclient_secret = {{ env = \"X\" }}",
            h.auth.issuer()
        ),
        std::path::Path::new("."),
        "t",
    )
    .unwrap();
    let ca =
        std::sync::Arc::new(oauth_egress::intercept::ca::CertificateAuthority::generate().unwrap());
    let proxy = oauth_egress::proxy::Proxy::new(config.clone(), ca.clone(), &[h.pki.ca_cert_der()])
        .unwrap();
    let (wrong, unreachable) = proxy.discover().await;
    assert!(
        wrong.is_empty() && unreachable.is_empty(),
        "{wrong:?} {unreachable:?}"
    );

    h.auth
        .set_advertised_auth_methods(vec!["private_key_jwt".into()]);
    let proxy = oauth_egress::proxy::Proxy::new(config.clone(), ca.clone(), &[h.pki.ca_cert_der()])
        .unwrap();
    let (wrong, _) = proxy.discover().await;
    assert_eq!(wrong.len(), 1, "{wrong:?}");
    assert!(wrong[0].contains("supports: private_key_jwt"), "{wrong:?}");
    h.auth.reset_advertised_auth_methods();

    h.auth
        .set_advertised_issuer(Some("https://evil.example".into()));
    let proxy = oauth_egress::proxy::Proxy::new(config, ca, &[h.pki.ca_cert_der()]).unwrap();
    let (wrong, _) = proxy.discover().await;
    assert!(
        wrong[0].contains("evil.example") && wrong[0].contains("refusing"),
        "{wrong:?}"
    );
    h.stop().await;
}

#[tokio::test]
async fn retry_after_is_honoured_and_retries_are_bounded() {
    let h = Harness::start(Setup {
        tokens: "retry_max_elapsed_ms = 3000".into(),
        ..Setup::default()
    })
    .await;
    h.auth.fail_next(
        1,
        Failure::Unavailable503 {
            retry_after_secs: Some(1),
        },
    );
    let started = std::time::Instant::now();
    assert_eq!(get(&h).await.0, 200);
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "waited for Retry-After"
    );
    assert_eq!(h.auth.token_requests(), 2);
    h.stop().await;

    let h = Harness::start(Setup {
        tokens: "retry_max_elapsed_ms = 800".into(),
        ..Setup::default()
    })
    .await;
    h.auth.fail_next(
        1000,
        Failure::Unavailable503 {
            retry_after_secs: None,
        },
    );
    let started = std::time::Instant::now();
    let (status, body) = get(&h).await;
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("temporarily_unavailable"), "{body}");
    assert!(
        started.elapsed() < Duration::from_millis(1800),
        "bounded: {:?}",
        started.elapsed()
    );
    let attempts = h.auth.token_requests();
    assert!(
        (2..=10).contains(&attempts),
        "backoff, not a hot loop: {attempts}"
    );
    // A Retry-After beyond the budget is not waited for.
    h.auth.fail_next(
        1,
        Failure::Unavailable503 {
            retry_after_secs: Some(60),
        },
    );
    let started = std::time::Instant::now();
    assert_eq!(get(&h).await.0, 502);
    assert!(started.elapsed() < Duration::from_secs(2));
    h.stop().await;
}
