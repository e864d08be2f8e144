//! The one retry on 401, end to end over real sockets: uploads announced with
//! `Expect: 100-continue` (driven by the real curl binary), bodies the upstream refused before
//! reading them, and the bound on what 401s may cost at the authorization server.

mod support;

use std::time::{Duration, Instant};

use support::{ApiTls, Harness, Setup};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What curl reported for one call.
struct CurlRun {
    stdout: String,
    stderr: String,
    /// curl's own `time_total`, seconds.
    total: f64,
}

/// Runs curl through the proxy (verbose, so its `100 Continue` handling shows).
async fn curl(h: &Harness, args: &[&str]) -> CurlRun {
    let ca = h.ca_file();
    let proxy = format!("http://{}", h.proxy_addr);
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "-v", "--max-time", "20", "-x", &proxy, "--cacert"])
        .arg(&ca)
        .args(args)
        .args(["-w", "\n%{time_total}"])
        .env_remove("HTTPS_PROXY")
        .env_remove("https_proxy")
        .output()
        .await
        .expect("curl must be installed (.ci/run installs it)");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    let (body, total) = stdout.rsplit_once('\n').unwrap();
    CurlRun {
        stdout: body.to_string(),
        stderr,
        total: total.trim().parse().unwrap(),
    }
}

/// Revokes the token the proxy currently injects, so that the next call gets a 401.
async fn revoke_current(h: &Harness) -> String {
    let jti = support::jti_of(&h.client(), h.api_url()).await;
    h.api.revoke(&jti);
    jti
}

/// Statuses and bodies of the upstream requests with this method.
fn attempts(h: &Harness, method: &str) -> Vec<(u16, Vec<u8>)> {
    h.api
        .seen()
        .into_iter()
        .filter(|s| s.method == method)
        .map(|s| (s.status, s.body.to_vec()))
        .collect()
}

