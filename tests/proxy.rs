//! The core proxy, end to end over real sockets: reqwest (and curl) → oauth-egress →
//! HTTPS echo API, with tokens from the development authorization server.

mod support;

use std::sync::Arc;
use std::time::Duration;

use oauth_egress_devserver::auth_server::Failure;
use support::{connect_tunnel, raw_exchange, read_head, ApiTls, Harness, Setup, CLIENT_SECRET};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

#[tokio::test]
async fn token_is_injected_and_cached_for_50_calls() {
    let h = Harness::start(Setup::default()).await;
    let client = h.client();
    let mut jtis = std::collections::HashSet::new();
    for i in 0..50 {
        let res = client
            .get(format!("{}/items/{i}?q=1", h.api_url()))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "call {i}");
        let echo = json(&res.text().await.unwrap());
        assert_eq!(echo["sub"], support::CLIENT_ID);
        assert_eq!(echo["path"], format!("/items/{i}?q=1"));
        jtis.insert(echo["jti"].as_str().unwrap().to_string());
    }
    assert_eq!(h.auth.token_requests(), 1, "one token request for 50 calls");
    assert_eq!(jtis.len(), 1, "the same token every time");
    assert_eq!(h.api.requests(), 50);
    let form = h.auth.last_form();
    assert!(form.contains(&("grant_type".into(), "client_credentials".into())));
    assert!(form.contains(&("scope".into(), support::SCOPE.into())));
    assert!(form.contains(&("audience".into(), support::audience(&h.api))));
    assert_eq!(
        h.auth.last_auth_method().as_deref(),
        Some("client_secret_basic")
    );
    h.stop().await;
}

#[tokio::test]
async fn concurrent_cold_requests_cause_one_token_request() {
    let h = Harness::start(Setup::default()).await;
    h.auth.set_delay(Duration::from_millis(300));
    let client = h.client();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..200 {
        let client = client.clone();
        let url = h.api_url();
        tasks.spawn(async move { client.get(url).send().await.map(|r| r.status().as_u16()) });
    }
    let mut ok = 0;
    while let Some(status) = tasks.join_next().await {
        assert_eq!(status.unwrap().unwrap(), 200);
        ok += 1;
    }
    assert_eq!(ok, 200);
    assert_eq!(h.auth.token_requests(), 1, "single flight");
    h.stop().await;
}

/// A harness whose 4 s tokens are renewed in the background during the second half of their
/// life; one request fetches the first token (its jti returned), then `after` passes.
async fn in_renewal_window(after: Duration) -> (Harness, reqwest::Client, String) {
    let h = Harness::start(Setup {
        tokens: "expiry_skew_secs = 0\nrefresh_ahead_percent = 50".into(),
        ..Setup::default()
    })
    .await;
    h.auth.set_token_lifetime(4);
    let client = h.client();
    let first = support::jti_of(&client, h.api_url()).await;
    tokio::time::sleep(after).await;
    (h, client, first)
}

#[tokio::test]
async fn token_is_renewed_ahead_of_expiry_without_waiting() {
    let (h, client, first) = in_renewal_window(Duration::from_millis(2200)).await;
    // In the renewal window: served the current token at once while a slow renewal runs.
    h.auth.set_delay(Duration::from_millis(1000));
    let started = std::time::Instant::now();
    let second = support::jti_of(&client, h.api_url()).await;
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "did not wait for the renewal"
    );
    assert_eq!(second, first, "current token served during renewal");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(h.auth.token_requests(), 2, "one background renewal");
    let third = support::jti_of(&client, h.api_url()).await;
    assert_ne!(third, first, "the renewed token is used");
    assert_eq!(h.auth.token_requests(), 2);
    h.stop().await;
}

#[tokio::test]
async fn an_expired_token_is_never_used_even_if_the_server_is_down() {
    let h = Harness::start(Setup {
        tokens: "expiry_skew_secs = 0\nrefresh_ahead_percent = 0\nretry_max_elapsed_ms = 300"
            .into(),
        ..Setup::default()
    })
    .await;
    h.auth.set_token_lifetime(1);
    let client = h.client();
    assert_eq!(client.get(h.api_url()).send().await.unwrap().status(), 200);
    h.auth.fail_next(10, Failure::Html500);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let res = client.get(h.api_url()).send().await.unwrap();
    assert_eq!(res.status(), 502);
    let body = res.text().await.unwrap();
    assert!(body.contains("HTTP 500"), "{body}");
    assert_eq!(h.api.requests(), 1, "the expired token was not sent");
    h.stop().await;
}

