//! Issue 10, "close the holes": host binding inside a tunnel, credential trailers, TRACE on a
//! route, and the `unmatched` policy for every way a destination can be named. Everything
//! over real loopback sockets; no test ever names a destination that is not loopback.

mod support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use oauth_egress_devserver::echo_api::EchoApi;
use support::{connect_tunnel, raw_exchange, Harness, Setup};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// Opens `CONNECT authority`, then TLS (trusting the proxy's CA, SNI `localhost`) offering
/// `alpn`.
async fn tunnel_tls(h: &Harness, authority: &str, alpn: &[u8]) -> Tls {
    let (stream, head) = connect_tunnel(h.proxy_addr, authority).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let mut config = support::client_tls(h.ca.cert_pem());
    config.alpn_protocols = vec![alpn.to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    connector.connect(name, stream).await.unwrap()
}

/// Sends raw HTTP/1.1 bytes through an intercepted tunnel to the routed API and reads the
/// whole answer (the request should say `Connection: close`), at most 5 s.
async fn intercepted_h1(h: &Harness, request: &[u8]) -> String {
    let authority = format!("localhost:{}", h.api.addr.port());
    let mut tls = tunnel_tls(h, &authority, b"http/1.1").await;
    tls.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

fn status_of(answer: &str) -> &str {
    answer.split(' ').nth(1).unwrap_or("")
}

// ---- 1. Host binding ----------------------------------------------------------------------

#[tokio::test]
async fn absolute_form_in_a_tunnel_with_another_host_gets_421_and_no_token() {
    let h = Harness::start(Setup::default()).await;
    let port = h.api.addr.port();
    let answer = intercepted_h1(
        &h,
        format!(
            "GET https://localhost:{port}/ HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 421"), "{answer}");
    assert!(answer.contains("evil.example"), "{answer}");
    assert_eq!(h.api.requests(), 0, "the upstream saw nothing");
    assert_eq!(h.auth.token_requests(), 0, "no token was fetched");
    h.stop().await;
}

#[tokio::test]
async fn two_host_headers_in_a_tunnel_get_400() {
    let h = Harness::start(Setup::default()).await;
    let port = h.api.addr.port();
    for second in ["evil.example".to_string(), format!("localhost:{port}")] {
        let answer = intercepted_h1(
            &h,
            format!(
                "GET / HTTP/1.1\r\nHost: localhost:{port}\r\nHost: {second}\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{second}: {answer}");
        assert!(answer.contains("Host"), "{answer}");
    }
    assert_eq!(h.api.requests(), 0);
    assert_eq!(h.auth.token_requests(), 0);
    h.stop().await;
}

/// Sends one HTTP/2 GET through an intercepted tunnel with `:authority` and `host` fields.
async fn intercepted_h2(h: &Harness, authority: &str, host: &str) -> u16 {
    let tunnel = format!("localhost:{}", h.api.addr.port());
    let tls = tunnel_tls(h, &tunnel, b"h2").await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = http::Request::builder()
        .uri(format!("https://{authority}/h2"))
        .header("host", host)
        .body(Empty::<Bytes>::new())
        .unwrap();
    let res = tokio::time::timeout(Duration::from_secs(5), sender.send_request(req))
        .await
        .unwrap()
        .unwrap();
    let status = res.status().as_u16();
    let _ = res.into_body().collect().await;
    status
}

#[tokio::test]
async fn http2_with_a_host_field_naming_another_host_gets_421() {
    let h = Harness::start(Setup::default()).await;
    let port = h.api.addr.port();
    let target = format!("localhost:{port}");
    assert_eq!(intercepted_h2(&h, &target, "evil.example").await, 421);
    assert_eq!(intercepted_h2(&h, "evil.example", &target).await, 421);
    assert_eq!(h.api.requests(), 0);
    assert_eq!(h.auth.token_requests(), 0);
    // Both naming the tunnel's host: served.
    assert_eq!(intercepted_h2(&h, &target, &target).await, 200);
    h.stop().await;
}

#[tokio::test]
async fn the_upstream_gets_exactly_one_host_naming_the_target() {
    let h = Harness::start(Setup::default()).await;
    let port = h.api.addr.port();
    let target = format!("localhost:{port}");
    // Inside the tunnel: no port (the tunnel's), other case, absolute form; and HTTP/2.
    for request in [
        "GET /a HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".to_string(),
        format!("GET /b HTTP/1.1\r\nHost: LocalHost:{port}\r\nConnection: close\r\n\r\n"),
        format!("GET https://localhost:{port}/c HTTP/1.1\r\nHost: localhost:{port}\r\nConnection: close\r\n\r\n"),
    ] {
        let answer = intercepted_h1(&h, request.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{request}: {answer}");
    }
    assert_eq!(intercepted_h2(&h, &target, &target).await, 200);
    let seen = h.api.seen();
    assert_eq!(seen.len(), 4);
    for s in &seen {
        assert_eq!(
            s.host.as_deref(),
            Some(target.as_str()),
            "{} {:?}",
            s.path,
            s.hosts
        );
        assert!(
            s.hosts.is_empty() || s.hosts == [target.clone()],
            "{} ({}): at most one Host, the target's: {:?}",
            s.path,
            s.version,
            s.hosts
        );
    }

    // Absolute form on the proxy port to a plain-http server: one Host, the URI's.
    let plain = EchoApi::start(
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        None,
        None,
        None,
        None,
    )
    .await
    .unwrap();
    let plain_target = format!("127.0.0.1:{}", plain.addr.port());
    let answer = raw_exchange(
        h.proxy_addr,
        format!("GET http://{plain_target}/d HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await;
    assert_eq!(status_of(&answer), "200", "{answer}");
    assert_eq!(plain.seen()[0].hosts, [plain_target]);
    h.stop().await;
}

// ---- 2. Trailers --------------------------------------------------------------------------

#[tokio::test]
async fn credential_trailers_are_dropped_on_a_route_and_others_pass() {
    let h = Harness::start(Setup::default()).await;
    let port = h.api.addr.port();
    let request = format!(
        "POST /upload HTTP/1.1\r\nHost: localhost:{port}\r\nTransfer-Encoding: chunked\r\n\
         Trailer: authorization, dpop, proxy-authorization, x-checksum\r\nTE: trailers\r\n\
         Connection: close\r\n\r\n\
         5\r\nhello\r\n0\r\nAuthorization: Bearer caller-chosen\r\nDPoP: caller-proof\r\n\
         Proxy-Authorization: Basic Zm9vOmJhcg==\r\nX-Checksum: abc123\r\n\r\n"
    );
    let answer = intercepted_h1(&h, request.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let seen = h.api.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body, "hello");
    assert_eq!(
        seen[0].trailers,
        [("x-checksum".to_string(), "abc123".to_string())],
        "only the harmless trailer reaches the upstream ({})",
        seen[0].version
    );
    h.stop().await;
}

/// The proxy owns the credential on a route: a caller's own `DPoP` header never reaches the
/// upstream of a Bearer route (on a DPoP route the proxy's proof replaces it).
#[tokio::test]
async fn a_callers_dpop_header_is_dropped_on_a_bearer_route() {
    let h = Harness::start(Setup::default()).await;
    let port = h.api.addr.port();
    let request = format!(
        "GET /hello HTTP/1.1\r\nHost: localhost:{port}\r\nDPoP: caller.chosen.proof\r\n\
         Connection: close\r\n\r\n"
    );
    let answer = intercepted_h1(&h, request.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let seen = h.api.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].dpop_headers, 0,
        "the caller's DPoP header was forwarded"
    );
    h.stop().await;
}

// ---- 3. TRACE -----------------------------------------------------------------------------

#[tokio::test]
async fn trace_on_a_route_is_refused_before_any_token_and_unmatched_trace_passes() {
    let h = Harness::start(Setup::default()).await;
    let port = h.api.addr.port();
    let answer = intercepted_h1(
        &h,
        format!("TRACE / HTTP/1.1\r\nHost: localhost:{port}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 405"), "{answer}");
    let lower = answer.to_ascii_lowercase();
    assert!(lower.contains("\r\nallow: "), "{answer}");
    assert!(
        !lower.contains("trace,") && !lower.contains(", trace"),
        "{answer}"
    );
    assert!(
        lower.contains("proxy-status: oauth-egress; error=http_request_denied"),
        "{answer}"
    );
    assert!(answer.contains("route echo"), "{answer}");
    assert_eq!(h.api.requests(), 0);
    assert_eq!(
        h.auth.token_requests(),
        0,
        "refused before any token is fetched"
    );

    // An unmatched host: a plain tunnel, the proxy never sees the method.
    let open = format!("localhost:{}", h.open_api.addr.port());
    let res = h
        .client_trusting(h.pki.ca_cert_pem())
        .request(reqwest::Method::TRACE, format!("https://{open}/"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(h.open_api.seen()[0].method, "TRACE");
    h.stop().await;
}

// ---- 4. unmatched policy for every form ---------------------------------------------------

/// What each way of naming an unrouted loopback destination got: (CONNECT, http://, https://)
/// statuses and how many requests the destinations saw.
async fn unmatched_forms(policy: &'static str) -> ([String; 3], usize, usize) {
    let h = Harness::start(Setup {
        unmatched: policy,
        ..Setup::default()
    })
    .await;
    let plain = EchoApi::start(
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        None,
        None,
        None,
        None,
    )
    .await
    .unwrap();
    let open = format!("localhost:{}", h.open_api.addr.port());
    let (_, connect) = connect_tunnel(h.proxy_addr, &open).await;
    let http = raw_exchange(
        h.proxy_addr,
        format!(
            "GET http://127.0.0.1:{}/latest/meta-data/ HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
            plain.addr.port()
        )
        .as_bytes(),
    )
    .await;
    let https = raw_exchange(
        h.proxy_addr,
        format!(
            "GET https://{open}/internal HTTP/1.1\r\nHost: {open}\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    // (The CONNECT answer's body is not read: its head says enough.)
    for answer in [&http, &https] {
        if status_of(answer) == "403" {
            assert!(answer.contains("proxy.unmatched"), "{answer}");
        }
    }
    let statuses = [&connect, &http, &https].map(|a| status_of(a).to_string());
    let seen = (plain.requests(), h.open_api.requests());
    // The routed host is served under both policies.
    assert_eq!(
        h.client().get(h.api_url()).send().await.unwrap().status(),
        200
    );
    h.stop().await;
    (statuses, seen.0, seen.1)
}

#[tokio::test]
async fn deny_applies_to_connect_and_both_absolute_forms() {
    let (statuses, plain, open) = unmatched_forms("deny").await;
    assert_eq!(statuses, ["403", "403", "403"]);
    assert_eq!((plain, open), (0, 0), "nothing reached an unrouted host");
}

#[tokio::test]
async fn tunnel_policy_passes_connect_and_both_absolute_forms() {
    let (statuses, plain, open) = unmatched_forms("tunnel").await;
    assert_eq!(statuses, ["200", "200", "200"]);
    assert_eq!(
        (plain, open),
        (1, 1),
        "the http:// and https:// requests arrived"
    );
}
