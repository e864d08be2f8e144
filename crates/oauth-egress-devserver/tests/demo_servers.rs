//! Real-socket tests of the demo servers: TLS, token issuance, verification,
//! failure injection, counters and upgrades. The client authentication methods,
//! the other grants, discovery, connection-level failures and sender-constrained
//! (DPoP and certificate-bound) tokens are tested in the submodules under
//! `tests/demo_servers/`.

#[path = "demo_servers/client_auth.rs"]
mod client_auth;
#[path = "demo_servers/discovery.rs"]
mod discovery;
#[path = "demo_servers/dpop.rs"]
mod dpop;
#[path = "demo_servers/grants.rs"]
mod grants;
#[path = "demo_servers/mtls_bound.rs"]
mod mtls_bound;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use http_body_util::{BodyExt, Empty};
use oauth_egress_devserver::{AuthServer, DevClient, EchoApi, Failure, TestPki};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const AUDIENCE: &str = "https://api.example";
/// A secret with characters that must be form-urlencoded inside HTTP Basic.
const SECRET: &str = "s3cr:et+/ %";

/// Form fields of a token request.
type Form<'a> = &'a [(&'a str, &'a str)];

struct Env {
    pki: TestPki,
    auth: AuthServer,
    api: EchoApi,
    http: reqwest::Client,
}

fn client(id: &str, secret: &str, scopes: Option<&[&str]>) -> DevClient {
    DevClient {
        id: id.to_string(),
        secret: secret.to_string(),
        allowed_scopes: scopes.map(|s| s.iter().map(|s| s.to_string()).collect()),
    }
}

async fn listener() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").await.expect("bind")
}

fn http_client(pki: &TestPki) -> reqwest::Client {
    reqwest::Client::builder()
        .use_preconfigured_tls(pki.client_config())
        .no_proxy()
        .resolve("localhost", SocketAddr::from(([127, 0, 0, 1], 0)))
        .build()
        .expect("reqwest client")
}

/// Auth server on `localhost` (DNS SAN), echo API on `127.0.0.1` (IP SAN) that
/// requires tokens for [`AUDIENCE`] with scope `read`.
async fn setup() -> Env {
    let pki = TestPki::new("demo test CA").expect("pki");
    let auth_tls = pki.server_config(&["localhost"]).expect("auth tls");
    let clients = vec![
        client("svc-a", SECRET, Some(&["read", "write"])),
        client("svc-any", "any-secret", None),
    ];
    let auth = AuthServer::start(listener().await, auth_tls, "localhost", clients)
        .await
        .expect("auth server");
    let api_tls = pki.server_config(&["127.0.0.1"]).expect("api tls");
    let api = EchoApi::start(
        listener().await,
        Some(api_tls),
        Some(auth.verifier()),
        Some(AUDIENCE.to_string()),
        Some("read".to_string()),
    )
    .await
    .expect("echo api");
    let http = http_client(&pki);
    Env {
        pki,
        auth,
        api,
        http,
    }
}

fn basic(id: &str, secret: &str) -> String {
    let enc = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    format!(
        "Basic {}",
        STANDARD.encode(format!("{}:{}", enc(id), enc(secret)))
    )
}

impl Env {
    async fn token_request(&self, form: &[(&str, &str)], auth: Option<&str>) -> reqwest::Response {
        let mut request = self.http.post(self.auth.token_endpoint()).form(form);
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        request.send().await.expect("token request")
    }

    /// A token for svc-a with scope `read` and audience [`AUDIENCE`], via Basic.
    async fn good_token(&self) -> String {
        let form = [
            ("grant_type", "client_credentials"),
            ("scope", "read"),
            ("audience", AUDIENCE),
        ];
        let response = self
            .token_request(&form, Some(&basic("svc-a", SECRET)))
            .await;
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.expect("json");
        body["access_token"]
            .as_str()
            .expect("access_token")
            .to_string()
    }

    fn api_url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.api.addr.port())
    }

    async fn call_api(&self, token: Option<&str>) -> reqwest::Response {
        let mut request = self.http.post(self.api_url("/v1/items?x=1")).body("hello");
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await.expect("api request")
    }
}

fn error_code(body: &Value) -> &str {
    body["error"].as_str().unwrap_or("<none>")
}

/// Seconds since the Unix epoch.
fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

