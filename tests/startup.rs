//! Start-up and reload: the one preflight every entry point runs, metrics present from the
//! start, what discovery accepts, `check --fetch`'s table and `proxy.system_roots`.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use oauth_egress::intercept::ca::CertificateAuthority;
use oauth_egress::preflight::{preflight, Basis};
use oauth_egress::server::Running;
use oauth_egress_devserver::{AuthServer, DevClient, TestPki};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const BIN: &str = env!("CARGO_BIN_EXE_oauth-egress");

mod ops_support;
use ops_support::{client, Env};

/// The servers, plus a good and a broken private key in `dir`.
async fn servers() -> Env {
    let env = ops_support::servers("startup upstream CA").await;
    let key = rcgen::KeyPair::generate().unwrap();
    std::fs::write(env.dir.path().join("good.key"), key.serialize_pem()).unwrap();
    std::fs::write(env.dir.path().join("broken.key"), "not a PEM key\n").unwrap();
    env
}

/// One client `ops` (secret), one `signer` (private_key_jwt with `key_file`), and a route
/// per name on `ops`.
fn config_text(env: &Env, routes: &[&str], key_file: &str) -> String {
    let mut text = format!(
        "[proxy]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [clients.ops]\ntoken_endpoint = \"{endpoint}\"\nclient_id = \"ops-client\"\nauth = \"client_secret_basic\"\n\
         client_secret = {{ file = \"secret\" }}\n\
         [clients.signer]\ntoken_endpoint = \"{endpoint}\"\nclient_id = \"signer\"\nauth = \"private_key_jwt\"\n\
         private_key = {{ file = \"{key_file}\" }}\n",
        endpoint = env.auth.token_endpoint(),
    );
    for name in routes {
        text.push_str(&format!(
            "[[route]]\nname = \"{name}\"\nhost = \"localhost\"\nport = {}\npath_prefix = \"/{name}\"\nclient = \"ops\"\nscopes = [\"echo:read\"]\n",
            env.api.addr.port()
        ));
    }
    text
}

fn config(env: &Env, text: &str) -> oauth_egress::config::Config {
    oauth_egress::config::from_toml(text, env.dir.path(), "startup test").unwrap()
}

async fn start(env: &Env, text: &str) -> (Running, Arc<CertificateAuthority>) {
    ops_support::start(env, config(env, text)).await
}

