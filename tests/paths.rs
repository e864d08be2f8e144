//! Issue 12, "path prefixes that mean something": on a route with a `path_prefix`, a path the
//! upstream could read as one outside the prefix is refused before any token is fetched, and
//! `allow_plaintext` is refused where any local user could take the token. Requests are sent
//! as raw bytes through an intercepted tunnel, so what reaches the proxy is what was written
//! (a URL library would normalise `..` away before sending).

mod support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::{connect_tunnel, Harness, Setup, SCOPE};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The echo route, limited to `/v1`.
fn v1_route() -> Setup {
    Setup {
        route_extra: format!("scopes = [\"{SCOPE}\"]\npath_prefix = \"/v1\""),
        ..Setup::default()
    }
}

/// Sends one raw HTTP/1.1 `GET path` through an intercepted tunnel to the routed API and
/// reads the whole answer, at most 5 s.
async fn get_in_tunnel(h: &Harness, path: &str) -> String {
    let authority = format!("localhost:{}", h.api.addr.port());
    let (stream, head) = connect_tunnel(h.proxy_addr, &authority).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let mut config = support::client_tls(h.ca.cert_pem());
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, stream).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

fn status_of(answer: &str) -> &str {
    answer.split(' ').nth(1).unwrap_or("")
}

/// A host split by path: its catch-all route must not take a path that misses the prefixed
/// route only through a dot-segment (`/v1/x/../admin` is `/v1/admin` to the upstream).
#[tokio::test]
async fn a_path_that_only_misses_a_prefixed_route_through_dots_is_refused_on_the_catch_all() {
    let h = Harness::start(Setup {
        route_extra: format!(
            "scopes = [\"{SCOPE}\"]\n\n[[route]]\nname = \"admin\"\nhost = \"localhost\"\n\
             path_prefix = \"/v1/admin\"\nclient = \"test\"\nscopes = [\"{SCOPE}\"]"
        ),
        ..Setup::default()
    })
    .await;
    let answer = get_in_tunnel(&h, "/v1/x/../admin").await;
    assert_eq!(status_of(&answer), "400", "{answer}");
    assert_eq!(h.auth.token_requests(), 0);
    assert_eq!(h.api.requests(), 0);
    let answer = get_in_tunnel(&h, "/v2/ok").await;
    assert_eq!(status_of(&answer), "200", "{answer}");
    h.stop().await;
}

#[tokio::test]
async fn paths_the_upstream_could_read_outside_the_prefix_get_400_and_no_token() {
    let h = Harness::start(v1_route()).await;
    let cases = [
        ("/v1/../admin", "dot-segment"),
        ("/v1/%2e%2e/admin", "dot-segment"),
        ("/v1/%2E%2E/admin", "dot-segment"),
        ("/v1/./admin", "dot-segment"),
        ("/v1//../admin", "empty segment"),
        ("/v1//admin", "empty segment"),
        ("/v1/%2Fadmin", "encoded slash"),
        ("/v1/%2fadmin", "encoded slash"),
        ("/v1/a%5cb", "backslash"),
        ("/v1/a%5Cb", "backslash"),
        ("/v1/a\\b", "backslash"),
    ];
    for (path, why) in cases {
        let answer = get_in_tunnel(&h, path).await;
        assert_eq!(status_of(&answer), "400", "{path}: {answer}");
        assert!(answer.contains("route echo"), "{path}: {answer}");
        assert!(answer.contains(why), "{path}: {answer}");
        assert!(answer.contains("path_prefix \"/v1\""), "{path}: {answer}");
        assert!(
            answer.contains("proxy-status: oauth-egress; error=http_request_denied"),
            "{path}: {answer}"
        );
    }
    assert_eq!(h.auth.token_requests(), 0, "no token was fetched");
    assert_eq!(h.api.requests(), 0, "the upstream saw nothing");

    // Ordinary paths under the prefix still pass, with the token.
    for path in ["/v1/ok", "/v1/a%20b", "/v1/", "/v1/file.txt"] {
        let answer = get_in_tunnel(&h, path).await;
        assert_eq!(status_of(&answer), "200", "{path}: {answer}");
    }
    assert_eq!(h.api.requests(), 4);
    assert_eq!(h.auth.token_requests(), 1);
    h.stop().await;
}

/// The same over HTTP/2: hyper passes `:path` through as sent, so the proxy sees it as is.
#[tokio::test]
async fn http2_paths_outside_the_prefix_get_400_and_no_token() {
    let h = Harness::start(v1_route()).await;
    let authority = format!("localhost:{}", h.api.addr.port());
    let (stream, head) = connect_tunnel(h.proxy_addr, &authority).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let mut config = support::client_tls(h.ca.cert_pem());
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = connector.connect(name, stream).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut get = async |path: &str| {
        let req = http::Request::builder()
            .uri(format!("https://{authority}{path}"))
            .body(Empty::<Bytes>::new())
            .unwrap();
        let res = tokio::time::timeout(Duration::from_secs(5), sender.send_request(req))
            .await
            .unwrap()
            .unwrap();
        let status = res.status().as_u16();
        let _ = res.into_body().collect().await;
        status
    };
    for path in [
        "/v1/../admin",
        "/v1/%2e%2e/admin",
        "/v1//../admin",
        "/v1/%2Fadmin",
        "/v1/a%5cb",
    ] {
        assert_eq!(get(path).await, 400, "{path}");
    }
    assert_eq!(h.auth.token_requests(), 0, "no token was fetched");
    assert_eq!(h.api.requests(), 0, "the upstream saw nothing");
    for path in ["/v1/ok", "/v1/a%20b"] {
        assert_eq!(get(path).await, 200, "{path}");
    }
    h.stop().await;
}

/// A config with one route carrying `extra`.
fn config_with(extra: &str) -> Result<oauth_egress::config::Config, String> {
    let text = format!(
        r#"
[clients.c]
token_endpoint = "https://idp.example/token"
client_id = "c"
auth = "client_secret_basic"
client_secret = {{ env = "UNUSED" }}

[[route]]
name = "plain"
client = "c"
{extra}
"#
    );
    oauth_egress::config::from_toml(&text, std::path::Path::new("."), "paths test")
        .map_err(|e| e.to_string())
}

#[test]
fn allow_plaintext_needs_an_exact_host_and_a_port() {
    let why = "a token in clear to any port on a host is a token to any local user who binds one";
    for extra in [
        "host = \"localhost\"\nallow_plaintext = true",
        "host = \"*.internal.example\"\nport = 8080\nallow_plaintext = true",
        "host = \"*.internal.example\"\nallow_plaintext = true",
    ] {
        let err = config_with(extra).expect_err(extra);
        assert!(err.contains("route #1 (plain)"), "{extra}: {err}");
        assert!(err.contains(why), "{extra}: {err}");
    }
    config_with("host = \"localhost\"\nport = 8080\nallow_plaintext = true")
        .expect("an exact host and a port are fine");
}
