//! Static credentials on routes (`credential = { ... }`) and tokens placed in another header
//! (`token_header`, `token_scheme`), end to end: the proxy started as `run` starts it, real
//! TLS upstreams on loopback, every log line of the test captured at TRACE.

use std::io::Write;
use std::sync::{Arc, Mutex};

use oauth_egress::intercept::ca::CertificateAuthority;
use oauth_egress_devserver::{EchoApi, TestPki};
use tokio::net::TcpListener;

mod support;

const API_KEY: &str = "sk_live_first-key-0001";
const ROTATED: &str = "sk_live_rotated-key-000002";
const PASSWORD: &str = "basic-pass-word-9";

/// Every log line the test's tasks write (the runtime is single-threaded, so the proxy's
/// tasks log here too).
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

async fn echo(pki: &TestPki) -> EchoApi {
    let tls = pki.server_config(&["localhost", "127.0.0.1"]).unwrap();
    EchoApi::start(
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        Some(tls),
        None,
        None,
        None,
    )
    .await
    .unwrap()
}

fn header<'a>(seen: &'a oauth_egress_devserver::echo_api::Seen, name: &str) -> Vec<&'a str> {
    seen.headers
        .iter()
        .filter(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .collect()
}

fn client(addr: std::net::SocketAddr, roots: &[&str]) -> reqwest::Client {
    let pem: String = roots.concat();
    reqwest::Client::builder()
        .use_preconfigured_tls(support::client_tls(&pem))
        .proxy(reqwest::Proxy::all(format!("http://{addr}")).unwrap())
        .build()
        .unwrap()
}

