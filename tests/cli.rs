//! The `oauth-egress` binary: `demo --once`, `check`, `ca export`, `env`, and how bad configs fail.

use std::path::Path;
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_oauth-egress");
const EXAMPLE: &str = include_str!("../routes.toml");

fn oauth_egress(dir: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .env_remove("OAUTH_EGRESS_CONFIG")
        .env_remove("DEMO_CLIENT_SECRET")
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn demo_once_shows_the_injected_token_working() {
    let dir = tempfile::tempdir().unwrap();
    // The shipped file, on free ports so tests never collide.
    let routes = EXAMPLE
        .replace("127.0.0.1:3128", &format!("127.0.0.1:{}", free_port()))
        .replace("127.0.0.1:9901", &format!("127.0.0.1:{}", free_port()))
        .replace("9444", &free_port().to_string())
        .replace("9443", &free_port().to_string());
    std::fs::write(dir.path().join("routes.toml"), routes).unwrap();
    let out = oauth_egress(dir.path(), &["demo", "--once", "-c", "routes.toml"]);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(all.contains("\"sub\":\"demo-client\""), "{all}");
    assert!(all.contains("curl -x http://127.0.0.1:"), "{all}");
    assert!(all.contains("--cacert"), "{all}");
    assert!(dir.path().join("ca/ca.pem").exists());
}

#[test]
fn check_prints_the_route_table() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("routes.toml"), EXAMPLE).unwrap();
    let out = Command::new(BIN)
        .args(["check", "-c", "routes.toml"])
        .current_dir(dir.path())
        .env("DEMO_CLIENT_SECRET", "x")
        .output()
        .unwrap();
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(all.contains("demo-echo"), "{all}");
    assert!(all.contains("localhost:9443/ -> client demo"), "{all}");
}

#[test]
fn check_validates_a_static_credential_and_names_its_route_never_its_value() {
    let dir = tempfile::tempdir().unwrap();
    let config = "[[route]]\nname = \"vendor\"\nhost = \"api.vendor.example\"\n\
        credential = { header = \"X-Api-Key\", value = { file = \"key\" } }\n";
    std::fs::write(dir.path().join("routes.toml"), config).unwrap();
    let check = || {
        Command::new(BIN)
            .args(["check", "-c", "routes.toml"])
            .current_dir(dir.path())
            .output()
            .unwrap()
    };
    std::fs::write(dir.path().join("key"), "vk_live_good\n").unwrap();
    let out = check();
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(all.contains("static credential in x-api-key"), "{all}");
    assert!(!all.contains("vk_live"), "{all}");
    std::fs::write(dir.path().join("key"), "vk_live_one\nvk_live_two").unwrap();
    let out = check();
    let all = text(&out);
    assert_eq!(out.status.code(), Some(64), "{all}");
    assert!(
        all.contains("route vendor") && all.contains("cannot go in a header"),
        "{all}"
    );
    assert!(!all.contains("vk_live"), "{all}");
}

#[test]
fn check_exits_64_naming_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let bad = r#"
[clients.a]
token_endpoint = "http://idp.example/token"
client_id = "a"
auth = "client_secret_basic"
client_secret = { env = "OAUTH_EGRESS_TEST_UNSET_SECRET" }

[[route]]
host = "api.example"
client = "nope"

[[route]]
host = "*"
client = "a"

[[route]]
host = "api.example"
client = "a"
"#;
    std::fs::write(dir.path().join("bad.toml"), bad).unwrap();
    let out = oauth_egress(dir.path(), &["check", "-c", "bad.toml"]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(64), "{all}");
    for expected in [
        "clients.a.token_endpoint must be an https URL",
        "client \"nope\" is not defined in [clients] (defined: a)",
        "route #2 (*): host",
        "route #3 (api.example) matches exactly the same requests as route \"api.example\"",
    ] {
        assert!(all.contains(expected), "missing {expected:?} in:\n{all}");
    }
}

#[test]
fn unknown_keys_are_errors_with_their_location() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("r.toml"),
        "[proxy]\nlisten = \"127.0.0.1:0\"\nunmatchd = \"deny\"\n",
    )
    .unwrap();
    let out = oauth_egress(dir.path(), &["check", "-c", "r.toml"]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(64), "{all}");
    assert!(all.contains("unmatchd") && all.contains("r.toml"), "{all}");
}