/// A random `jti`.
fn fresh_jti() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// Signs `claims` with `key` as a JWT with `alg`.
fn sign(alg: jsonwebtoken::Algorithm, key: &jsonwebtoken::EncodingKey, claims: &Value) -> String {
    jsonwebtoken::encode(&jsonwebtoken::Header::new(alg), claims, key).expect("sign")
}

/// Client assertion claims: `iss` = `sub` = `id`, expiring in `exp_in` seconds.
fn assertion_claims(id: &str, aud: &str, exp_in: i64) -> Value {
    serde_json::json!({
        "iss": id, "sub": id, "aud": aud,
        "iat": now(), "exp": now() + exp_in, "jti": fresh_jti(),
    })
}

/// A `(status, body)` pair of a finished response.
async fn status_and_json(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let body = response.json().await.expect("json body");
    (status, body)
}

#[tokio::test]
async fn tokens_from_basic_and_post_verify_at_the_echo_api() {
    let env = setup().await;

    let token = env.good_token().await;
    assert_eq!(
        env.auth.last_auth_method().as_deref(),
        Some("client_secret_basic")
    );
    let header = jsonwebtoken::decode_header(&token).expect("jwt header");
    assert_eq!(header.typ.as_deref(), Some("at+jwt"));
    assert_eq!(header.alg, jsonwebtoken::Algorithm::ES256);
    let claims = env
        .auth
        .verifier()
        .verify(&token, Some(AUDIENCE), Some("read"))
        .expect("valid");
    assert_eq!(
        (claims.sub.as_str(), claims.client_id.as_str()),
        ("svc-a", "svc-a")
    );
    assert_eq!(claims.iss, env.auth.issuer());
    assert_eq!(claims.exp - claims.iat, 3600);

    let response = env.call_api(Some(&token)).await;
    assert_eq!(response.status(), 200);
    let echo: Value = response.json().await.expect("json");
    assert_eq!(echo["sub"], "svc-a");
    assert_eq!(echo["scope"], "read");
    assert_eq!(echo["aud"], AUDIENCE);
    assert_eq!(echo["jti"], claims.jti.as_str());
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["path"], "/v1/items?x=1");
    assert_eq!(echo["body_bytes"], 5);
    assert_eq!(echo["version"], "HTTP/1.1");

    let form = [
        ("grant_type", "client_credentials"),
        ("client_id", "svc-a"),
        ("client_secret", SECRET),
        ("scope", "read write read"),
        ("audience", AUDIENCE),
    ];
    let response = env.token_request(&form, None).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["cache-control"], "no-store");
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 3600);
    assert_eq!(body["scope"], "read write");
    assert_eq!(
        env.auth.last_auth_method().as_deref(),
        Some("client_secret_post")
    );
    let recorded = env.auth.last_form();
    assert!(recorded.contains(&("client_secret".to_string(), "<redacted>".to_string())));
    assert!(recorded.contains(&("client_id".to_string(), "svc-a".to_string())));
    let second = body["access_token"].as_str().expect("token");
    assert_eq!(env.call_api(Some(second)).await.status(), 200);
    let second_jti = env
        .auth
        .verifier()
        .verify(second, None, None)
        .expect("valid")
        .jti;
    assert_ne!(second_jti, claims.jti, "jti must be unique");

    assert_eq!(env.auth.token_requests(), 2);
    assert_eq!(env.auth.tokens_issued(), 2);
    assert_eq!(env.api.requests(), 2);
    let seen = env.api.seen();
    assert_eq!(seen[0].jti.as_deref(), Some(claims.jti.as_str()));
    assert_eq!(
        seen[0].host.as_deref(),
        Some(format!("127.0.0.1:{}", env.api.addr.port()).as_str())
    );
    assert_eq!(seen[0].authorization, Some(format!("Bearer {token}")));
    assert_eq!(&seen[0].body[..], b"hello");
    assert_eq!(env.api.connections(), 1, "reqwest reuses the connection");
}

