//! Running it in production: metrics, readiness, hot reload, graceful shutdown, signals and
//! JSON logs, through `server::start` (what `run` uses) and the binary itself.

use std::sync::Arc;
use std::time::Duration;

use oauth_egress::intercept::ca::CertificateAuthority;
use oauth_egress::server::Running;

const SCOPE: &str = "echo:read";

mod ops_support;
use ops_support::{client, Env};

async fn servers() -> Env {
    ops_support::servers("ops upstream CA").await
}

/// A config with the routes given (each `(name, path_prefix, scope, prefetch)`).
fn config_text(env: &Env, routes: &[(&str, &str, &str, bool)]) -> String {
    let mut text = format!(
        "[proxy]\nlisten = \"127.0.0.1:0\"\nshutdown_grace_secs = 5\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [clients.ops]\ntoken_endpoint = \"{}\"\nclient_id = \"ops-client\"\nauth = \"client_secret_basic\"\n\
         client_secret = {{ file = \"{}\" }}\n",
        env.auth.token_endpoint(),
        env.dir.path().join("secret").display()
    );
    for (name, prefix, scope, prefetch) in routes {
        text.push_str(&format!(
            "[[route]]\nname = \"{name}\"\nhost = \"localhost\"\nport = {}\npath_prefix = \"{prefix}\"\nclient = \"ops\"\nscopes = [\"{scope}\"]\nprefetch = {prefetch}\n",
            env.api.addr.port()
        ));
    }
    text
}

fn config(env: &Env, text: &str) -> oauth_egress::config::Config {
    oauth_egress::config::from_toml(text, env.dir.path(), "ops test").unwrap()
}

async fn start(env: &Env, text: &str) -> (Running, Arc<CertificateAuthority>) {
    ops_support::start(env, config(env, text)).await
}

async fn admin(running: &Running, path: &str) -> (u16, String) {
    let url = format!("http://{}{path}", running.admin_addr.unwrap());
    let res = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(url)
        .send()
        .await
        .unwrap();
    (res.status().as_u16(), res.text().await.unwrap())
}

fn api_url(env: &Env, path: &str) -> String {
    format!("https://localhost:{}{path}", env.api.addr.port())
}

/// The value of the first sample of `name` whose labels include all of `labels`.
fn sample(metrics: &str, name: &str, labels: &[&str]) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?;
        if !(rest.starts_with('{') || rest.starts_with(' '))
            || !labels.iter().all(|l| rest.contains(l))
        {
            return None;
        }
        line.rsplit(' ').next()?.parse().ok()
    })
}

