//! Issue 12, "where it may go": the destination policy for unmatched traffic (CONNECT
//! tunnels and both absolute forms). Every destination here is on loopback: a refused
//! address is refused before it is dialled, so the tests count the connections the
//! loopback upstream accepted (none) rather than dial anything else.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use oauth_egress::intercept::ca::CertificateAuthority;
use oauth_egress::server::Running;
use oauth_egress_devserver::EchoApi;
use support::connect_tunnel;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A loopback listener that counts the connections it accepts (and closes them).
async fn counting_listener() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            seen.fetch_add(1, Ordering::SeqCst);
            drop(stream);
        }
    });
    (addr, count)
}

/// A plain-HTTP echo API on loopback.
async fn plain_api() -> EchoApi {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    EchoApi::start(listener, None, None, None, None)
        .await
        .unwrap()
}

/// Starts the proxy (with an admin listener) on `[proxy]` lines `proxy`, no routes.
async fn start(proxy: &str) -> (Running, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "[proxy]\nlisten = \"127.0.0.1:0\"\nconnect_timeout_ms = 2000\n{proxy}\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n"
    );
    let config = oauth_egress::config::from_toml(&toml, dir.path(), "destination test")
        .unwrap_or_else(|e| panic!("{e}\n{toml}"));
    let ca = Arc::new(CertificateAuthority::generate().unwrap());
    let running = oauth_egress::server::start(config, ca, &[]).await.unwrap();
    (running, dir)
}