#[tokio::test]
async fn token_endpoint_rejects_bad_requests() {
    let env = setup().await;
    let grant = ("grant_type", "client_credentials");

    let response = env
        .token_request(&[grant], Some(&basic("svc-a", "wrong")))
        .await;
    assert_eq!(response.status(), 401);
    assert_eq!(
        response.headers()["www-authenticate"],
        "Basic realm=\"dev\""
    );
    assert_eq!(
        error_code(&response.json().await.expect("json")),
        "invalid_client"
    );

    let form = [grant, ("client_id", "svc-a"), ("client_secret", "wrong")];
    let response = env.token_request(&form, None).await;
    assert_eq!(response.status(), 401);
    assert!(response.headers().get("www-authenticate").is_none());
    assert_eq!(
        error_code(&response.json().await.expect("json")),
        "invalid_client"
    );

    let cases: [(Form, Option<String>, &str); 7] = [
        (
            &[grant, ("scope", "admin")],
            Some(basic("svc-a", SECRET)),
            "invalid_scope",
        ),
        (
            &[grant, ("scope", "read\"x")],
            Some(basic("svc-any", "any-secret")),
            "invalid_scope",
        ),
        (
            &[grant, ("client_secret", SECRET)],
            Some(basic("svc-a", SECRET)),
            "invalid_request",
        ),
        (
            &[("grant_type", "password")],
            Some(basic("svc-a", SECRET)),
            "unsupported_grant_type",
        ),
        (
            &[grant, ("resource", "https://x/#frag")],
            Some(basic("svc-a", SECRET)),
            "invalid_target",
        ),
        (
            &[grant, ("resource", "not a uri")],
            Some(basic("svc-a", SECRET)),
            "invalid_target",
        ),
        (
            &[grant, grant],
            Some(basic("svc-a", SECRET)),
            "invalid_request",
        ),
    ];
    for (form, auth, expected) in cases {
        let response = env.token_request(form, auth.as_deref()).await;
        assert_eq!(response.status(), 400, "{form:?}");
        assert_eq!(
            error_code(&response.json().await.expect("json")),
            expected,
            "{form:?}"
        );
    }

    // resource becomes the audience when there is no audience parameter
    let form = [grant, ("resource", "https://api.example")];
    let response = env
        .token_request(&form, Some(&basic("svc-any", "any-secret")))
        .await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("json");
    assert!(
        body.get("scope").is_none(),
        "unrestricted client, no scope asked"
    );
    let claims = env.auth.verifier().verify(
        body["access_token"].as_str().expect("t"),
        Some(AUDIENCE),
        None,
    );
    assert_eq!(claims.expect("valid").aud.as_deref(), Some(AUDIENCE));

    let get = env
        .http
        .get(env.auth.token_endpoint())
        .send()
        .await
        .expect("get");
    assert_eq!(get.status(), 405);
    let missing = env
        .http
        .get(format!("{}/nope", env.auth.issuer()))
        .send()
        .await
        .expect("get");
    assert_eq!(missing.status(), 404);
    assert_eq!(env.auth.token_requests(), 10);
    assert_eq!(env.auth.tokens_issued(), 1);
}