#[tokio::test]
async fn metrics_count_requests_tokens_and_cache_without_secrets() {
    let env = servers().await;
    let (running, ca) = start(&env, &config_text(&env, &[("metered", "/", SCOPE, false)])).await;
    let client = client(&running, &ca);
    let mut last_auth = String::new();
    for _ in 0..3 {
        let res = client
            .get(api_url(&env, "/m?secret-query=1"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        last_auth = env
            .api
            .seen()
            .last()
            .unwrap()
            .authorization
            .clone()
            .unwrap();
    }
    let (status, metrics) = admin(&running, "/metrics").await;
    assert_eq!(status, 200);
    let route = "route=\"metered\"";
    assert_eq!(
        sample(
            &metrics,
            "oauth_egress_requests_total",
            &[route, "status=\"2xx\""]
        ),
        Some(3.0),
        "{metrics}"
    );
    assert_eq!(
        sample(
            &metrics,
            "oauth_egress_token_cache_lookups_total",
            &[route, "result=\"hit\""]
        ),
        Some(2.0)
    );
    assert_eq!(
        sample(
            &metrics,
            "oauth_egress_token_cache_lookups_total",
            &[route, "result=\"miss\""]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &metrics,
            "oauth_egress_token_requests_total",
            &["client=\"ops\"", "outcome=\"ok\""]
        ),
        Some(1.0)
    );
    assert!(
        sample(
            &metrics,
            "oauth_egress_connects_total",
            &["action=\"intercept\""]
        )
        .unwrap()
            >= 1.0
    );
    assert!(metrics.contains("oauth_egress_request_duration_seconds_bucket"));
    let token = last_auth.trim_start_matches("Bearer ");
    assert!(
        !metrics.contains(token)
            && !metrics.contains("ops-secret")
            && !metrics.contains("secret-query")
    );
    running.stop().await;
}

#[tokio::test]
async fn readyz_waits_for_prefetched_tokens() {
    let env = servers().await;
    env.auth.set_delay(Duration::from_millis(700));
    let (running, _ca) = start(&env, &config_text(&env, &[("warm", "/", SCOPE, true)])).await;
    assert_eq!(admin(&running, "/healthz").await.0, 200);
    assert_eq!(
        admin(&running, "/readyz").await.0,
        503,
        "token not fetched yet"
    );
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(admin(&running, "/readyz").await, (200, "ready\n".into()));
    assert_eq!(
        env.auth.token_requests(),
        1,
        "fetched at start, before any request"
    );
    running.stop().await;
}

#[tokio::test]
async fn reload_swaps_routes_keeps_tokens_finishes_in_flight_and_refuses_bad_files() {
    let env = servers().await;
    let first = config_text(
        &env,
        &[("a", "/a", SCOPE, false), ("b", "/b", "echo:write", false)],
    );
    let (running, ca) = start(&env, &first).await;
    let client = client(&running, &ca);
    assert_eq!(
        client
            .get(api_url(&env, "/a/1"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(env.auth.token_requests(), 1);

    // A request on route b is in flight (waiting for its token) when b is removed.
    env.auth.set_delay(Duration::from_millis(800));
    let in_flight = {
        let (client, url) = (client.clone(), api_url(&env, "/b/1"));
        tokio::spawn(async move { client.get(url).send().await.unwrap().status().as_u16() })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let second = config_text(
        &env,
        &[("a", "/a", SCOPE, false), ("c", "/c", SCOPE, false)],
    );
    running.reload(config(&env, &second)).await.unwrap();
    env.auth.set_delay(Duration::ZERO);

    assert_eq!(
        in_flight.await.unwrap(),
        200,
        "finished on the old configuration"
    );
    // The new table is in force: /b has no route any more, so no token (the API refuses).
    assert_eq!(
        client
            .get(api_url(&env, "/b/2"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    assert!(env.api.seen().last().unwrap().authorization.is_none());
    // Route a's key did not change: its cached token is kept.
    let before = env.auth.token_requests();
    assert_eq!(
        client
            .get(api_url(&env, "/a/2"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        env.auth.token_requests(),
        before,
        "no new token for an unchanged key"
    );
    // Route c shares a's key (same client, scope): also no new token.
    assert_eq!(
        client
            .get(api_url(&env, "/c/1"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(env.auth.token_requests(), before);

    // A bad configuration is refused and the current one keeps serving.
    let bad = second.replace("client = \"ops\"", "client = \"nobody\"");
    assert!(oauth_egress::config::from_toml(&bad, env.dir.path(), "bad").is_err());
    let unreadable = second.replace("secret\" }", "missing-secret\" }");
    let err = running.reload(config(&env, &unreadable)).await.unwrap_err();
    assert!(err.contains("missing-secret"), "{err}");
    assert_eq!(
        client
            .get(api_url(&env, "/a/3"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    running.stop().await;
}

#[tokio::test]
async fn shutdown_lets_in_flight_requests_finish_then_stops_accepting() {
    let env = servers().await;
    let (running, ca) = start(&env, &config_text(&env, &[("s", "/", SCOPE, false)])).await;
    let client = client(&running, &ca);
    env.auth.set_delay(Duration::from_millis(700));
    let addr = running.proxy_addr;
    let in_flight = {
        let (client, url) = (client.clone(), api_url(&env, "/slow"));
        tokio::spawn(async move { client.get(url).send().await.map(|r| r.status().as_u16()) })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    running.stop().await;
    assert_eq!(
        in_flight.await.unwrap().unwrap(),
        200,
        "the in-flight request finished"
    );
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no longer accepting"
    );
}

mod binary {
    use std::io::{BufRead, BufReader};
    use std::process::{Child, Command, Stdio};
    use std::sync::mpsc;
    use std::time::Duration;

    const BIN: &str = env!("CARGO_BIN_EXE_oauth-egress");

    fn config(ok: bool) -> String {
        format!(
            "[proxy]\nlisten = \"127.0.0.1:0\"\n[clients.c]\ntoken_endpoint = \"https://idp.example/token\"\n\
             client_id = \"c\"\nauth = \"client_secret_basic\"\nclient_secret = {{ env = \"OPS_TEST_SECRET\" }}\n\
             [[route]]\nhost = \"api.example\"\nclient = \"{}\"\n",
            if ok { "c" } else { "missing" }
        )
    }

    /// Kills the child if the test fails before it exits.
    struct Proc(Child);

    impl Drop for Proc {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn spawn(dir: &std::path::Path, json: bool) -> (Proc, mpsc::Receiver<String>) {
        let mut cmd = Command::new(BIN);
        if json {
            cmd.args(["--log-format", "json"]);
        }
        let mut child = cmd
            .args(["run", "-c", "routes.toml"])
            .current_dir(dir)
            .env("OPS_TEST_SECRET", "x")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        (Proc(child), rx)
    }

    fn wait_for(rx: &mpsc::Receiver<String>, needle: &str) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            match rx.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(_) => break,
            }
        }
        panic!("no log line containing {needle:?}");
    }

    fn signal(child: &Proc, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &child.0.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    #[test]
    fn sighup_reloads_or_refuses_and_sigterm_exits_cleanly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("routes.toml");
        std::fs::write(&path, config(true)).unwrap();
        let (mut child, logs) = spawn(dir.path(), false);
        wait_for(&logs, "oauth-egress listening");

        std::fs::write(&path, config(false)).unwrap();
        signal(&child, "HUP");
        let line = wait_for(&logs, "configuration rejected");
        assert!(line.contains("missing"), "{line}");
        assert!(child.0.try_wait().unwrap().is_none(), "still serving");

        std::fs::write(&path, config(true)).unwrap();
        signal(&child, "HUP");
        wait_for(&logs, "configuration reloaded");

        signal(&child, "TERM");
        let status = child.0.wait().unwrap();
        assert!(status.success(), "{status:?}");
    }

    #[test]
    fn a_changed_file_is_reloaded_without_a_signal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("routes.toml");
        std::fs::write(&path, config(true)).unwrap();
        let (mut child, logs) = spawn(dir.path(), false);
        wait_for(&logs, "oauth-egress listening");
        std::thread::sleep(Duration::from_millis(1100));
        std::fs::write(&path, config(true).replace("api.example", "api2.example")).unwrap();
        wait_for(&logs, "configuration reloaded");
        signal(&child, "INT");
        assert!(child.0.wait().unwrap().success());
    }

    #[test]
    fn json_logs_are_one_object_per_line() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("routes.toml"), config(true)).unwrap();
        let (mut child, logs) = spawn(dir.path(), true);
        let line = wait_for(&logs, "oauth-egress listening");
        let parsed: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert_eq!(parsed["level"], "INFO");
        assert!(parsed["listen"].as_str().unwrap().starts_with("127.0.0.1:"));
        signal(&child, "TERM");
        assert!(child.0.wait().unwrap().success());
    }
}