#[test]
fn a_literal_secret_is_refused_without_echoing_it() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = r#"
[clients.a]
token_endpoint = "https://idp.example/token"
client_id = "a"
auth = "client_secret_post"
client_secret = "hunter2-literal"
"#;
    std::fs::write(dir.path().join("r.toml"), cfg).unwrap();
    let out = oauth_egress(dir.path(), &["check", "-c", "r.toml"]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(64), "{all}");
    assert!(all.contains("literal values are refused"), "{all}");
    assert!(!all.contains("hunter2"), "{all}");
}

#[test]
fn a_certificate_that_is_not_the_keys_is_refused_by_check_and_run() {
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let other = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["entra-app".to_string()])
        .unwrap()
        .self_signed(&other)
        .unwrap();
    std::fs::write(dir.path().join("app.key"), key.serialize_pem()).unwrap();
    std::fs::write(dir.path().join("app.pem"), cert.pem()).unwrap();
    let cfg = r#"
[proxy]
listen = "127.0.0.1:0"
[clients.entra]
token_endpoint = "https://login.example/token"
client_id = "app"
auth = "private_key_jwt"
private_key = { file = "app.key" }
assertion_cert = "app.pem"
"#;
    std::fs::write(dir.path().join("r.toml"), cfg).unwrap();
    for command in ["check", "run"] {
        let out = oauth_egress(dir.path(), &[command, "-c", "r.toml"]);
        let all = text(&out);
        assert_eq!(out.status.code(), Some(64), "{command}: {all}");
        assert!(
            all.contains("clients.entra: assertion_cert"),
            "{command}: {all}"
        );
        assert!(
            all.contains("is not for this private key"),
            "{command}: {all}"
        );
        assert!(!all.contains("PRIVATE KEY"), "{command}: {all}");
    }
}

#[test]
fn unreadable_secrets_stop_run_with_64() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("routes.toml"),
        EXAMPLE.replace("127.0.0.1:3128", "127.0.0.1:0"),
    )
    .unwrap();
    let out = oauth_egress(dir.path(), &["run", "-c", "routes.toml"]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(64), "{all}");
    assert!(all.contains("DEMO_CLIENT_SECRET is not set"), "{all}");
}

#[test]
fn environment_overrides_the_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("routes.toml"), EXAMPLE).unwrap();
    let out = Command::new(BIN)
        .args(["check"])
        .current_dir(dir.path())
        .env("OAUTH_EGRESS_CONFIG", "routes.toml")
        .env("OAUTH_EGRESS_PROXY__UNMATCHED", "deny")
        .env("DEMO_CLIENT_SECRET", "x")
        .output()
        .unwrap();
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(all.contains("unmatched hosts: deny"), "{all}");
}

#[test]
fn ca_export_creates_the_ca_once_and_prints_it() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("routes.toml"), EXAMPLE).unwrap();
    let first = oauth_egress(dir.path(), &["ca", "export"]);
    assert!(first.status.success(), "{}", text(&first));
    let pem = String::from_utf8(first.stdout).unwrap();
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");
    assert!(dir.path().join("ca/ca.key").exists());
    let second = oauth_egress(dir.path(), &["ca", "export"]);
    assert_eq!(
        String::from_utf8(second.stdout).unwrap(),
        pem,
        "the same CA, not a new one"
    );
}

#[test]
fn env_prints_exports_that_trust_system_roots_and_the_ca() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("routes.toml"), EXAMPLE).unwrap();
    let system = dir.path().join("system.pem");
    std::fs::write(
        &system,
        "-----BEGIN CERTIFICATE-----\nSYSTEM\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let out = oauth_egress(
        dir.path(),
        &["env", "--system-roots", system.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", text(&out));
    let exports = String::from_utf8(out.stdout).unwrap();
    let ca = std::fs::canonicalize(dir.path().join("ca/ca.pem")).unwrap();
    let bundle = ca.with_file_name("ca-bundle.pem");
    assert!(
        exports.contains("export HTTPS_PROXY='http://127.0.0.1:3128'\n"),
        "{exports}"
    );
    assert!(
        exports.contains("export http_proxy='http://127.0.0.1:3128'\n"),
        "{exports}"
    );
    assert!(
        exports.contains(&format!("export NODE_EXTRA_CA_CERTS='{}'\n", ca.display())),
        "{exports}"
    );
    for name in ["SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"] {
        assert!(
            exports.contains(&format!("export {name}='{}'\n", bundle.display())),
            "{name}: {exports}"
        );
    }
    let ca_pem = std::fs::read_to_string(&ca).unwrap();
    let bundled = std::fs::read_to_string(&bundle).unwrap();
    assert!(
        bundled.starts_with("-----BEGIN CERTIFICATE-----\nSYSTEM"),
        "{bundled}"
    );
    assert!(bundled.ends_with(&ca_pem), "the proxy's CA comes last");

    // The exports are valid sh: evaluated, they set what they say.
    let shell = Command::new("sh")
        .arg("-c")
        .arg("eval \"$(cat)\"; printf '%s|%s' \"$HTTPS_PROXY\" \"$CURL_CA_BUNDLE\"")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    shell
        .stdin
        .as_ref()
        .unwrap()
        .write_all(exports.as_bytes())
        .unwrap();
    let evaluated = shell.wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8(evaluated.stdout).unwrap(),
        format!("http://127.0.0.1:3128|{}", bundle.display())
    );
}