#[tokio::test]
async fn echo_api_enforces_tokens() {
    let env = setup().await;

    let response = env.call_api(None).await;
    assert_eq!(response.status(), 401);
    assert_eq!(response.headers()["www-authenticate"], "Bearer");

    let response = env.call_api(Some("not.a.jwt")).await;
    assert_eq!(response.status(), 401);
    let challenge = response.headers()["www-authenticate"]
        .to_str()
        .expect("ascii")
        .to_string();
    assert!(
        challenge.starts_with("Bearer error=\"invalid_token\", error_description=\""),
        "{challenge}"
    );

    // A genuine token but without the audience the API demands.
    let form = [("grant_type", "client_credentials"), ("scope", "read")];
    let response = env
        .token_request(&form, Some(&basic("svc-a", SECRET)))
        .await;
    let body: Value = response.json().await.expect("json");
    let no_aud = body["access_token"].as_str().expect("token");
    assert_eq!(env.call_api(Some(no_aud)).await.status(), 401);

    // The right audience but without the required scope: 403 insufficient_scope.
    let form = [
        ("grant_type", "client_credentials"),
        ("scope", "write"),
        ("audience", AUDIENCE),
    ];
    let response = env
        .token_request(&form, Some(&basic("svc-a", SECRET)))
        .await;
    let body: Value = response.json().await.expect("json");
    let response = env
        .call_api(Some(body["access_token"].as_str().expect("token")))
        .await;
    assert_eq!(response.status(), 403);
    assert_eq!(
        error_code(&response.json().await.expect("json")),
        "insufficient_scope"
    );

    // Revocation hits only the revoked token.
    let first = env.good_token().await;
    let second = env.good_token().await;
    let jti = env
        .auth
        .verifier()
        .verify(&first, None, None)
        .expect("valid")
        .jti;
    env.api.revoke(&jti);
    assert_eq!(env.call_api(Some(&first)).await.status(), 401);
    assert_eq!(env.call_api(Some(&second)).await.status(), 200);

    env.api.set_reject_all(true);
    assert_eq!(env.call_api(Some(&second)).await.status(), 401);
    env.api.set_reject_all(false);
    assert_eq!(env.call_api(Some(&second)).await.status(), 200);

    // A token signed by another server's key is refused.
    let other_pki = TestPki::new("other CA").expect("pki");
    let other = AuthServer::start(
        listener().await,
        other_pki.server_config(&["localhost"]).expect("tls"),
        "localhost",
        vec![client("svc-a", SECRET, None)],
    )
    .await
    .expect("other auth server");
    let foreign = other.verifier();
    assert!(foreign.verify(&second, None, None).is_err());

    let statuses: Vec<u16> = env.api.seen().iter().map(|s| s.status).collect();
    assert_eq!(statuses, [401, 401, 401, 403, 401, 200, 401, 200]);
    assert_eq!(env.api.seen()[4].jti.as_deref(), Some(jti.as_str()));
}

#[tokio::test]
async fn failure_injection_and_knobs() {
    let env = setup().await;
    let grant = [("grant_type", "client_credentials")];
    let auth = basic("svc-a", SECRET);

    env.auth.fail_next(2, Failure::Html500);
    for _ in 0..2 {
        let response = env.token_request(&grant, Some(&auth)).await;
        assert_eq!(response.status(), 500);
        assert_eq!(response.headers()["content-type"], "text/html");
        assert!(response.text().await.expect("text").contains("<html>"));
    }
    assert_eq!(env.token_request(&grant, Some(&auth)).await.status(), 200);

    env.auth.fail_next(
        1,
        Failure::OAuth {
            status: 503,
            error: "temporarily_unavailable".into(),
            description: "busy".into(),
        },
    );
    let response = env.token_request(&grant, Some(&auth)).await;
    assert_eq!(response.status(), 503);
    assert_eq!(
        error_code(&response.json().await.expect("json")),
        "temporarily_unavailable"
    );

    env.auth.fail_next(1, Failure::Garbage200);
    let response = env.token_request(&grant, Some(&auth)).await;
    assert_eq!(response.status(), 200);
    assert!(serde_json::from_slice::<Value>(&response.bytes().await.expect("body")).is_err());

    env.auth.set_token_lifetime(120);
    let body: Value = env
        .token_request(&grant, Some(&auth))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(body["expires_in"], 120);
    assert_eq!(
        body["scope"], "read write",
        "no scope asked: all allowed scopes"
    );

    env.auth.set_omit_expires_in(true);
    env.auth.set_delay(Duration::from_millis(300));
    let started = Instant::now();
    let body: Value = env
        .token_request(&grant, Some(&auth))
        .await
        .json()
        .await
        .expect("json");
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert!(body.get("expires_in").is_none());
    assert!(body["access_token"].is_string());

    assert_eq!(env.auth.token_requests(), 7);
    assert_eq!(env.auth.tokens_issued(), 3);
}

#[tokio::test]
async fn metadata_and_jwks_describe_the_server() {
    let env = setup().await;
    let url = format!(
        "{}/.well-known/oauth-authorization-server",
        env.auth.issuer()
    );
    let meta: Value = env
        .http
        .get(url)
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(meta["issuer"], env.auth.issuer());
    assert_eq!(meta["token_endpoint"], env.auth.token_endpoint());
    assert_eq!(
        meta["grant_types_supported"],
        serde_json::json!([
            "client_credentials",
            "refresh_token",
            "urn:ietf:params:oauth:grant-type:token-exchange",
            "urn:ietf:params:oauth:grant-type:jwt-bearer",
        ])
    );
    let jwks_uri = meta["jwks_uri"].as_str().expect("jwks_uri").to_string();
    assert_eq!(jwks_uri, env.auth.jwks_uri());

    let jwks: jsonwebtoken::jwk::JwkSet = env
        .http
        .get(jwks_uri)
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("jwks");
    let token = env.good_token().await;
    let kid = jsonwebtoken::decode_header(&token)
        .expect("header")
        .kid
        .expect("kid");
    let jwk = jwks.find(&kid).expect("key by kid");
    let key = jsonwebtoken::DecodingKey::from_jwk(jwk).expect("decoding key");
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    validation.set_audience(&[AUDIENCE]);
    let data =
        jsonwebtoken::decode::<Value>(&token, &key, &validation).expect("verifies with JWKS");
    assert_eq!(data.claims["client_id"], "svc-a");
}