/// Sends one request and reads the answer's head and (`Content-Length`) body.
async fn exchange(proxy: SocketAddr, request: String) -> String {
    let mut stream = TcpStream::connect(proxy).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let mut byte = [0u8; 1];
    let read = async {
        while !out.ends_with(b"\r\n\r\n") {
            if stream.read(&mut byte).await.unwrap() == 0 {
                return;
            }
            out.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&out).to_lowercase();
        let length = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(0);
        let mut body = vec![0u8; length];
        let _ = stream.read_exact(&mut body).await;
        out.extend(body);
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), read).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// The three ways to name `host:port` to the proxy, as requests.
fn three_forms(authority: &str) -> [(&'static str, String); 3] {
    [
        (
            "CONNECT",
            format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n"),
        ),
        (
            "http://",
            format!("GET http://{authority}/ HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n"),
        ),
        (
            "https://",
            format!("GET https://{authority}/ HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n"),
        ),
    ]
}

fn status_of(answer: &str) -> &str {
    answer.split(' ').nth(1).unwrap_or("")
}

const ANY_PORT: &str = "connect_ports = [\"1-65535\"]\nhttp_ports = [\"1-65535\"]\n";

#[tokio::test]
async fn every_spelling_of_loopback_is_refused_in_every_form_and_never_dialled() {
    let (upstream, accepted) = counting_listener().await;
    let (proxy, _dir) = start(ANY_PORT).await;
    let port = upstream.port();
    let spellings = [
        "127.0.0.1",
        "127.1",
        "0x7f.1",
        "[::ffff:127.0.0.1]",
        "[::127.0.0.1]",
        "[64:ff9b::127.0.0.1]",
        "[::1]",
        "localhost",
    ];
    for host in spellings {
        for (form, request) in three_forms(&format!("{host}:{port}")) {
            let answer = exchange(proxy.proxy_addr, request).await;
            assert_eq!(status_of(&answer), "403", "{form} {host}: {answer}");
            assert!(
                answer.contains("error=destination_ip_prohibited"),
                "{form} {host}: {answer}"
            );
            assert!(answer.contains("is loopback"), "{form} {host}: {answer}");
            assert!(
                answer.contains("proxy.allow_cidrs"),
                "{form} {host}: {answer}"
            );
        }
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 0, "nothing was dialled");
    proxy.stop().await;
}

#[tokio::test]
async fn allow_cidrs_lets_loopback_through_in_every_form() {
    let api = plain_api().await;
    let (proxy, _dir) = start(&format!("allow_cidrs = [\"127.0.0.0/8\"]\n{ANY_PORT}")).await;
    let authority = format!("127.0.0.1:{}", api.addr.port());
    let (_, head) = connect_tunnel(proxy.proxy_addr, &authority).await;
    assert_eq!(status_of(&head), "200", "{head}");
    let [_, (_, http), _] = three_forms(&authority);
    let answer = exchange(proxy.proxy_addr, http).await;
    assert_eq!(status_of(&answer), "200", "{answer}");
    // By name: `localhost` may resolve to ::1 (refused) and 127.0.0.1 (allowed).
    let (_, head) =
        connect_tunnel(proxy.proxy_addr, &format!("localhost:{}", api.addr.port())).await;
    assert_eq!(status_of(&head), "200", "{head}");
    assert_eq!(api.requests(), 1, "the http:// request arrived");
    proxy.stop().await;
}

#[tokio::test]
async fn the_proxys_own_listeners_are_refused_even_with_loopback_allowed() {
    let (proxy, _dir) = start(&format!(
        "allow_cidrs = [\"127.0.0.0/8\", \"::1/128\"]\n{ANY_PORT}"
    ))
    .await;
    let own = [proxy.proxy_addr, proxy.admin_addr.unwrap()];
    for addr in own {
        for host in ["127.0.0.1", "localhost", "[::ffff:127.0.0.1]"] {
            for (form, request) in three_forms(&format!("{host}:{}", addr.port())) {
                let answer = exchange(proxy.proxy_addr, request).await;
                assert_eq!(status_of(&answer), "403", "{form} {host} {addr}: {answer}");
                assert!(answer.contains("own listener"), "{form} {addr}: {answer}");
            }
        }
    }
    proxy.stop().await;
}

#[tokio::test]
async fn ports_outside_connect_ports_and_http_ports_are_refused() {
    let (upstream, accepted) = counting_listener().await;
    let (proxy, _dir) = start("allow_cidrs = [\"127.0.0.0/8\"]\n").await;
    let [connect, http, https] = three_forms(&format!("127.0.0.1:{}", upstream.port()));
    for ((form, request), key) in [
        (connect, "proxy.connect_ports"),
        (http, "proxy.http_ports"),
        (https, "proxy.connect_ports"),
    ] {
        let answer = exchange(proxy.proxy_addr, request).await;
        assert_eq!(status_of(&answer), "403", "{form}: {answer}");
        assert!(answer.contains(key), "{form}: {answer}");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 0, "nothing was dialled");
    proxy.stop().await;

    // Listed, the port passes.
    let api = plain_api().await;
    let port = api.addr.port();
    let lines = format!(
        "allow_cidrs = [\"127.0.0.0/8\"]\nconnect_ports = [{port}]\nhttp_ports = [{port}]\n"
    );
    let (proxy, _dir) = start(&lines).await;
    let [_, (_, http), _] = three_forms(&format!("127.0.0.1:{port}"));
    assert_eq!(status_of(&exchange(proxy.proxy_addr, http).await), "200");
    let (_, head) = connect_tunnel(proxy.proxy_addr, &format!("127.0.0.1:{port}")).await;
    assert_eq!(status_of(&head), "200", "{head}");
    proxy.stop().await;
}

#[tokio::test]
async fn the_unmatched_allow_list_tunnels_only_the_hosts_it_names() {
    let (upstream, accepted) = counting_listener().await;
    let lines = format!("unmatched = {{ tunnel = [\"localhost\", \"*.example\"] }}\nallow_cidrs = [\"127.0.0.0/8\", \"::1/128\"]\n{ANY_PORT}");
    let (proxy, _dir) = start(&lines).await;
    let (_, head) =
        connect_tunnel(proxy.proxy_addr, &format!("localhost:{}", upstream.port())).await;
    assert_eq!(status_of(&head), "200", "{head}");
    for (form, request) in three_forms(&format!("127.0.0.1:{}", upstream.port())) {
        let answer = exchange(proxy.proxy_addr, request).await;
        assert_eq!(status_of(&answer), "403", "{form}: {answer}");
        assert!(answer.contains("proxy.unmatched"), "{form}: {answer}");
    }
    // Only the listed CONNECT reached the upstream.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while accepted.load(Ordering::SeqCst) == 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    proxy.stop().await;
}

#[tokio::test]
async fn report_mode_lets_refused_destinations_through_and_counts_them() {
    let api = plain_api().await;
    // Loopback and the echo API's port would both be refused.
    let (proxy, _dir) =
        start("policy_mode = \"report\"\nunmatched = { tunnel = [\"api.example\"] }\n").await;
    let authority = format!("127.0.0.1:{}", api.addr.port());
    let (_, head) = connect_tunnel(proxy.proxy_addr, &authority).await;
    assert_eq!(status_of(&head), "200", "{head}");
    let [_, (_, http), _] = three_forms(&authority);
    let answer = exchange(proxy.proxy_addr, http).await;
    assert_eq!(status_of(&answer), "200", "{answer}");
    assert_eq!(api.requests(), 1);

    let admin = proxy.admin_addr.unwrap();
    let metrics = exchange(
        admin,
        "GET /metrics HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n".into(),
    )
    .await;
    for rule in ["loopback", "connect_ports", "http_ports", "not_listed"] {
        let series = format!("oauth_egress_policy_total{{action=\"would_deny\",rule=\"{rule}\"}}");
        let count = metrics
            .lines()
            .find_map(|l| l.strip_prefix(&series))
            .and_then(|v| v.trim().parse::<u64>().ok());
        assert!(count.is_some_and(|c| c >= 1), "{series} in\n{metrics}");
    }
    proxy.stop().await;
}

#[tokio::test]
async fn a_route_with_guard_is_checked_too_and_one_without_is_not() {
    use support::{Harness, Setup};
    // No loopback exception: the routed API is on 127.0.0.1.
    let policy = String::new();
    let guarded = Harness::start(Setup {
        route_extra: "scopes = [\"echo:read\"]\nguard = true".into(),
        proxy_policy: policy.clone(),
        ..Setup::default()
    })
    .await;
    let answer = guarded
        .client()
        .get(guarded.api_url())
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 403);
    let status = answer.headers()["proxy-status"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(status.contains("destination_ip_prohibited"), "{status}");
    let body = answer.text().await.unwrap();
    assert!(
        body.contains("is loopback") && body.contains("proxy.allow_cidrs"),
        "{body}"
    );
    assert_eq!(guarded.api.requests(), 0);
    guarded.stop().await;

    let plain = Harness::start(Setup {
        proxy_policy: policy,
        ..Setup::default()
    })
    .await;
    let answer = plain.client().get(plain.api_url()).send().await.unwrap();
    assert_eq!(answer.status(), 200, "a route names its host: exempt");
    plain.stop().await;
}

#[test]
fn check_prints_the_policy_in_force() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("routes.toml"),
        "[proxy]\nlisten = \"127.0.0.1:0\"\nallow_cidrs = [\"10.20.0.0/16\"]\n\
         deny_cidrs = [\"10.20.9.0/24\"]\nconnect_ports = [443, \"8443-8444\"]\n\
         policy_mode = \"report\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_oauth-egress"))
        .args(["check", "-c", "routes.toml"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let line = text
        .lines()
        .find(|l| l.starts_with("policy "))
        .unwrap_or_default();
    for part in [
        "report",
        "allow_cidrs [10.20.0.0/16]",
        "deny_cidrs [10.20.9.0/24]",
        "connect_ports [443, 8443-8444]",
        "http_ports [80]",
    ] {
        assert!(line.contains(part), "{part} in {text}");
    }
}
