//! The status page (`/`), its JSON (`/status`), `admin.token`, and the `status` and
//! `healthcheck` commands, against a running proxy with a good and a failing route; the page
//! is also loaded in headless Chromium (Debian's `chromium`, installed by `.ci/run`).

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use oauth_egress::intercept::ca::CertificateAuthority;
use oauth_egress::server::Running;
use sha2::Digest;

mod ops_support;
use ops_support::{client, Env};

const BIN: &str = env!("CARGO_BIN_EXE_oauth-egress");
const BAD_SECRET: &str = "wrong-secret-do-not-show";
const ADMIN_TOKEN: &str = "admin-token-do-not-show";

/// Routes `good` (client `ops`) and `broken` (client `bad`, a wrong secret: `invalid_client`),
/// with `admin_extra` appended to `[admin]`.
fn config_text(env: &Env, admin_extra: &str) -> String {
    std::fs::write(env.dir.path().join("bad-secret"), BAD_SECRET).unwrap();
    std::fs::write(env.dir.path().join("admin-token"), ADMIN_TOKEN).unwrap();
    let client = |name: &str, file: &str| {
        format!(
            "[clients.{name}]\ntoken_endpoint = \"{}\"\nclient_id = \"ops-client\"\n\
             auth = \"client_secret_basic\"\nclient_secret = {{ file = \"{}\" }}\n",
            env.auth.token_endpoint(),
            env.dir.path().join(file).display()
        )
    };
    let route = |name: &str, prefix: &str, client: &str| {
        format!(
            "[[route]]\nname = \"{name}\"\nhost = \"localhost\"\nport = {}\npath_prefix = \"{prefix}\"\n\
             client = \"{client}\"\nscopes = [\"echo:read\"]\n",
            env.api.addr.port()
        )
    };
    format!(
        "[proxy]\nlisten = \"127.0.0.1:0\"\nshutdown_grace_secs = 1\n[admin]\nlisten = \"127.0.0.1:0\"\n{admin_extra}\n{}{}{}{}",
        client("ops", "secret"),
        client("bad", "bad-secret"),
        route("good", "/good", "ops"),
        route("broken", "/broken", "bad"),
    )
}

async fn start(env: &Env, admin_extra: &str) -> (Running, Arc<CertificateAuthority>) {
    let text = config_text(env, admin_extra);
    let config = oauth_egress::config::from_toml(&text, env.dir.path(), "status.toml").unwrap();
    ops_support::start(env, config).await
}

async fn admin(running: &Running, path: &str, token: Option<&str>) -> (u16, String) {
    let url = format!("http://{}{path}", running.admin_addr.unwrap());
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let mut req = client.get(url);
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    let res = req.send().await.unwrap();
    (res.status().as_u16(), res.text().await.unwrap())
}