/// Sends an upgrade request over TLS and returns the stream after the headers.
async fn upgrade(
    env: &Env,
    token: Option<&str>,
) -> (String, tokio_rustls::client::TlsStream<TcpStream>) {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(env.pki.client_config()));
    let tcp = TcpStream::connect(env.api.addr).await.expect("connect");
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name");
    let mut tls = connector.connect(name, tcp).await.expect("tls");
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "GET /socket HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Connection: upgrade\r\nUpgrade: echo-test\r\n\r\n"
    );
    tls.write_all(request.as_bytes()).await.expect("write");
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        assert_eq!(tls.read(&mut byte).await.expect("read"), 1, "early EOF");
        head.push(byte[0]);
    }
    (String::from_utf8(head).expect("utf8"), tls)
}

#[tokio::test]
async fn upgraded_connections_echo_raw_bytes() {
    let env = setup().await;
    let (head, _) = upgrade(&env, None).await;
    assert!(head.starts_with("HTTP/1.1 401"), "{head}");

    let token = env.good_token().await;
    let (head, mut tls) = upgrade(&env, Some(&token)).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("upgrade: echo-test"),
        "{head}"
    );
    for message in [&b"ping"[..], b"\x00\x01binary\xff"] {
        tls.write_all(message).await.expect("write");
        let mut back = vec![0u8; message.len()];
        tls.read_exact(&mut back).await.expect("echo");
        assert_eq!(back, message);
    }
    tls.shutdown().await.expect("close write");
    let mut rest = Vec::new();
    tls.read_to_end(&mut rest)
        .await
        .expect("server closes after EOF");
    assert!(rest.is_empty());
    assert_eq!(env.api.seen().last().map(|s| s.status), Some(101));
}

#[tokio::test]
async fn plain_and_h2_echo_and_shutdown_on_drop() {
    let pki = TestPki::new("demo test CA").expect("pki");
    let plain = EchoApi::start(listener().await, None, None, None, None)
        .await
        .expect("plain");
    let http = http_client(&pki);
    for _ in 0..2 {
        let url = format!("http://127.0.0.1:{}/hello", plain.addr.port());
        let echo: Value = http
            .get(url)
            .send()
            .await
            .expect("get")
            .json()
            .await
            .expect("json");
        assert_eq!(echo["path"], "/hello");
        assert!(echo["sub"].is_null());
    }
    assert_eq!((plain.requests(), plain.connections()), (2, 1));

    // h2 over TLS via a raw hyper client; :authority stands in for Host.
    let tls_api = EchoApi::start(
        listener().await,
        Some(pki.server_config(&["localhost"]).expect("tls")),
        None,
        None,
        None,
    )
    .await
    .expect("tls echo");
    let mut config = pki.client_config();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = TcpStream::connect(tls_api.addr).await.expect("connect");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .expect("tls");
    let io = hyper_util::rt::TokioIo::new(tls);
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
    let request = hyper::Request::get(format!("https://localhost:{}/h2", tls_api.addr.port()))
        .body(Empty::<bytes::Bytes>::new())
        .expect("request");
    let response = sender.send_request(request).await.expect("h2 response");
    assert_eq!(response.status(), 200);
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    let echo: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(echo["version"], "HTTP/2.0");
    assert_eq!(echo["host"], format!("localhost:{}", tls_api.addr.port()));

    let addr = plain.addr;
    drop(plain);
    let deadline = Instant::now() + Duration::from_secs(2);
    while TcpStream::connect(addr).await.is_ok() {
        assert!(Instant::now() < deadline, "listener still open after drop");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