#[tokio::test]
async fn each_route_gets_only_its_own_credential_never_logged_and_rotated_on_change() {
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let pki = TestPki::new("credentials upstream CA").unwrap();
    let (keyed, basic, open) = (echo(&pki).await, echo(&pki).await, echo(&pki).await);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("api-key"), format!("{API_KEY}\n")).unwrap();
    // The Basic password comes from a real helper script (`{ exec }`), which also writes to
    // stderr (logged, the secret blanked out).
    let helper = dir.path().join("password-helper");
    std::fs::write(
        &helper,
        format!("#!/bin/sh\necho \"looking up $1\" >&2\necho {PASSWORD}\n"),
    )
    .unwrap();
    let mode = <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o755);
    std::fs::set_permissions(&helper, mode).unwrap();
    let toml = format!(
        r#"
[proxy]
listen = "127.0.0.1:0"
unmatched = "tunnel"
allow_cidrs = ["127.0.0.0/8"]
connect_ports = ["1-65535"]
http_ports = ["1-65535"]

[[route]]
name = "keyed"
host = "localhost"
port = {keyed}
credential = {{ header = "X-Api-Key", value = {{ file = "api-key" }} }}

[[route]]
name = "basic"
host = "localhost"
port = {basic}
credential = {{ basic = {{ user = "svc", password = {{ exec = ["{helper}", "legacy"], cache_secs = 300 }} }} }}
"#,
        keyed = keyed.addr.port(),
        basic = basic.addr.port(),
        helper = helper.display(),
    );
    let config = oauth_egress::config::from_toml(&toml, dir.path(), "test").unwrap();
    let ca = Arc::new(CertificateAuthority::generate().unwrap());
    let running = oauth_egress::server::start(config, ca.clone(), &[pki.ca_cert_der()])
        .await
        .unwrap();
    let upstream_ca = support::pem("CERTIFICATE", pki.ca_cert_der().as_ref());
    let http = client(running.proxy_addr, &[ca.cert_pem(), &upstream_ca]);
    let callers_own = |url: String| {
        http.get(url)
            .header("x-api-key", "callers-own-key")
            .header("authorization", "Bearer callers-own-token")
    };
    for api in [&keyed, &basic, &open] {
        let host = if std::ptr::eq(api, &open) {
            "127.0.0.1"
        } else {
            "localhost"
        };
        let res = callers_own(format!("https://{host}:{}/x", api.addr.port()))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
    }
    let basic_value = format!(
        "Basic {}",
        base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            format!("svc:{PASSWORD}")
        )
    );
    let keyed_seen = &keyed.seen()[0];
    assert_eq!(header(keyed_seen, "x-api-key"), [API_KEY]);
    assert_eq!(
        keyed_seen.authorization, None,
        "the caller's Authorization passed"
    );
    let basic_seen = &basic.seen()[0];
    assert_eq!(
        basic_seen.authorization.as_deref(),
        Some(basic_value.as_str())
    );
    // Another route's key never; the caller's own header that is not this route's passes.
    assert_eq!(header(basic_seen, "x-api-key"), ["callers-own-key"]);
    // The unrouted host (a tunnel) gets the caller's own headers and none of the routes'.
    let open_seen = &open.seen()[0];
    assert_eq!(header(open_seen, "x-api-key"), ["callers-own-key"]);
    assert_eq!(
        open_seen.authorization.as_deref(),
        Some("Bearer callers-own-token")
    );

    // Plain http to a routed host: refused, the credential is never sent in clear.
    let res = http
        .get(format!("http://localhost:{}/clear", keyed.addr.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    assert_eq!(keyed.seen().len(), 1);

    // Rotation: the file changes, the next request carries the new key, no restart.
    std::fs::write(dir.path().join("api-key"), ROTATED).unwrap();
    let res = http
        .get(format!("https://localhost:{}/y", keyed.addr.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(header(&keyed.seen()[1], "x-api-key"), [ROTATED]);

    // A rotated file a header cannot carry: 502 naming the route and the file, not the value.
    std::fs::write(dir.path().join("api-key"), "sk_live_broken\nX-Injected: 1").unwrap();
    let res = http
        .get(format!("https://localhost:{}/z", keyed.addr.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 502);
    let body = res.text().await.unwrap();
    assert!(
        body.contains("route keyed") && body.contains("api-key"),
        "{body}"
    );
    assert!(!body.contains("sk_live"), "{body}");
    assert_eq!(keyed.seen().len(), 2);

    drop(http);
    running.stop().await;
    let logs = logs.text();
    assert!(logs.contains("access"), "no access log captured:\n{logs}");
    assert!(
        logs.contains("looking up legacy"),
        "the helper's stderr is logged:\n{logs}"
    );
    let b64 = basic_value.trim_start_matches("Basic ");
    for secret in [API_KEY, ROTATED, PASSWORD, b64, "sk_live_broken"] {
        assert!(!logs.contains(secret), "{secret} in a log line:\n{logs}");
    }
}

#[tokio::test]
async fn a_credential_a_header_cannot_carry_stops_the_start_naming_the_route() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("key"), "sk_live_one\rsk_live_two").unwrap();
    let toml = r#"
[proxy]
listen = "127.0.0.1:0"
[[route]]
name = "stripe"
host = "api.stripe.com"
credential = { header = "Authorization", prefix = "Bearer ", value = { file = "key" } }
"#;
    let config = oauth_egress::config::from_toml(toml, dir.path(), "test").unwrap();
    let ca = Arc::new(CertificateAuthority::generate().unwrap());
    let err = oauth_egress::server::start(config, ca, &[])
        .await
        .err()
        .expect("started with a broken credential")
        .to_string();
    assert!(err.contains("route stripe"), "{err}");
    assert!(err.contains("cannot go in a header value"), "{err}");
    assert!(!err.contains("sk_live"), "{err}");
}

#[tokio::test]
async fn token_header_and_token_scheme_place_the_token_elsewhere() {
    let h = support::Harness::start(support::Setup {
        route_extra: format!(
            "scopes = [\"{}\"]\ntoken_header = \"X-Auth-Token\"\ntoken_scheme = \"\"",
            support::SCOPE
        ),
        ..Default::default()
    })
    .await;
    // The echo API reads Authorization, so it refuses; what it saw is the point.
    let _ = h
        .client()
        .get(h.api_url())
        .header("x-auth-token", "callers-own")
        .send()
        .await
        .unwrap();
    let seen = &h.api.seen()[0];
    let placed = header(seen, "x-auth-token");
    assert_eq!(placed.len(), 1, "{seen:?}");
    assert_eq!(
        placed[0].split('.').count(),
        3,
        "not the bare token: {seen:?}"
    );
    assert_eq!(seen.authorization, None, "{seen:?}");
    h.stop().await;
}