/// Three requests on `good`, one on `broken`; returns the token the API saw.
async fn traffic(env: &Env, running: &Running, ca: &CertificateAuthority) -> String {
    let client = client(running, ca);
    let port = env.api.addr.port();
    for _ in 0..3 {
        let res = client
            .get(format!("https://localhost:{port}/good/x"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
    }
    let res = client
        .get(format!("https://localhost:{port}/broken/x"))
        .send()
        .await
        .unwrap();
    assert!(res.status().is_server_error(), "{}", res.status());
    let seen = env.api.seen();
    let auth = seen.last().unwrap().authorization.clone().unwrap();
    auth.trim_start_matches("Bearer ").to_string()
}

fn assert_no_secrets(text: &str, token: &str, what: &str) {
    for secret in [token, "ops-secret", BAD_SECRET, ADMIN_TOKEN] {
        assert!(
            !text.contains(secret),
            "{what} shows a secret ({secret}):\n{text}"
        );
    }
}

#[tokio::test]
async fn status_json_and_page_show_each_route_the_ca_and_no_secret() {
    let env = ops_support::servers("status upstream CA").await;
    let (running, ca) = start(&env, "").await;
    let token = traffic(&env, &running, &ca).await;

    let (code, body) = admin(&running, "/status", None).await;
    assert_eq!(code, 200, "{body}");
    assert_no_secrets(&body, &token, "/status");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["schema"], 1);
    assert_eq!(json["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(json["config"]["file"], "status.toml");
    let route = |name: &str| {
        json["routes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name)
            .unwrap()
            .clone()
    };
    let good = route("good");
    assert_eq!(good["token"]["state"], "valid", "{good}");
    assert!(good["token"]["expires_in_seconds"].as_u64().unwrap() > 0);
    assert_eq!(good["token"]["last_fetch"]["ok"], true);
    assert_eq!(good["last_5m"]["requests"], 3);
    assert_eq!(good["last_5m"]["retries_401"], 0);
    assert_eq!(good["sender"], "bearer");
    assert_eq!(good["grant"], "client_credentials");
    let broken = route("broken");
    assert_eq!(broken["token"]["state"], "failing", "{broken}");
    assert_eq!(
        broken["token"]["last_error"]["oauth_error"],
        "invalid_client"
    );
    assert_eq!(broken["token"]["last_fetch"]["ok"], false);
    assert_eq!(broken["last_5m"]["requests"], 1);
    // The CA: what `openssl x509 -fingerprint -sha256` prints.
    let der = ca.cert_der().unwrap();
    let fingerprint: Vec<String> = sha2::Sha256::digest(&der)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect();
    assert_eq!(json["ca"]["sha256_fingerprint"], fingerprint.join(":"));
    assert!(json["ca"]["subject"]
        .as_str()
        .unwrap()
        .contains("oauth-egress"));
    assert!(json["ca"]["leaves_cached"].as_u64().unwrap() >= 1);

    let (code, page) = admin(&running, "/", None).await;
    assert_eq!(code, 200);
    assert_no_secrets(&page, &token, "the status page");
    assert!(
        page.contains("<td>good</td>") && page.contains("<td>broken</td>"),
        "{page}"
    );
    assert!(page.contains("invalid_client"), "{page}");
    assert!(!page.contains("<script"), "{page}");
    running.stop().await;
}

#[tokio::test]
async fn admin_token_protects_the_page_and_status_but_not_health() {
    let env = ops_support::servers("status upstream CA").await;
    let (running, _ca) = start(&env, "token = { file = \"admin-token\" }\n").await;
    // (path, token sent, status)
    let cases = [
        ("/status", None, 401),
        ("/status", Some("wrong"), 401),
        ("/status", Some(ADMIN_TOKEN), 200),
        ("/", None, 401),
        ("/", Some(ADMIN_TOKEN), 200),
        ("/healthz", None, 200),
        ("/readyz", None, 200),
        ("/metrics", None, 200),
    ];
    for (path, token, want) in cases {
        let (code, body) = admin(&running, path, token).await;
        assert_eq!(code, want, "{path} with {token:?}: {body}");
        assert!(!body.contains(ADMIN_TOKEN), "{path} echoes the token");
    }
    running.stop().await;

    let (running, _ca) = start(
        &env,
        "token = { file = \"admin-token\" }\nprotect_metrics = true\n",
    )
    .await;
    assert_eq!(admin(&running, "/metrics", None).await.0, 401);
    assert_eq!(admin(&running, "/metrics", Some(ADMIN_TOKEN)).await.0, 200);
    assert_eq!(admin(&running, "/healthz", None).await.0, 200);
    running.stop().await;
}

/// Runs `cmd` to its end, killing it (by PID, through `kill_on_drop`) after `limit`.
async fn run_bounded(cmd: &mut tokio::process::Command, limit: Duration) -> std::process::Output {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e} (install Debian's chromium)"));
    tokio::time::timeout(limit, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{cmd:?} did not finish within {limit:?}"))
        .unwrap()
}

#[tokio::test]
async fn status_and_healthcheck_commands_ask_the_admin_listener() {
    let env = ops_support::servers("status upstream CA").await;
    let (running, ca) = start(&env, "token = { file = \"admin-token\" }\n").await;
    let token = traffic(&env, &running, &ca).await;
    let addr = running.admin_addr.unwrap().to_string();
    let limit = Duration::from_secs(30);

    let out = run_bounded(
        tokio::process::Command::new(BIN)
            .args(["status", "--admin", &addr])
            .env("OAUTH_EGRESS_ADMIN_TOKEN", ADMIN_TOKEN),
        limit,
    )
    .await;
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{table}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_no_secrets(&table, &token, "oauth-egress status");
    let line = |name: &str| {
        table
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no {name} line:\n{table}"))
            .to_string()
    };
    assert!(line("good ").contains("valid"), "{table}");
    assert!(
        line("broken ").contains("failing") && line("broken ").contains("invalid_client"),
        "{table}"
    );

    // Without the token: refused, and it says how to send one.
    let out = run_bounded(
        tokio::process::Command::new(BIN)
            .args(["status", "--admin", &addr])
            .env_remove("OAUTH_EGRESS_ADMIN_TOKEN"),
        limit,
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("OAUTH_EGRESS_ADMIN_TOKEN"));

    // healthcheck: 0 when ready (open: no token needed), else 1 and one line naming why.
    let out = run_bounded(
        tokio::process::Command::new(BIN).args(["healthcheck", "--admin", &addr]),
        limit,
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    running.stop().await;
    let out = run_bounded(
        tokio::process::Command::new(BIN).args(["healthcheck", "--admin", &addr]),
        limit,
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains(&addr), "{stderr}");
}

fn chromium() -> &'static str {
    ["chromium", "chromium-browser"]
        .into_iter()
        .find(|b| Command::new(b).arg("--version").output().is_ok())
        .unwrap_or("chromium")
}

#[tokio::test]
async fn headless_chromium_renders_the_status_page() {
    let env = ops_support::servers("status upstream CA").await;
    let (running, ca) = start(&env, "").await;
    let token = traffic(&env, &running, &ca).await;
    let url = format!("http://{}/", running.admin_addr.unwrap());
    let profile = tempfile::tempdir().unwrap();
    let shot = env.dir.path().join("status.png");
    let browser = |extra: &[String]| {
        let mut cmd = tokio::process::Command::new(chromium());
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-proxy-server",
            "--window-size=1500,640",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(extra)
        .arg(&url);
        cmd
    };
    let started = Instant::now();
    let out = run_bounded(
        &mut browser(&["--dump-dom".into()]),
        Duration::from_secs(90),
    )
    .await;
    let dom = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        dom.contains("<td>good</td>"),
        "chromium rendered no route table ({:?}):\n{dom}\n{}",
        started.elapsed(),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(dom.contains("invalid_client") && dom.contains("failing") && dom.contains("valid"));
    assert!(dom.contains("Interception CA"));
    assert_no_secrets(&dom, &token, "the rendered page");

    let out = run_bounded(
        &mut browser(&[format!("--screenshot={}", shot.display())]),
        Duration::from_secs(90),
    )
    .await;
    let png = std::fs::read(&shot).unwrap_or_else(|e| {
        panic!(
            "no screenshot at {}: {e}\n{}",
            shot.display(),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    // Kept for the README when asked (`STATUS_SCREENSHOT=docs/status.png`).
    if let Ok(keep) = std::env::var("STATUS_SCREENSHOT") {
        std::fs::copy(&shot, keep).unwrap();
    }
    running.stop().await;
}

#[tokio::test]
async fn error_bodies_name_the_request_id_the_caller_sent_or_a_new_one() {
    let env = ops_support::servers("status upstream CA").await;
    let (running, ca) = start(&env, "").await;
    let client = client(&running, &ca);
    let url = format!("https://localhost:{}/broken/x", env.api.addr.port());
    let res = client
        .get(&url)
        .header("x-request-id", "caller-id-42")
        .header(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["x-request-id"], "caller-id-42");
    let body = res.text().await.unwrap();
    assert!(body.contains("request id: caller-id-42"), "{body}");
    // An unusable id (a space) is replaced, and the new one is in header and body alike.
    let res = client
        .get(&url)
        .header("x-request-id", "not usable")
        .send()
        .await
        .unwrap();
    let id = res.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(id.len(), 32, "{id}");
    let body = res.text().await.unwrap();
    assert!(body.contains(&format!("request id: {id}")), "{body}");
    running.stop().await;
}

#[tokio::test]
async fn metrics_follow_prometheus_conventions() {
    let env = ops_support::servers("status upstream CA").await;
    let (running, ca) = start(&env, "").await;
    let token = traffic(&env, &running, &ca).await;
    let (code, metrics) = admin(&running, "/metrics", None).await;
    assert_eq!(code, 200);
    assert_no_secrets(&metrics, &token, "/metrics");
    for needle in [
        &format!(
            "oauth_egress_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        )[..],
        "oauth_egress_config_last_reload_successful 1",
        "oauth_egress_config_last_reload_success_timestamp_seconds ",
        "oauth_egress_token_cache_lookups_total{",
        "oauth_egress_token_dpop_nonce_retries_total{client=\"ops\"}",
        "process_resident_memory_bytes ",
        "process_start_time_seconds ",
    ] {
        assert!(metrics.contains(needle), "{needle} missing:\n{metrics}");
    }
    // The good route's token expires in the future (unix seconds), named by route and client.
    let expiry = metrics
        .lines()
        .find(|l| {
            l.starts_with("oauth_egress_token_expiry_timestamp_seconds{")
                && l.contains("route=\"good\"")
                && l.contains("client=\"ops\"")
        })
        .unwrap_or_else(|| panic!("no expiry for good:\n{metrics}"));
    let at: f64 = expiry.rsplit(' ').next().unwrap().parse().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(at > now, "{expiry}");
    assert!(
        !metrics.contains("=\"\""),
        "an empty label value:\n{metrics}"
    );
    running.stop().await;
}

#[tokio::test]
async fn a_401_after_the_retry_is_counted_on_the_page_and_in_metrics() {
    let env = ops_support::servers("status upstream CA").await;
    let (running, ca) = start(&env, "").await;
    env.api.refuse_path("/good/always-401", "invalid_token");
    let client = client(&running, &ca);
    let url = format!("https://localhost:{}/good/always-401", env.api.addr.port());
    let res = client.get(&url).send().await.unwrap();
    assert_eq!(res.status(), 401);
    let (_, body) = admin(&running, "/status", None).await;
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    let good = json["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "good")
        .unwrap();
    assert_eq!(good["last_5m"]["requests"], 1, "{good}");
    assert_eq!(good["last_5m"]["retries_401"], 1, "{good}");
    let (_, metrics) = admin(&running, "/metrics", None).await;
    let line = metrics
        .lines()
        .find(|l| l.starts_with("oauth_egress_unauthorized_after_retry_total{route=\"good\"}"))
        .unwrap_or_else(|| panic!("no 401-after-retry series:\n{metrics}"));
    let count: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(count >= 1.0, "{line}");
    running.stop().await;
}

#[test]
fn admin_settings_are_checked_and_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let load = |admin: &str| {
        oauth_egress::config::from_toml(&format!("[admin]\n{admin}\n"), dir.path(), "a.toml")
    };
    let err = load("listen = \"127.0.0.1:9901\"\nprotect_metrics = true")
        .expect_err("protect_metrics without a token is refused")
        .to_string();
    assert!(
        err.contains("admin.protect_metrics") && err.contains("admin.token"),
        "{err}"
    );
    let open = load("listen = \"0.0.0.0:9901\"").unwrap();
    assert!(
        open.warnings.iter().any(|w| w.contains("admin.token")),
        "{:?}",
        open.warnings
    );
    let loopback = load("listen = \"127.0.0.1:9901\"").unwrap();
    assert!(loopback.warnings.is_empty(), "{:?}", loopback.warnings);
    let err = load("listen = \"127.0.0.1:9901\"\ntoken = \"literal-admin-token\"")
        .expect_err("a literal token is refused")
        .to_string();
    assert!(!err.contains("literal-admin-token"), "{err}");
}

#[tokio::test]
async fn healthcheck_fails_naming_the_503_while_a_prefetch_route_has_no_token() {
    let env = ops_support::servers("status upstream CA").await;
    let text =
        config_text(&env, "").replace("client = \"bad\"\n", "client = \"bad\"\nprefetch = true\n");
    let config = oauth_egress::config::from_toml(&text, env.dir.path(), "status.toml").unwrap();
    let (running, _ca) = ops_support::start(&env, config).await;
    let addr = running.admin_addr.unwrap().to_string();
    let out = run_bounded(
        tokio::process::Command::new(BIN).args(["healthcheck", "--admin", &addr]),
        Duration::from_secs(30),
    )
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("503") && stderr.contains("not ready"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    running.stop().await;
}