#[tokio::test]
async fn curl_uploads_with_expect_100_continue_get_it_at_once_and_one_retry() {
    // Two revocations in a row: no cooldown between their fresh-token retries.
    let h = Harness::start(Setup {
        tokens: "invalidate_cooldown_secs = 0".into(),
        ..Setup::default()
    })
    .await;
    let url = format!("{}/upload", h.api_url());
    // The upstream refuses from the headers, before reading any of the body.
    h.api.set_refuse_before_body(true);
    let cases: [(&str, &[&str]); 2] = [
        ("chunked", &["-H", "Transfer-Encoding: chunked"]),
        ("content-length", &[]),
    ];
    for (i, (name, extra)) in cases.iter().enumerate() {
        revoke_current(&h).await;
        // Large enough that the 401 comes while it is still on its way (within the limit).
        let body = format!("{name} upload body {}", "x".repeat(600 * 1024));
        let file = h.ca_dir.path().join(format!("{name}.body"));
        std::fs::write(&file, &body).unwrap();
        let data = format!("@{}", file.display());
        let mut args = vec!["--http1.1", "-H", "Expect: 100-continue"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--data-binary", &data, &url]);
        let run = curl(&h, &args).await;
        assert!(
            run.stdout.contains("\"method\":\"POST\""),
            "{name}: {}",
            run.stdout
        );
        assert!(
            run.stderr.contains("< HTTP/1.1 100 Continue"),
            "{name}: curl got its 100 Continue\n{}",
            run.stderr
        );
        assert!(
            !run.stderr.contains("Done waiting for 100-continue"),
            "{name}: curl did not wait out its expect timeout\n{}",
            run.stderr
        );
        eprintln!("{name}: curl time_total {:.3} s", run.total);
        assert!(run.total < 0.9, "{name}: curl took {} s", run.total);
        let posts = attempts(&h, "POST");
        let posts = &posts[2 * i..];
        let statuses: Vec<u16> = posts.iter().map(|p| p.0).collect();
        assert_eq!(statuses, [401, 200], "{name}");
        assert!(
            posts[1].1 == body.as_bytes(),
            "{name}: the same body, whole"
        );
    }
    h.stop().await;
}

#[tokio::test]
async fn curl_http2_chunked_upload_with_expect_is_replayed_after_a_401() {
    // HTTP/2 (what curl negotiates by default): the body's last DATA frame ends the stream.
    let h = Harness::start(Setup::default()).await;
    revoke_current(&h).await;
    let url = format!("{}/upload", h.api_url());
    let body = "an HTTP/2 upload of unknown length";
    let run = curl(
        &h,
        &[
            "-H",
            "Transfer-Encoding: chunked",
            "-H",
            "Expect: 100-continue",
            "--data-binary",
            body,
            &url,
        ],
    )
    .await;
    assert!(run.stderr.contains("using HTTP/2"), "{}", run.stderr);
    // No 100 Continue over HTTP/2 (hyper#2743): curl waits out its expect timeout.
    eprintln!("HTTP/2: curl time_total {:.3} s", run.total);
    assert!(run.stdout.contains("\"method\":\"POST\""), "{}", run.stdout);
    let posts = attempts(&h, "POST");
    let statuses: Vec<u16> = posts.iter().map(|p| p.0).collect();
    assert_eq!(statuses, [401, 200]);
    assert_eq!(posts[0].1, posts[1].1, "identical bodies");
    assert_eq!(posts[1].1, body.as_bytes());
    h.stop().await;
}

#[tokio::test]
async fn a_401_that_comes_before_the_callers_body_is_sent_still_replays_it() {
    let h = Harness::start(Setup {
        api_tls: ApiTls::Plain,
        route_extra: format!("scopes = [\"{}\"]\nallow_plaintext = true", support::SCOPE),
        ..Setup::default()
    })
    .await;
    let port = h.api.addr.port();
    let jti = support::jti_of(&h.client(), format!("http://localhost:{port}/")).await;
    h.api.revoke(&jti);
    h.api.set_refuse_before_body(true);

    let mut caller = tokio::net::TcpStream::connect(h.proxy_addr).await.unwrap();
    let head = format!(
        "POST http://localhost:{port}/slow HTTP/1.1\r\nHost: localhost:{port}\r\n\
         Transfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n"
    );
    caller.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    let interim = tokio::time::timeout(Duration::from_secs(2), support::read_head(&mut caller))
        .await
        .expect("a 100 Continue within 2 s");
    assert!(interim.starts_with("HTTP/1.1 100"), "{interim}");
    assert!(started.elapsed() < Duration::from_millis(900));
    // The upstream has answered 401 by now; the caller sends its body late, in two chunks.
    tokio::time::sleep(Duration::from_millis(300)).await;
    caller.write_all(b"6\r\nslow, \r\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    caller.write_all(b"4\r\nbody\r\n0\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(5);
    while !String::from_utf8_lossy(&answer).contains("\"method\"") && Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(5), caller.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => answer.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let posts = attempts(&h, "POST");
    let statuses: Vec<u16> = posts.iter().map(|p| p.0).collect();
    assert_eq!(statuses, [401, 200]);
    assert_eq!(posts[1].1, b"slow, body");
    h.stop().await;
}

#[tokio::test]
async fn a_path_that_refuses_every_token_costs_one_token_request_per_cooldown() {
    let h = Harness::start(Setup::default()).await;
    h.api.refuse_path("/always-401", "invalid_token");
    let client = h.client();
    let started = Instant::now();
    for i in 0..100 {
        let res = client
            .get(format!("{}/always-401/{i}", h.api_url()))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 401, "call {i}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the 100 calls fit one default cooldown"
    );
    assert_eq!(
        h.auth.token_requests(),
        2,
        "the first token, and one fetched after the first 401 only"
    );
    assert_eq!(h.api.requests(), 101, "one resend, for the first 401");
    // Other paths keep working with the token in hand.
    assert_eq!(client.get(h.api_url()).send().await.unwrap().status(), 200);
    assert_eq!(h.auth.token_requests(), 2);
    h.stop().await;
}

#[tokio::test]
async fn a_token_refused_inside_the_cooldown_is_returned_as_is_and_after_it_retried() {
    let h = Harness::start(Setup {
        tokens: "invalidate_cooldown_secs = 1".into(),
        ..Setup::default()
    })
    .await;
    let client = h.client();
    h.api.refuse_path("/always-401", "invalid_token");
    let res = client
        .get(format!("{}/always-401", h.api_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    assert_eq!(h.auth.token_requests(), 2, "the 401 fetched a new token");

    // Inside the window: a refused token gets no new one.
    let second = revoke_current(&h).await;
    let res = client.get(h.api_url()).send().await.unwrap();
    assert_eq!(res.status(), 401, "returned as is inside the cooldown");
    assert_eq!(h.auth.token_requests(), 2);

    // After the window: the one fresh-token retry, with the same body.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let res = client
        .post(format!("{}/orders", h.api_url()))
        .body(r#"{"amount":42}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let echo: serde_json::Value = serde_json::from_str(&res.text().await.unwrap()).unwrap();
    assert_ne!(echo["jti"], second.as_str());
    assert_eq!(h.auth.token_requests(), 3);
    let posts = attempts(&h, "POST");
    let statuses: Vec<u16> = posts.iter().map(|p| p.0).collect();
    assert_eq!(statuses, [401, 200]);
    assert_eq!(posts[0].1, posts[1].1);
    h.stop().await;
}

#[tokio::test]
async fn a_401_naming_another_error_than_invalid_token_fetches_no_token() {
    let h = Harness::start(Setup::default()).await;
    h.api.refuse_path("/scoped", "insufficient_scope");
    h.api.refuse_path("/malformed", "invalid_request");
    let client = h.client();
    for path in ["scoped", "malformed", "scoped", "malformed"] {
        let res = client
            .get(format!("{}/{path}", h.api_url()))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 401, "{path}");
        assert!(res.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("error="));
    }
    assert_eq!(h.auth.token_requests(), 1, "only the first token");
    assert_eq!(h.api.requests(), 4, "no resends");
    h.stop().await;
}

#[tokio::test]
async fn on_a_refresh_token_route_a_path_refusing_every_token_rotates_the_token_once() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, support::CLIENT_SECRET).unwrap();
    let refresh_file = dir.path().join("refresh");
    let h = Harness::start(Setup {
        client_toml: Some(format!(
            "client_id = \"{}\"\ntoken_endpoint = \"{{token_endpoint}}\"\n\
             auth = \"client_secret_basic\"\nclient_secret = {{ file = \"{}\" }}",
            support::CLIENT_ID,
            secret.display()
        )),
        route_extra: format!(
            "scopes = [\"{}\"]\ngrant = \"refresh_token\"\nrefresh_token = {{ file = \"{}\" }}",
            support::SCOPE,
            refresh_file.display()
        ),
        ..Setup::default()
    })
    .await;
    let original = h
        .auth
        .issue_refresh_token(support::CLIENT_ID, Some(support::SCOPE));
    std::fs::write(&refresh_file, &original).unwrap();
    h.api.refuse_path("/always-401", "invalid_token");
    let client = h.client();
    for i in 0..20 {
        let res = client
            .get(format!("{}/always-401/{i}", h.api_url()))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 401, "call {i}");
    }
    assert_eq!(
        h.auth.refresh_grants(),
        2,
        "the first token and one rotation, not one per call"
    );
    h.stop().await;
}