async fn metrics(running: &Running) -> String {
    let url = format!("http://{}/metrics", running.admin_addr.unwrap());
    let res = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(url)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    res.text().await.unwrap()
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
async fn metrics_show_every_family_before_the_first_request_and_new_routes_after_a_reload() {
    let env = servers().await;
    let (running, _ca) = start(&env, &config_text(&env, &["fresh"], "good.key")).await;
    let text = metrics(&running).await;
    for (name, labels) in [
        (
            "oauth_egress_requests_total",
            &["route=\"fresh\"", "status=\"2xx\""][..],
        ),
        (
            "oauth_egress_token_cache_lookups_total",
            &["route=\"fresh\"", "result=\"miss\""],
        ),
        (
            "oauth_egress_retries_total",
            &["route=\"fresh\"", "reason=\"401\""],
        ),
        (
            "oauth_egress_token_requests_total",
            &["client=\"signer\"", "outcome=\"ok\""],
        ),
        (
            "oauth_egress_token_refresh_ahead_total",
            &["client=\"ops\""],
        ),
        ("oauth_egress_connects_total", &["action=\"intercept\""]),
        ("oauth_egress_config_reloads_total", &["outcome=\"ok\""]),
        ("oauth_egress_open_connections", &[]),
        (
            "oauth_egress_request_duration_seconds_count",
            &["route=\"fresh\""],
        ),
        (
            "oauth_egress_token_request_duration_seconds_count",
            &["client=\"ops\""],
        ),
    ] {
        assert!(
            sample(&text, name, labels).is_some(),
            "{name} {labels:?} missing before the first request:\n{text}"
        );
        let family = name.trim_end_matches("_count");
        assert!(
            text.contains(&format!("# HELP {family} ")),
            "{name}: {text}"
        );
    }
    assert_eq!(
        sample(&text, "oauth_egress_requests_total", &["route=\"fresh\""]),
        Some(0.0)
    );

    running
        .reload(config(
            &env,
            &config_text(&env, &["fresh", "added"], "good.key"),
        ))
        .await
        .unwrap();
    let text = metrics(&running).await;
    assert_eq!(
        sample(
            &text,
            "oauth_egress_requests_total",
            &["route=\"added\"", "status=\"5xx\""]
        ),
        Some(0.0),
        "{text}"
    );
    running.stop().await;
}

#[tokio::test]
async fn a_reload_with_a_broken_private_key_is_refused_and_the_old_config_keeps_serving() {
    let env = servers().await;
    let (running, ca) = start(&env, &config_text(&env, &["kept"], "good.key")).await;
    let client = client(&running, &ca);
    let url = format!("https://localhost:{}/kept/1", env.api.addr.port());
    assert_eq!(client.get(&url).send().await.unwrap().status(), 200);
    let rejected = |text: &str| {
        sample(
            text,
            "oauth_egress_config_reloads_total",
            &["outcome=\"rejected\""],
        )
        .unwrap_or(0.0)
    };
    let before = rejected(&metrics(&running).await);

    let broken = config_text(&env, &["kept", "new"], "broken.key");
    let err = running
        .reload(config(&env, &broken))
        .await
        .expect_err("a broken private key must refuse the reload");
    assert!(err.contains("clients.signer"), "{err}");
    assert!(
        !err.contains("not a PEM key"),
        "never echoes key material: {err}"
    );

    assert_eq!(rejected(&metrics(&running).await), before + 1.0);
    // The old table is still in force: /kept is served, /new has no route (no token).
    assert_eq!(client.get(&url).send().await.unwrap().status(), 200);
    let new = format!("https://localhost:{}/new/1", env.api.addr.port());
    assert_eq!(client.get(&new).send().await.unwrap().status(), 401);
    running.stop().await;
}

/// Kills the child if the test fails before it exits.
struct Proc(std::process::Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for(rx: &std::sync::mpsc::Receiver<String>, needle: &str) -> String {
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

/// What `run` logs when SIGHUP brings a broken private key: the reload is refused with a
/// line naming the client, and the process keeps serving.
#[cfg(unix)]
#[test]
fn sighup_with_a_broken_private_key_is_refused_with_a_log_line() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    std::fs::write(dir.path().join("signer.key"), key.serialize_pem()).unwrap();
    let cfg =
        "[proxy]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[clients.signer]\n\
               token_endpoint = \"https://idp.example/token\"\nclient_id = \"s\"\n\
               auth = \"private_key_jwt\"\nprivate_key = { file = \"signer.key\" }\n\
               [[route]]\nhost = \"api.example\"\nclient = \"signer\"\n";
    std::fs::write(dir.path().join("routes.toml"), cfg).unwrap();
    let mut child = Command::new(BIN)
        .args(["run", "-c", "routes.toml"])
        .current_dir(dir.path())
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let child = Proc(child);
    let (tx, logs) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let listening = wait_for(&logs, "oauth-egress listening");
    let admin = listening
        .split("Some(")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .unwrap_or_else(|| panic!("no admin address in {listening}"))
        .to_string();
    let rejected = || {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(&admin).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut text = String::new();
        stream.read_to_string(&mut text).unwrap();
        sample(
            &text,
            "oauth_egress_config_reloads_total",
            &["outcome=\"rejected\""],
        )
        .unwrap_or(0.0)
    };
    let hup = || {
        let status = Command::new("kill")
            .args(["-HUP", &child.0.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    };
    assert_eq!(rejected(), 0.0);

    std::fs::write(dir.path().join("signer.key"), "garbage, not a key\n").unwrap();
    hup();
    let line = wait_for(&logs, "configuration rejected");
    assert!(line.contains("clients.signer"), "{line}");
    assert!(!line.contains("garbage"), "{line}");
    assert_eq!(rejected(), 1.0);

    // A file that does not parse is counted the same way.
    std::fs::write(dir.path().join("routes.toml"), "[proxy\n").unwrap();
    hup();
    wait_for(&logs, "configuration rejected");
    assert_eq!(rejected(), 2.0);
    let mut child = child;
    assert!(child.0.try_wait().unwrap().is_none(), "still serving");
}

// ---------------------------------------------------------------------------------------
// Discovery: what a metadata document may say.

/// A plain-http loopback server answering every `openid-configuration` request with `body`
/// (with a `Content-Length` when `length` is set, else until close), 404 otherwise.
async fn metadata_server(body: impl Fn(u16) -> String + Send + 'static, length: bool) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        for _ in 0..64 {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let head = String::from_utf8_lossy(&head);
            let response = if head.contains("openid-configuration") {
                let body = body(port);
                let length = if length {
                    format!("content-length: {}\r\n", body.len())
                } else {
                    String::new()
                };
                format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n{length}connection: close\r\n\r\n{body}")
            } else {
                "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".into()
            };
            let _ = stream.write_all(response.as_bytes()).await;
            let _ = stream.shutdown().await;
        }
    });
    port
}

/// The problems preflight finds for a client discovered at `issuer`, or none.
async fn discovery_problems(issuer: &str) -> Vec<(String, String)> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("secret"), "s").unwrap();
    let text = format!(
        "[clients.disco]\nissuer = \"{issuer}\"\nclient_id = \"x\"\nauth = \"client_secret_post\"\n\
         client_secret = {{ file = \"secret\" }}\n"
    );
    let config = oauth_egress::config::from_toml(&text, dir.path(), "discovery test").unwrap();
    let ca = Arc::new(CertificateAuthority::generate().unwrap());
    let basis = Basis::Start {
        ca,
        extra_roots: &[],
    };
    match preflight(config, basis).await {
        Ok(checked) => {
            assert!(checked.unreachable.is_empty(), "{:?}", checked.unreachable);
            Vec::new()
        }
        Err(problems) => problems.0.into_iter().map(|p| (p.key, p.detail)).collect(),
    }
}

