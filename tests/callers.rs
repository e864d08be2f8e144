//! Issue 12, "who may use it": `[[caller]]`, `proxy.callers = "known"`, route `callers`, on
//! every form a destination can be named in (CONNECT then intercepted, CONNECT tunnel,
//! absolute-form `https://`), over real sockets; `Proxy-Authorization` never reaches an
//! upstream.

mod support;

use std::sync::Arc;

use base64::Engine;
use support::{client_tls, read_head, Harness, Setup};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PASSWORD: &str = "billing-pw-not-for-logs";
const BEARER: &str = "reports-token-not-for-logs";

fn basic() -> String {
    let pair = format!("billing:{PASSWORD}");
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    )
}

/// `proxy.callers = "known"` with a Basic caller (billing) and a Bearer caller (reports);
/// the routed API lists only billing. `extra_proxy` goes into `[proxy]`.
async fn start(extra_proxy: &str, route_callers: &str) -> (Harness, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("billing.pw");
    let token = dir.path().join("reports.token");
    std::fs::write(&pw, format!("{PASSWORD}\n")).unwrap();
    std::fs::write(&token, BEARER).unwrap();
    let setup = Setup {
        proxy_policy: format!(
            "{}\ncallers = \"known\"\n{extra_proxy}",
            Setup::default().proxy_policy
        ),
        route_extra: format!(
            "scopes = [\"{}\"]\n{route_callers}\n\
             [[caller]]\nname = \"billing\"\n\
             proxy_auth = {{ basic = {{ user = \"billing\", password = {{ file = \"{}\" }} }} }}\n\
             [[caller]]\nname = \"reports\"\nproxy_auth = {{ bearer = {{ file = \"{}\" }} }}\n",
            support::SCOPE,
            pw.display(),
            token.display()
        ),
        ..Setup::default()
    };
    (Harness::start(setup).await, dir)
}

/// A client through the proxy presenting `auth` as `Proxy-Authorization` (on its CONNECTs).
fn client_with(h: &Harness, auth: Option<&str>) -> reqwest::Client {
    client_trusting(h, auth, h.ca.cert_pem())
}

fn client_trusting(h: &Harness, auth: Option<&str>, ca_pem: &str) -> reqwest::Client {
    let mut proxy = reqwest::Proxy::all(format!("http://{}", h.proxy_addr)).unwrap();
    if let Some(auth) = auth {
        proxy = proxy.custom_http_auth(auth.parse().unwrap());
    }
    reqwest::Client::builder()
        .use_preconfigured_tls(client_tls(ca_pem))
        .proxy(proxy)
        .build()
        .unwrap()
}

/// `CONNECT authority` presenting `auth`; the stream and the answer's head.
async fn connect(h: &Harness, authority: &str, auth: Option<&str>) -> (TcpStream, String) {
    let mut stream = TcpStream::connect(h.proxy_addr).await.unwrap();
    let auth = auth.map_or(String::new(), |a| format!("Proxy-Authorization: {a}\r\n"));
    let head = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n{auth}\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    let head = read_head(&mut stream).await;
    (stream, head)
}

/// One absolute-form request to the routed API presenting `auth`; the whole answer.
async fn absolute(h: &Harness, auth: Option<&str>) -> String {
    let port = h.api.addr.port();
    let auth = auth.map_or(String::new(), |a| format!("Proxy-Authorization: {a}\r\n"));
    let request = format!(
        "GET https://localhost:{port}/abs HTTP/1.1\r\nHost: localhost:{port}\r\n{auth}Connection: close\r\n\r\n"
    );
    support::raw_exchange(h.proxy_addr, request.as_bytes()).await
}