#[test]
fn env_names_a_missing_system_bundle() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("routes.toml"), EXAMPLE).unwrap();
    let out = oauth_egress(
        dir.path(),
        &[
            "env",
            "--system-roots",
            "/nonexistent/roots.pem",
            "--proxy-url",
            "http://proxy.internal:3128",
        ],
    );
    assert!(!out.status.success());
    let all = text(&out);
    assert!(
        all.contains("cannot read the system CA bundle /nonexistent/roots.pem"),
        "{all}"
    );
}

/// `check --fetch` asks the authorization server for every route's token: a wrong secret is
/// reported now, naming the route and the OAuth error (never the secret), and exits 64; a
/// route that exchanges the caller's token is skipped; a good one says OK.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_fetch_gets_a_token_per_route_and_names_failures() {
    use oauth_egress_devserver::{AuthServer, DevClient, TestPki};
    let pki = TestPki::new("check CA").unwrap();
    let auth = AuthServer::start(
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        pki.server_config(&["localhost"]).unwrap(),
        "localhost",
        vec![DevClient {
            id: "reports".into(),
            secret: "right-secret-0123456789".into(),
            allowed_scopes: None,
        }],
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), pki.ca_cert_pem()).unwrap();
    std::fs::write(dir.path().join("good"), "right-secret-0123456789").unwrap();
    std::fs::write(dir.path().join("bad"), "wrong-secret-9876543210").unwrap();
    let cfg = |secret_file: &str| {
        format!(
            r#"
[proxy]
upstream_roots = ["ca.pem"]
[clients.reports]
token_endpoint = "{endpoint}"
client_id = "reports"
auth = "client_secret_basic"
client_secret = {{ file = "{secret_file}" }}
[[route]]
name = "reports-api"
host = "reports.example"
client = "reports"
scopes = ["reports:read"]
[[route]]
name = "on-behalf"
host = "orders.example"
client = "reports"
grant = "token_exchange"
subject_token = "inbound"
"#,
            endpoint = auth.token_endpoint()
        )
    };
    let run = |text: String| {
        let dir = dir.path().to_owned();
        tokio::task::spawn_blocking(move || {
            std::fs::write(dir.join("r.toml"), text).unwrap();
            oauth_egress(&dir, &["check", "--fetch", "-c", "r.toml"])
        })
    };

    let out = run(cfg("good")).await.unwrap();
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(
        all.contains("reports-api") && all.contains("OK: Bearer token"),
        "{all}"
    );
    assert!(
        all.contains("skipped: exchanges each caller's own token"),
        "{all}"
    );
    assert_eq!(auth.token_requests(), 1);

    let out = run(cfg("bad")).await.unwrap();
    let all = text(&out);
    assert_eq!(out.status.code(), Some(64), "{all}");
    assert!(all.contains("route reports-api:"), "{all}");
    assert!(all.contains("invalid_client"), "{all}");
    assert!(
        !all.contains("wrong-secret") && !all.contains("right-secret"),
        "{all}"
    );
}

/// A `refresh_token` file in a directory the proxy cannot write loses the rotated token the
/// first time the server rotates it: `check` (the same preflight as `run` and reload) refuses
/// it, naming the route, before any token request. `/proc` is read-only even for root.
#[cfg(target_os = "linux")]
#[test]
fn check_refuses_a_refresh_token_file_in_a_read_only_directory() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("good.refresh"), "rt-1\n").unwrap();
    let toml = r#"
[clients.a]
token_endpoint = "https://idp.example/token"
client_id = "a"
auth = "client_secret_basic"
client_secret = { file = "secret" }

[[route]]
name = "fine"
host = "fine.example"
client = "a"
grant = "refresh_token"
refresh_token = { file = "good.refresh" }