fn document(issuer: &str, token_endpoint: &str, alias: Option<&str>) -> String {
    let mut doc = serde_json::json!({
        "issuer": issuer,
        "token_endpoint": token_endpoint,
        "token_endpoint_auth_methods_supported": ["client_secret_post"],
    });
    if let Some(alias) = alias {
        doc["mtls_endpoint_aliases"] = serde_json::json!({ "token_endpoint": alias });
    }
    doc.to_string()
}

#[tokio::test]
async fn a_discovered_plain_http_token_endpoint_is_refused() {
    let port = metadata_server(
        |port| {
            document(
                &format!("http://127.0.0.1:{port}"),
                "http://idp.example/token",
                None,
            )
        },
        true,
    )
    .await;
    let problems = discovery_problems(&format!("http://127.0.0.1:{port}")).await;
    assert_eq!(problems.len(), 1, "{problems:?}");
    let (key, detail) = &problems[0];
    assert_eq!(key, "clients.disco.issuer");
    assert!(
        detail.contains("token_endpoint = \"http://idp.example/token\"")
            && detail.contains("not an https URL")
            && detail.contains(&format!("127.0.0.1:{port}")),
        "{detail}"
    );
}

#[tokio::test]
async fn a_discovered_plain_http_mtls_alias_is_refused() {
    let port = metadata_server(
        |port| {
            document(
                &format!("http://127.0.0.1:{port}"),
                "https://idp.example/token",
                Some("http://mtls.idp.example/token"),
            )
        },
        true,
    )
    .await;
    let problems = discovery_problems(&format!("http://127.0.0.1:{port}")).await;
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0]
            .1
            .contains("mtls_endpoint_aliases.token_endpoint = \"http://mtls.idp.example/token\""),
        "{problems:?}"
    );
}

#[tokio::test]
async fn an_oversized_metadata_document_is_refused_naming_client_and_issuer() {
    for length in [true, false] {
        let port = metadata_server(
            |port| {
                let mut doc = document(
                    &format!("http://127.0.0.1:{port}"),
                    "https://idp.example/token",
                    None,
                );
                doc.pop();
                doc.push_str(&format!(",\"padding\":\"{}\"}}", "x".repeat(300 * 1024)));
                doc
            },
            length,
        )
        .await;
        let problems = discovery_problems(&format!("http://127.0.0.1:{port}")).await;
        assert_eq!(problems.len(), 1, "content-length {length}: {problems:?}");
        let (key, detail) = &problems[0];
        assert_eq!(key, "clients.disco.issuer");
        assert!(
            detail.contains("larger than 256 KiB") && detail.contains(&format!("127.0.0.1:{port}")),
            "content-length {length}: {detail}"
        );
    }
}

/// README: issuers must match, except that a trailing slash is ignored (Auth0 publishes
/// `https://tenant.auth0.com/`); any other difference is refused.
#[tokio::test]
async fn issuers_match_ignoring_only_a_trailing_slash() {
    let port = metadata_server(
        |port| {
            document(
                &format!("http://127.0.0.1:{port}/tenant/"),
                "https://idp.example/token",
                None,
            )
        },
        true,
    )
    .await;
    let problems = discovery_problems(&format!("http://127.0.0.1:{port}/tenant")).await;
    assert!(problems.is_empty(), "{problems:?}");

    let port = metadata_server(
        |port| {
            document(
                &format!("http://127.0.0.1:{port}/other"),
                "https://idp.example/token",
                None,
            )
        },
        true,
    )
    .await;
    let problems = discovery_problems(&format!("http://127.0.0.1:{port}/tenant")).await;
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].1.contains("/other") && problems[0].1.contains("refusing"),
        "{problems:?}"
    );
}

// ---------------------------------------------------------------------------------------
// The binary: `check --fetch` and `proxy.system_roots`.