#[tokio::test]
async fn known_callers_are_served_on_every_form_and_others_get_407() {
    let (h, _dir) = start("", "").await;
    let api = format!("localhost:{}", h.api.addr.port());

    // Nothing presented, or a wrong credential: 407 with both challenges, nothing fetched.
    for auth in [
        None,
        Some("Basic YmlsbGluZzp3cm9uZw=="),
        Some("Bearer wrong"),
    ] {
        let (_, head) = connect(&h, &api, auth).await;
        assert!(head.starts_with("HTTP/1.1 407"), "{auth:?}: {head}");
        let lower = head.to_lowercase();
        assert!(
            lower.contains("proxy-authenticate: basic realm=\"oauth-egress\""),
            "{head}"
        );
        assert!(
            lower.contains("proxy-authenticate: bearer realm=\"oauth-egress\""),
            "{head}"
        );
        assert!(
            lower.contains("proxy-status: oauth-egress; error=http_request_denied"),
            "{head}"
        );
        let answer = absolute(&h, auth).await;
        assert!(answer.starts_with("HTTP/1.1 407"), "{answer}");
        assert!(
            answer.contains("proxy_auth"),
            "an actionable body: {answer}"
        );
        let open = format!("localhost:{}", h.open_api.addr.port());
        let (_, head) = connect(&h, &open, auth).await;
        assert!(head.starts_with("HTTP/1.1 407"), "tunnel: {head}");
    }
    assert_eq!(h.auth.token_requests(), 0);
    assert_eq!(h.api.requests(), 0);

    // Basic: intercepted (CONNECT), and absolute-form.
    let client = client_with(&h, Some(&basic()));
    let response = client
        .get(format!("{}/in", h.api_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let answer = absolute(&h, Some(&basic())).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // Bearer: a tunnel to an unrouted host.
    let open = format!("https://localhost:{}/t", h.open_api.addr.port());
    let upstream_ca = support::pem("CERTIFICATE", &h.pki.ca_cert_der());
    let tunnelled = client_trusting(&h, Some(&format!("Bearer {BEARER}")), &upstream_ca)
        .get(open)
        .send()
        .await
        .unwrap();
    assert_eq!(tunnelled.status(), 200);

    // No upstream saw a Proxy-Authorization; the routed API saw the route's token.
    for seen in h.api.seen().into_iter().chain(h.open_api.seen()) {
        assert_eq!(
            seen.proxy_authorization, None,
            "{} {}",
            seen.method, seen.path
        );
    }
    assert!(h
        .api
        .seen()
        .iter()
        .all(|s| s.status == 200 && s.jti.is_some()));
    h.stop().await;
}

#[tokio::test]
async fn a_proxy_authorization_inside_an_intercepted_tunnel_is_not_forwarded() {
    let (h, _dir) = start("", "").await;
    let api = format!("localhost:{}", h.api.addr.port());
    let (stream, head) = connect(&h, &api, Some(&basic())).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let tls = tokio_rustls::TlsConnector::from(Arc::new(client_tls(h.ca.cert_pem())));
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = tls.connect(name, stream).await.unwrap();
    let request = format!(
        "GET /inner HTTP/1.1\r\nHost: {api}\r\nProxy-Authorization: {}\r\nConnection: close\r\n\r\n",
        basic()
    );
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        tls.read_to_end(&mut answer),
    )
    .await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let seen = h.api.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].proxy_authorization, None);
    h.stop().await;
}