[[route]]
name = "crm"
host = "crm.example"
client = "a"
grant = "refresh_token"
refresh_token = { file = "/proc/crm.refresh" }
"#;
    std::fs::write(dir.path().join("secret"), "s3cret\n").unwrap();
    std::fs::write(dir.path().join("routes.toml"), toml).unwrap();
    let out = oauth_egress(dir.path(), &["check", "-c", "routes.toml"]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(64), "{all}");
    assert!(
        all.contains("route crm: refresh_token file /proc/crm.refresh"),
        "{all}"
    );
    assert!(all.contains("is not writable"), "{all}");
    assert!(!all.contains("route fine:"), "{all}");
}

/// A CA key readable by others lets them mint certificates every client trusts: `check`
/// warns about it (and `run` logs the same), naming the file and the fix.
#[cfg(unix)]
#[test]
fn check_warns_about_a_ca_key_others_can_read() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("routes.toml"), EXAMPLE).unwrap();
    // Generate the CA (0600), then open the key up.
    let out = oauth_egress(dir.path(), &["ca", "export", "-c", "routes.toml"]);
    assert!(out.status.success(), "{}", text(&out));
    let check = |dir: &Path| {
        let out = Command::new(BIN)
            .args(["check", "-c", "routes.toml"])
            .current_dir(dir)
            .env("DEMO_CLIENT_SECRET", "x")
            .output()
            .unwrap();
        text(&out)
    };
    assert!(!check(dir.path()).contains("readable by group or others"));
    let key = dir.path().join("ca/ca.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let all = check(dir.path());
    assert!(
        all.contains("warning: proxy.ca_key")
            && all.contains("mode 644")
            && all.contains("chmod 600"),
        "{all}"
    );
}

/// `oauth-egress iptables` prints the install and removal commands; rules that cannot work
/// exit 64 naming the flag.
#[test]
fn iptables_prints_the_rules_and_their_removal_and_refuses_what_cannot_work() {
    let dir = tempfile::tempdir().unwrap();
    let out = oauth_egress(
        dir.path(),
        &["iptables", "--uid", "1337", "--ports", "443,8443"],
    );
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    for line in [
        "iptables -t nat -A OAUTH_EGRESS -m owner --uid-owner 1337 -j RETURN",
        "iptables -t nat -A OAUTH_EGRESS -p tcp --dport 8443 -j REDIRECT --to-ports 15001",
        "ip6tables -t nat -A OUTPUT -p tcp -j OAUTH_EGRESS",
        "ip6tables -t nat -X OAUTH_EGRESS",
    ] {
        assert!(all.lines().any(|l| l == line), "{line}: {all}");
    }
    let cases: [(&[&str], &str); 2] = [
        (&["--uid", "0"], "--uid 0"),
        (&["--uid", "1337", "--http-to-port", "0"], "--http-to-port"),
    ];
    for (args, want) in cases {
        let out = oauth_egress(dir.path(), &[&["iptables"], args].concat());
        let all = text(&out);
        assert_eq!(out.status.code(), Some(64), "{all}");
        assert!(all.contains(want), "{want}: {all}");
    }
}

/// `check` names the transparent listeners and says they see no `Proxy-Authorization`.
#[test]
fn check_says_a_transparent_listener_sees_no_proxy_authorization() {
    let dir = tempfile::tempdir().unwrap();
    let routes = format!(
        "{EXAMPLE}\n[transparent]\nlisten = \"127.0.0.1:15001\"\nhttp_listen = \"127.0.0.1:15080\"\n\
         [[caller]]\nname = \"billing\"\nproxy_auth = {{ bearer = {{ env = \"BILLING_PROXY_TOKEN\" }} }}\n\
         [[caller]]\nname = \"reports\"\nsources = [\"10.1.2.0/24\"]\n"
    );
    std::fs::write(dir.path().join("routes.toml"), routes).unwrap();
    let out = Command::new(BIN)
        .args(["check", "-c", "routes.toml"])
        .current_dir(dir.path())
        .env("DEMO_CLIENT_SECRET", "x")
        .env("BILLING_PROXY_TOKEN", "t0ken")
        .output()
        .unwrap();
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(
        all.contains("transparent 127.0.0.1:15001 (TLS, by SNI), plain http 127.0.0.1:15080"),
        "{all}"
    );
    assert!(all.contains("no Proxy-Authorization"), "{all}");
    // A caller known only by proxy_auth can never be recognised on a transparent listener.
    assert!(
        all.contains("warning: caller billing: known only by proxy_auth"),
        "{all}"
    );
    assert!(!all.contains("caller reports: known only"), "{all}");
}