fn oauth_egress(dir: &Path, args: &[&str], envs: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = std::process::Command::new(BIN);
    cmd.args(args)
        .current_dir(dir)
        .env_remove("OAUTH_EGRESS_CONFIG")
        .env_remove("SSL_CERT_FILE")
        .env_remove("SSL_CERT_DIR")
        .env("RUST_LOG", "warn");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn text(out: &std::process::Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn reports_server(pki: &TestPki) -> AuthServer {
    AuthServer::start(
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        pki.server_config(&["localhost"]).unwrap(),
        "localhost",
        vec![DevClient {
            id: "reports".into(),
            secret: "right-secret-0123456789".into(),
            allowed_scopes: None,
        }],
    )
    .await
    .unwrap()
}

/// Every route gets a line, whatever happened to the others: OK, skipped and why, or
/// FAILED and why; the failures are also listed as problems and the exit code is 64.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_fetch_shows_every_routes_result_in_one_table() {
    let pki = TestPki::new("check table CA").unwrap();
    let auth = reports_server(&pki).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), pki.ca_cert_pem()).unwrap();
    std::fs::write(dir.path().join("good"), "right-secret-0123456789").unwrap();
    std::fs::write(dir.path().join("bad"), "wrong-secret-9876543210").unwrap();
    let cfg = format!(
        r#"
[proxy]
upstream_roots = ["ca.pem"]
[tokens]
retry_max_elapsed_ms = 0
[clients.good]
token_endpoint = "{endpoint}"
client_id = "reports"
auth = "client_secret_basic"
client_secret = {{ file = "good" }}
[clients.bad]
token_endpoint = "{endpoint}"
client_id = "reports"
auth = "client_secret_basic"
client_secret = {{ file = "bad" }}
[[route]]
name = "works"
host = "reports.example"
client = "good"
[[route]]
name = "refused"
host = "orders.example"
client = "bad"
[[route]]
name = "on-behalf"
host = "people.example"
client = "good"
grant = "token_exchange"
subject_token = "inbound"
"#,
        endpoint = auth.token_endpoint()
    );
    std::fs::write(dir.path().join("r.toml"), cfg).unwrap();
    let path = dir.path().to_owned();
    let out = tokio::task::spawn_blocking(move || {
        oauth_egress(&path, &["check", "--fetch", "-c", "r.toml"], &[])
    })
    .await
    .unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(64), "{stdout}{stderr}");
    let line = |route: &str| {
        stdout
            .lines()
            .find(|l| l.trim_start().starts_with(route))
            .unwrap_or_else(|| panic!("no line for {route}:\n{stdout}\n{stderr}"))
            .to_string()
    };
    assert!(line("works").contains("OK: Bearer token"), "{stdout}");
    let refused = line("refused");
    assert!(
        refused.contains("FAILED") && refused.contains("invalid_client"),
        "{refused}"
    );
    assert!(
        line("on-behalf").contains("skipped: exchanges each caller's own token"),
        "{stdout}"
    );
    assert!(stderr.contains("route refused: "), "{stderr}");
    assert!(
        !format!("{stdout}{stderr}").contains("secret-"),
        "{stdout}{stderr}"
    );
}

/// A token endpoint whose CA is only in the "system" store (SSL_CERT_FILE, read by
/// rustls-native-certs) verifies with `system_roots = true` and fails without it. The
/// variable is set on the child process only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn system_roots_trusts_the_os_store_only_when_asked() {
    let pki = TestPki::new("corporate CA").unwrap();
    let auth = reports_server(&pki).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("corporate.pem"), pki.ca_cert_pem()).unwrap();
    std::fs::write(dir.path().join("good"), "right-secret-0123456789").unwrap();
    let cfg = |system_roots: bool| {
        format!(
            r#"
[proxy]
system_roots = {system_roots}
[tokens]
retry_max_elapsed_ms = 0
[clients.corp]
token_endpoint = "{endpoint}"
client_id = "reports"
auth = "client_secret_basic"
client_secret = {{ file = "good" }}
[[route]]
name = "corp-api"
host = "corp.example"
client = "corp"
"#,
            endpoint = auth.token_endpoint()
        )
    };
    let bundle = dir.path().join("corporate.pem").display().to_string();
    for system_roots in [true, false] {
        std::fs::write(dir.path().join("r.toml"), cfg(system_roots)).unwrap();
        let (path, bundle) = (dir.path().to_owned(), bundle.clone());
        let out = tokio::task::spawn_blocking(move || {
            oauth_egress(
                &path,
                &["check", "--fetch", "-c", "r.toml"],
                &[("SSL_CERT_FILE", &bundle)],
            )
        })
        .await
        .unwrap();
        let (stdout, stderr) = text(&out);
        if system_roots {
            assert!(out.status.success(), "{stdout}{stderr}");
            assert!(stdout.contains("OK: Bearer token"), "{stdout}");
        } else {
            assert_eq!(out.status.code(), Some(64), "{stdout}{stderr}");
            assert!(
                stderr.contains("certificate") || stderr.contains("UnknownIssuer"),
                "{stderr}"
            );
        }
    }
    assert_eq!(auth.token_requests(), 1);
}