#[tokio::test]
async fn a_401_is_retried_once_with_the_same_body_and_a_new_token() {
    let h = Harness::start(Setup::default()).await;
    let client = h.client();
    let first = client
        .get(h.api_url())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let old_jti = json(&first)["jti"].as_str().unwrap().to_string();
    h.api.revoke(&old_jti);

    let res = client
        .post(format!("{}/orders", h.api_url()))
        .header("content-type", "application/json")
        .body(r#"{"amount":42}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let echo = json(&res.text().await.unwrap());
    assert_ne!(echo["jti"], old_jti.as_str());
    assert_eq!(h.auth.token_requests(), 2);
    let seen = h.api.seen();
    let posts: Vec<_> = seen.iter().filter(|s| s.method == "POST").collect();
    assert_eq!(posts.len(), 2, "exactly one retry");
    assert_eq!(posts[0].status, 401);
    assert_eq!(posts[1].status, 200);
    assert_eq!(posts[0].body, posts[1].body);
    assert_eq!(&posts[1].body[..], br#"{"amount":42}"#);
    h.stop().await;
}

#[tokio::test]
async fn a_chunked_body_is_replayed_when_it_fit_the_limit() {
    let h = Harness::start(Setup::default()).await;
    let client = h.client();
    let first = client
        .get(h.api_url())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    h.api.revoke(json(&first)["jti"].as_str().unwrap());
    let chunks: Vec<Result<&'static str, std::io::Error>> = vec![Ok("part one, "), Ok("part two")];
    let body = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));
    let res = client.put(h.api_url()).body(body).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let puts: Vec<_> = h
        .api
        .seen()
        .into_iter()
        .filter(|s| s.method == "PUT")
        .collect();
    assert_eq!(puts.len(), 2);
    assert_eq!(&puts[1].body[..], b"part one, part two");
    h.stop().await;
}

#[tokio::test]
async fn a_body_over_the_limit_streams_and_its_401_is_returned() {
    let h = Harness::start(Setup {
        retry_body_limit: 8,
        ..Setup::default()
    })
    .await;
    let client = h.client();
    let first = client
        .get(h.api_url())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    h.api.revoke(json(&first)["jti"].as_str().unwrap());
    let res = client
        .post(h.api_url())
        .body("a body longer than eight bytes")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    let posts = h
        .api
        .seen()
        .into_iter()
        .filter(|s| s.method == "POST")
        .count();
    assert_eq!(posts, 1, "no replay of a body over retry_body_limit");
    h.stop().await;
}

#[tokio::test]
async fn a_permanent_401_means_exactly_two_attempts() {
    let h = Harness::start(Setup::default()).await;
    h.api.set_reject_all(true);
    let res = h.client().get(h.api_url()).send().await.unwrap();
    assert_eq!(res.status(), 401);
    assert!(res.headers().contains_key("www-authenticate"));
    assert_eq!(h.api.requests(), 2);
    assert_eq!(h.auth.token_requests(), 2);
    h.stop().await;
}

#[tokio::test]
async fn a_burst_of_401s_causes_one_new_token_request() {
    let h = Harness::start(Setup::default()).await;
    let client = h.client();
    let first = client
        .get(h.api_url())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    h.api.revoke(json(&first)["jti"].as_str().unwrap());
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let client = client.clone();
        let url = h.api_url();
        tasks.spawn(async move { client.get(url).send().await.unwrap().status().as_u16() });
    }
    while let Some(status) = tasks.join_next().await {
        assert_eq!(status.unwrap(), 200);
    }
    assert_eq!(
        h.auth.token_requests(),
        2,
        "one invalidation, one new token"
    );
    h.stop().await;
}

#[tokio::test]
async fn the_callers_own_authorization_is_replaced_on_a_route() {
    let h = Harness::start(Setup::default()).await;
    let res = h
        .client()
        .get(h.api_url())
        .header("authorization", "Bearer callers-own-token")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let seen = h.api.seen();
    let auth = seen[0].authorization.clone().unwrap();
    assert!(!auth.contains("callers-own-token"));
    assert!(seen[0].jti.is_some(), "the proxy's token was verified");
    h.stop().await;
}

#[tokio::test]
async fn an_unmatched_host_is_tunnelled_untouched() {
    let h = Harness::start(Setup::default()).await;
    // Trusting only the upstream's own CA proves the proxy did not intercept.
    let client = h.client_trusting(h.pki.ca_cert_pem());
    let url = format!("https://localhost:{}/open", h.open_api.addr.port());
    let res = client.get(url).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let seen = h.open_api.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].authorization, None, "no token on an unmatched host");
    assert_eq!(h.auth.token_requests(), 0);
    h.stop().await;
}