#[tokio::test]
async fn a_route_refuses_callers_it_does_not_list_before_any_token_is_fetched() {
    let (h, _dir) = start("", "callers = [\"billing\"]").await;
    let reports = client_with(&h, Some(&format!("Bearer {BEARER}")));
    let response = reports
        .get(format!("{}/r", h.api_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    let body = response.text().await.unwrap();
    assert!(
        body.contains("route echo") && body.contains("caller reports"),
        "{body}"
    );
    assert!(!body.contains(BEARER), "{body}");
    assert_eq!(
        h.auth.token_requests(),
        0,
        "no token fetched for a refused caller"
    );
    assert_eq!(h.api.requests(), 0);
    // The listed caller is served.
    let billing = client_with(&h, Some(&basic()));
    let response = billing
        .get(format!("{}/b", h.api_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    h.stop().await;
}

/// The count of `oauth_egress_policy_total{action="would_deny",rule=...}`.
fn would_deny(rule: &str) -> u64 {
    let text = oauth_egress::metrics::render();
    let series = format!("oauth_egress_policy_total{{action=\"would_deny\",rule=\"{rule}\"}}");
    text.lines()
        .find_map(|l| l.strip_prefix(&series))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn report_mode_lets_refused_callers_through_and_counts_them() {
    oauth_egress::metrics::init();
    let (h, _dir) = start("policy_mode = \"report\"", "callers = [\"billing\"]").await;
    let (unknown, route) = (would_deny("unknown_caller"), would_deny("route_callers"));
    // Unidentified: would get 407 (unknown caller) and 403 (not on the route's list).
    let response = client_with(&h, None)
        .get(format!("{}/report", h.api_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(would_deny("unknown_caller") > unknown);
    assert!(would_deny("route_callers") > route);
    let text = oauth_egress::metrics::render();
    assert!(
        text.contains("oauth_egress_caller_requests_total{caller=\"unidentified\",status=\"2xx\"}"),
        "{text}"
    );
    h.stop().await;
}

#[tokio::test]
async fn a_caller_known_by_its_address_needs_no_credential() {
    let setup = Setup {
        proxy_policy: format!("{}\ncallers = \"known\"", Setup::default().proxy_policy),
        route_extra: format!(
            "scopes = [\"{}\"]\ncallers = [\"local\"]\n\
             [[caller]]\nname = \"local\"\nsources = [\"127.0.0.0/8\", \"::1\"]\n",
            support::SCOPE
        ),
        ..Setup::default()
    };
    let h = Harness::start(setup).await;
    let response = h
        .client()
        .get(format!("{}/s", h.api_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    h.stop().await;
}

/// The real binary: the `access` line names the caller, and no line (debug included) carries
/// a credential, right or wrong; the upstream gets no `Proxy-Authorization`.
#[test]
fn the_access_log_names_the_caller_and_never_its_credential() {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::process::{Command, Stdio};
    let upstream = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let upstream_port = upstream.local_addr().unwrap().port();
    let received = std::thread::spawn(move || {
        let mut heads = Vec::new();
        for _ in 0..1 {
            let (mut conn, _) = upstream.accept().unwrap();
            conn.set_read_timeout(Some(std::time::Duration::from_secs(5)))
                .unwrap();
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && conn.read(&mut byte).unwrap_or(0) == 1 {
                head.push(byte[0]);
            }
            let _ = conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
            heads.push(String::from_utf8_lossy(&head).to_lowercase());
        }
        heads
    });
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("billing.pw"), PASSWORD).unwrap();
    std::fs::write(
        dir.path().join("routes.toml"),
        "[proxy]\nlisten = \"127.0.0.1:0\"\ncallers = \"known\"\nallow_cidrs = [\"127.0.0.0/8\"]\n\
         http_ports = [\"1-65535\"]\nca_cert = \"ca.pem\"\nca_key = \"ca.key\"\n\
         [[caller]]\nname = \"billing\"\n\
         proxy_auth = { basic = { user = \"billing\", password = { file = \"billing.pw\" } } }\n",
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_oauth-egress"))
        .args(["--log-format", "json", "run", "-c", "routes.toml"])
        .current_dir(dir.path())
        .env("RUST_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let stderr = child.stderr.take().unwrap();
    let _child = Kill(child);
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut lines = Vec::new();
    let next = |needle: &str, lines: &mut Vec<String>| -> serde_json::Value {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            let Ok(line) = rx.recv_timeout(left) else {
                break;
            };
            lines.push(line.clone());
            if line.contains(needle) {
                return serde_json::from_str(&line).unwrap();
            }
        }
        panic!("no log line with {needle:?}:\n{}", lines.join("\n"));
    };
    let listening = next("oauth-egress listening", &mut lines);
    let proxy = (listening["listen"].as_str())
        .unwrap_or_else(|| panic!("{listening}"))
        .to_string();
    let exchange = |auth: &str| {
        let mut stream = std::net::TcpStream::connect(&proxy).unwrap();
        stream
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        write!(
            stream,
            "GET http://127.0.0.1:{upstream_port}/logged HTTP/1.1\r\nHost: 127.0.0.1:{upstream_port}\r\n\
             Proxy-Authorization: {auth}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        answer
    };
    let wrong = base64::engine::general_purpose::STANDARD.encode("billing:wrong-pw-not-for-logs");
    let answer = exchange(&format!("Basic {wrong}"));
    assert!(answer.starts_with("HTTP/1.1 407"), "{answer}");
    let refused = next("caller refused", &mut lines);
    assert_eq!(refused["caller"], "unidentified", "{refused}");
    let answer = exchange(&basic());
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let access = next("/logged", &mut lines);
    assert_eq!(access["target"], "access", "{access}");
    assert_eq!(access["caller"], "billing", "{access}");
    // The caller's address too, so a failure can be traced to the connection.
    let peer = access["peer"].as_str().unwrap_or_default();
    assert!(peer.starts_with("127.0.0.1:"), "{access}");
    let heads = received.join().unwrap();
    assert!(!heads[0].contains("proxy-authorization"), "{}", heads[0]);
    let encoded = basic();
    for line in &lines {
        for secret in [
            PASSWORD,
            "wrong-pw-not-for-logs",
            &encoded[6..],
            wrong.as_str(),
        ] {
            assert!(!line.contains(secret), "a credential in the log: {line}");
        }
    }
}

/// `check` prints the caller policy (never a credential) and warns about `"any"` on a
/// listener other hosts can reach.
#[test]
fn check_prints_the_caller_policy_and_warns_about_any_on_a_reachable_listener() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("pw"), PASSWORD).unwrap();
    let check = |toml: &str| {
        std::fs::write(dir.path().join("routes.toml"), toml).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_oauth-egress"))
            .args(["check", "-c", "routes.toml"])
            .current_dir(dir.path())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    };
    let known = check(
        "[proxy]\nlisten = \"0.0.0.0:0\"\ncallers = \"known\"\n\
         [[caller]]\nname = \"billing\"\nsources = [\"10.1.2.0/24\"]\n\
         proxy_auth = { basic = { user = \"billing\", password = { file = \"pw\" } } }\n",
    );
    let line = known
        .lines()
        .find(|l| l.starts_with("callers "))
        .unwrap_or_default();
    for part in [
        "known",
        "billing",
        "sources [10.1.2.0/24]",
        "basic user billing",
        "pw",
    ] {
        assert!(line.contains(part), "{part} in {known}");
    }
    assert!(!known.contains(PASSWORD), "{known}");
    assert!(!known.contains("proxy.callers = \"any\""), "{known}");
    let any = check("[proxy]\nlisten = \"0.0.0.0:0\"\n");
    assert!(any.lines().any(|l| l.starts_with("callers any")), "{any}");
    assert!(
        any.contains("warning: proxy.callers = \"any\" with proxy.listen = 0.0.0.0:0"),
        "{any}"
    );
}