#[tokio::test]
async fn deny_policy_refuses_unmatched_connects() {
    let h = Harness::start(Setup {
        unmatched: "deny",
        ..Setup::default()
    })
    .await;
    let authority = format!("localhost:{}", h.open_api.addr.port());
    let (_, head) = connect_tunnel(h.proxy_addr, &authority).await;
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    assert_eq!(h.open_api.requests(), 0);
    // The routed host is still served.
    assert_eq!(
        h.client().get(h.api_url()).send().await.unwrap().status(),
        200
    );
    h.stop().await;
}

/// Opens a tunnel to the routed API and speaks TLS to the proxy with `sni`.
async fn intercepted_tls(
    h: &Harness,
    sni: &str,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let authority = format!("localhost:{}", h.api.addr.port());
    let (stream, head) = connect_tunnel(h.proxy_addr, &authority).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let mut config = rustls::ClientConfig::builder()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnything))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = rustls::pki_types::ServerName::try_from(sni.to_string()).unwrap();
    connector.connect(name, stream).await.unwrap()
}

#[tokio::test]
async fn a_host_header_naming_another_host_gets_421_and_no_token() {
    let h = Harness::start(Setup::default()).await;
    let mut tls = intercepted_tls(&h, "localhost").await;
    tls.write_all(b"GET / HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    let _ = tls.read_to_string(&mut answer).await;
    assert!(answer.starts_with("HTTP/1.1 421"), "{answer}");
    assert!(answer.contains("evil.example"));
    assert_eq!(h.api.requests(), 0);
    assert_eq!(h.auth.token_requests(), 0, "no token was even fetched");
    h.stop().await;
}

#[tokio::test]
async fn an_sni_naming_another_host_gets_421_and_no_token() {
    let h = Harness::start(Setup::default()).await;
    let port = h.api.addr.port();
    let mut tls = intercepted_tls(&h, "evil.example").await;
    tls.write_all(
        format!("GET / HTTP/1.1\r\nHost: localhost:{port}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut answer = String::new();
    let _ = tls.read_to_string(&mut answer).await;
    assert!(answer.starts_with("HTTP/1.1 421"), "{answer}");
    assert_eq!(h.api.requests(), 0);
    h.stop().await;
}

#[tokio::test]
async fn plain_http_on_a_route_is_refused_without_upgrade_tls_or_allow_plaintext() {
    let h = Harness::start(Setup::default()).await;
    let url = format!("http://localhost:{}/", h.api.addr.port());
    let res = h.client().get(url).send().await.unwrap();
    assert_eq!(res.status(), 403);
    let body = res.text().await.unwrap();
    assert!(
        body.contains("upgrade_tls") && body.contains("allow_plaintext"),
        "{body}"
    );
    assert_eq!(h.api.requests(), 0);
    assert_eq!(h.auth.token_requests(), 0);
    h.stop().await;
}

#[tokio::test]
async fn upgrade_tls_sends_a_plain_http_request_upstream_over_https() {
    let h = Harness::start(Setup {
        route_extra: format!("scopes = [\"{}\"]\nupgrade_tls = true", support::SCOPE),
        ..Setup::default()
    })
    .await;
    let url = format!("http://localhost:{}/plain", h.api.addr.port());
    let res = h.client().get(url).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let echo = json(&res.text().await.unwrap());
    assert_eq!(echo["path"], "/plain");
    assert!(h.api.seen()[0].jti.is_some());
    h.stop().await;
}

#[tokio::test]
async fn token_endpoint_errors_name_route_client_and_oauth_error_never_the_secret() {
    let h = Harness::start(Setup {
        secret: "wrong-secret-value",
        ..Setup::default()
    })
    .await;
    let res = h.client().get(h.api_url()).send().await.unwrap();
    assert_eq!(res.status(), 502);
    assert!(res.headers()["proxy-status"]
        .to_str()
        .unwrap()
        .starts_with("oauth-egress"));
    let body = res.text().await.unwrap();
    assert!(body.contains("route echo"), "{body}");
    assert!(body.contains("client test"), "{body}");
    assert!(body.contains("invalid_client"), "{body}");
    assert!(
        !body.contains("wrong-secret-value") && !body.contains(CLIENT_SECRET),
        "{body}"
    );
    assert_eq!(h.api.requests(), 0);
    h.stop().await;
}

#[tokio::test]
async fn invalid_scope_and_garbage_answers_are_reported() {
    let h = Harness::start(Setup {
        route_extra: "scopes = [\"admin:everything\"]".into(),
        ..Setup::default()
    })
    .await;
    let body = h
        .client()
        .get(h.api_url())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(body.contains("invalid_scope"), "{body}");
    h.stop().await;

    let h = Harness::start(Setup::default()).await;
    h.auth.fail_next(1, Failure::Garbage200);
    let res = h.client().get(h.api_url()).send().await.unwrap();
    assert_eq!(res.status(), 502);
    let body = res.text().await.unwrap();
    assert!(body.contains("not a JSON token response"), "{body}");
    // The next request gets a token normally: failures are not cached.
    assert_eq!(
        h.client().get(h.api_url()).send().await.unwrap().status(),
        200
    );
    h.stop().await;
}

#[tokio::test]
async fn an_unreachable_token_endpoint_is_a_502_naming_it() {
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!(
        "https://localhost:{}/token",
        closed.local_addr().unwrap().port()
    );
    drop(closed);
    let h = Harness::start(Setup {
        token_endpoint: Some(endpoint.clone()),
        tokens: "retry_max_elapsed_ms = 300".into(),
        ..Setup::default()
    })
    .await;
    let res = h.client().get(h.api_url()).send().await.unwrap();
    assert_eq!(res.status(), 502);
    let body = res.text().await.unwrap();
    assert!(
        body.contains("cannot reach token endpoint") && body.contains(&endpoint),
        "{body}"
    );
    h.stop().await;
}

#[tokio::test]
async fn malformed_requests_get_400_and_the_proxy_keeps_serving() {
    let h = Harness::start(Setup::default()).await;
    let garbage = raw_exchange(h.proxy_addr, b"THIS IS NOT HTTP\r\n\r\n").await;
    assert!(garbage.starts_with("HTTP/1.1 400"), "{garbage:?}");
    let origin_form = raw_exchange(
        h.proxy_addr,
        b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(origin_form.starts_with("HTTP/1.1 400"), "{origin_form}");
    assert!(origin_form.contains("forward proxy"), "{origin_form}");
    let no_port = raw_exchange(
        h.proxy_addr,
        b"CONNECT localhost HTTP/1.1\r\nHost: localhost\r\n\r\n",
    )
    .await;
    assert!(no_port.starts_with("HTTP/1.1 400"), "{no_port}");
    assert_eq!(
        h.client().get(h.api_url()).send().await.unwrap().status(),
        200
    );
    h.stop().await;
}

#[tokio::test]
async fn upgrades_carry_the_token_then_splice_bytes() {
    let h = Harness::start(Setup::default()).await;
    let port = h.api.addr.port();
    let config = support::client_tls(h.ca.cert_pem());
    let authority = format!("localhost:{port}");
    let (stream, head) = connect_tunnel(h.proxy_addr, &authority).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let mut tls = connector
        .connect(
            rustls::pki_types::ServerName::try_from("localhost").unwrap(),
            stream,
        )
        .await
        .unwrap();
    tls.write_all(
        format!(
            "GET /ws HTTP/1.1\r\nHost: {authority}\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let head = read_head(&mut tls).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    tls.write_all(b"ping through the tunnel").await.unwrap();
    let mut buf = [0u8; 23];
    tokio::time::timeout(Duration::from_secs(5), tls.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf, b"ping through the tunnel");
    assert!(
        h.api.seen()[0].jti.is_some(),
        "the upgrade request carried a valid token"
    );
    h.stop().await;
}

#[tokio::test]
async fn curl_through_the_proxy_gets_the_token_injected() {
    let h = Harness::start(Setup::default()).await;
    let ca = h.ca_file();
    let proxy = format!("http://{}", h.proxy_addr);
    let url = format!("{}/from-curl", h.api_url());
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--fail-with-body", "-x", &proxy, "--cacert"])
        .arg(&ca)
        .arg(&url)
        .env_remove("HTTPS_PROXY")
        .env_remove("https_proxy")
        .output()
        .await
        .expect("curl must be installed (.ci/run installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let echo = json(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(echo["path"], "/from-curl");
    assert_eq!(echo["sub"], support::CLIENT_ID);
    h.stop().await;
}

#[tokio::test]
async fn client_secret_post_sends_the_secret_in_the_body() {
    let h = Harness::start(Setup {
        auth: "client_secret_post",
        ..Setup::default()
    })
    .await;
    assert_eq!(
        h.client().get(h.api_url()).send().await.unwrap().status(),
        200
    );
    assert_eq!(
        h.auth.last_auth_method().as_deref(),
        Some("client_secret_post")
    );
    h.stop().await;
}

/// Accepts any server certificate: only for the SNI-mismatch test, which must get past the
/// handshake to show that the proxy still refuses the request.
#[derive(Debug)]
struct AcceptAnything;

impl rustls::client::danger::ServerCertVerifier for AcceptAnything {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[tokio::test]
async fn http2_callers_are_served_and_upstream_connections_are_pooled() {
    let h = Harness::start(Setup::default()).await;
    let mut tls = support::client_tls(h.ca.cert_pem());
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let client = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .proxy(reqwest::Proxy::all(format!("http://{}", h.proxy_addr)).unwrap())
        .build()
        .unwrap();
    for _ in 0..5 {
        let res = client.get(h.api_url()).send().await.unwrap();
        assert_eq!(
            res.version(),
            reqwest::Version::HTTP_2,
            "caller side is HTTP/2"
        );
        assert_eq!(res.status(), 200);
    }
    // Five requests from a second, HTTP/1.1 caller reuse the same upstream connection.
    let h1 = h.client();
    for _ in 0..5 {
        assert_eq!(h1.get(h.api_url()).send().await.unwrap().status(), 200);
    }
    assert_eq!(
        h.api.connections(),
        1,
        "one pooled upstream connection for 10 requests"
    );
    h.stop().await;
}

#[tokio::test]
async fn a_fetch_started_before_an_invalidation_never_stores_its_token() {
    let (h, client, first) = in_renewal_window(Duration::from_millis(2100)).await;
    // In the renewal window: this request starts a slow background renewal.
    h.auth.set_delay(Duration::from_millis(900));
    assert_eq!(support::jti_of(&client, h.api_url()).await, first);
    // The current token is refused: the 401 invalidates it and fetches a fresh one at once.
    h.api.revoke(&first);
    h.auth.set_delay(Duration::ZERO);
    let fresh = support::jti_of(&client, h.api_url()).await;
    assert_ne!(fresh, first);
    // The slow renewal finishes now; its token must not replace the fresh one.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        h.auth.token_requests(),
        3,
        "first, background renewal, after the 401"
    );
    let later = support::jti_of(&client, h.api_url()).await;
    assert_eq!(
        later, fresh,
        "the pre-invalidation fetch did not store its result"
    );
    h.stop().await;
}

#[tokio::test]
async fn allow_plaintext_sends_the_token_over_http() {
    let h = Harness::start(Setup {
        api_tls: ApiTls::Plain,
        route_extra: format!("scopes = [\"{}\"]\nallow_plaintext = true", support::SCOPE),
        ..Setup::default()
    })
    .await;
    let url = format!("http://localhost:{}/clear", h.api.addr.port());
    let res = h.client().get(url).send().await.unwrap();
    let status = res.status();
    let body = res.text().await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(h.api.seen()[0].jti.is_some());
    h.stop().await;
}

#[tokio::test]
async fn an_upstream_certificate_the_proxy_does_not_trust_gets_no_token() {
    let h = Harness::start(Setup {
        api_tls: ApiTls::Untrusted,
        ..Setup::default()
    })
    .await;
    let res = h.client().get(h.api_url()).send().await.unwrap();
    let status = res.status();
    let body = res.text().await.unwrap();
    assert_eq!(status, 502, "{body} {:?}", h.api.seen());
    assert!(body.to_lowercase().contains("certificate"), "{body}");
    assert_eq!(h.api.requests(), 0, "no request (and no token) reached it");
    h.stop().await;
}

#[tokio::test]
async fn ip_literal_hosts_are_intercepted_with_an_ip_san() {
    let h = Harness::start(Setup {
        route_host: "127.0.0.1",
        ..Setup::default()
    })
    .await;
    assert!(h.api_url().starts_with("https://127.0.0.1:"));
    let res = h.client().get(h.api_url()).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert!(h.api.seen()[0].jti.is_some());
    h.stop().await;
}

#[tokio::test]
async fn a_slow_token_endpoint_is_a_504_within_the_configured_bound() {
    let h = Harness::start(Setup {
        tokens: "request_timeout_ms = 300\nretry_max_elapsed_ms = 1000".into(),
        ..Setup::default()
    })
    .await;
    h.auth.set_delay(Duration::from_secs(2));
    let started = std::time::Instant::now();
    let res = h.client().get(h.api_url()).send().await.unwrap();
    assert_eq!(res.status(), 504);
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_millis(2000),
        "bounded: {elapsed:?}"
    );
    let body = res.text().await.unwrap();
    assert!(body.contains("did not answer within 300 ms"), "{body}");
    assert!(
        h.auth.token_requests() >= 2,
        "timeouts are retried within the budget"
    );
    h.stop().await;
}
