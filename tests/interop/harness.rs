//! Starts the independent servers (`servers.mjs`: oidc-provider as the authorization server, a
//! `jose` resource server), the proxy in front of them, and the real clients.
//!
//! Nothing here speaks OAuth: the proxy gets its tokens from oidc-provider, the resource
//! server checks them, and the tests read what both servers recorded.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use oauth_egress::intercept::ca::CertificateAuthority;
use oauth_egress::server::Running;
use oauth_egress_devserver::TestPki;
use serde_json::Value;

/// `tests/interop`, where the Node project and the client programs live.
pub fn interop_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop")
}

/// Installs the Node packages from the committed lockfile once per test run, so `cargo test`
/// works on a fresh clone (CI runs the same `npm ci` in `.ci/run` first).
fn npm_ci() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let dir = interop_dir();
        let lock = dir.join("package-lock.json");
        let installed = dir.join("node_modules/.package-lock.json");
        let fresh = match (std::fs::metadata(&lock), std::fs::metadata(&installed)) {
            (Ok(lock), Ok(installed)) => lock.modified().ok() <= installed.modified().ok(),
            _ => false,
        };
        if !fresh {
            let status = Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund"])
                .current_dir(&dir)
                .status()
                .expect("npm is needed for the interop suite (Node 20+)");
            assert!(status.success(), "npm ci in {} failed", dir.display());
        }
    });
}

/// A real client program, unchanged, configured only the way its ecosystem expects.
#[derive(Clone, Copy, Debug)]
pub enum Client {
    /// curl, from `eval "$(oauth-egress env)"` (HTTPS_PROXY, CURL_CA_BUNDLE).
    Curl,
    /// Python `requests` (HTTPS_PROXY, REQUESTS_CA_BUNDLE, both from `oauth-egress env`).
    Python,
    /// Java 17 `HttpClient` (-Dhttps.proxyHost/-Port, a truststore made with keytool).
    Java,
    /// Node's undici `EnvHttpProxyAgent` (HTTPS_PROXY, NODE_EXTRA_CA_CERTS).
    Node,
}

/// How a client authenticates to the proxy itself (`[[caller]]` `proxy_auth`), each the way
/// its ecosystem does it (README: "Callers").
#[derive(Clone, Debug)]
pub enum ProxyAuth {
    /// None: the proxy answers CONNECT with 407 when `proxy.callers = "known"`.
    None,
    /// curl `-x http://u:p@host:port`, Python `HTTPS_PROXY=http://u:p@host:port`, Java an
    /// `Authenticator` with `-Djdk.http.auth.tunneling.disabledSchemes=`.
    Basic(&'static str, &'static str),
    /// undici `ProxyAgent({ uri, token: "Bearer ..." })`.
    Bearer(&'static str),
}

/// One request a client makes.
#[derive(Clone, Debug)]
pub struct Call {
    pub method: &'static str,
    pub path: String,
    pub authorization: Option<String>,
    pub body: Option<String>,
}

impl Call {
    pub fn get(path: &str) -> Call {
        Call {
            method: "GET",
            path: path.into(),
            authorization: None,
            body: None,
        }
    }

    pub fn post(path: &str, body: &str) -> Call {
        Call {
            body: Some(body.into()),
            method: "POST",
            ..Call::get(path)
        }
    }

    pub fn with_authorization(mut self, value: &str) -> Call {
        self.authorization = Some(value.into());
        self
    }
}

/// What the client got back.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: String,
}

impl Answer {
    /// The resource server's JSON description of what it verified.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.body))
    }
}

/// Child processes are killed when the test ends, whichever way it ends.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The servers and the proxy for one test.
pub struct Interop {
    pub dir: tempfile::TempDir,
    /// `ready.json`, as `servers.mjs` wrote it.
    pub ready: Value,
    pub config_path: PathBuf,
    pub proxy: Option<Running>,
    http: reqwest::Client,
    _servers: Reaped,
    stderr: Arc<Mutex<Vec<String>>>,
}

/// A `[[route]]` per scenario, all on the one resource server, told apart by path.
pub const ROUTES: &[&str] = &[
    "basic", "post", "jwt", "es256", "rs256", "mtls", "dpop", "exchange", "refresh",
];

impl Interop {
    /// Starts `servers.mjs` on fresh PKI, then the proxy with [`Interop::routes_toml`].
    pub async fn start() -> Interop {
        Interop::start_with(|toml| toml).await
    }

    /// Like [`Interop::start`], letting the test edit the configuration first.
    pub async fn start_with(edit: impl FnOnce(String) -> String) -> Interop {
        oauth_egress::metrics::init();
        npm_ci();
        let dir = tempfile::tempdir().unwrap();
        let pki = TestPki::new("interop test CA").unwrap();
        let (server_chain, server_key) = pki.leaf(&["localhost", "127.0.0.1"]).unwrap();
        let (client_chain, client_key) = pki.client_leaf(&["interop-mtls-client"]).unwrap();
        let write = |name: &str, text: String| std::fs::write(dir.path().join(name), text).unwrap();
        write("ca.pem", pki.ca_cert_pem().to_string());
        write("server.pem", pem("CERTIFICATE", server_chain[0].as_ref()));
        write(
            "server-key.pem",
            pem("PRIVATE KEY", server_key.secret_der()),
        );
        write("client.pem", pem("CERTIFICATE", client_chain[0].as_ref()));
        write(
            "client-key.pem",
            pem("PRIVATE KEY", client_key.secret_der()),
        );

        let mut child = Command::new("node")
            .arg(interop_dir().join("servers.mjs"))
            .arg(dir.path())
            .env_remove("HTTPS_PROXY")
            .env_remove("https_proxy")
            .env_remove("HTTP_PROXY")
            .env_remove("http_proxy")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("node is needed for the interop suite");
        let stdout = child.stdout.take().unwrap();
        let stderr_pipe = child.stderr.take().unwrap();
        let servers = Reaped(child);
        let stderr = Arc::new(Mutex::new(Vec::new()));
        {
            let stderr = stderr.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr_pipe).lines().map_while(Result::ok) {
                    stderr.lock().unwrap().push(line);
                }
            });
        }
        let ready_line = tokio::task::spawn_blocking(move || {
            BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .find(|line| line.trim() == "READY")
        });
        let ready_line = tokio::time::timeout(Duration::from_secs(60), ready_line)
            .await
            .unwrap_or_else(|_| panic!("servers.mjs not ready in 60 s: {:?}", stderr.lock()))
            .unwrap();
        assert!(
            ready_line.is_some(),
            "servers.mjs exited before READY:\n{}",
            stderr.lock().unwrap().join("\n")
        );
        let ready: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join("ready.json")).unwrap())
                .unwrap();

        let http = reqwest::Client::builder()
            .use_preconfigured_tls(pki.client_config())
            .no_proxy()
            .build()
            .unwrap();
        // The actor of the `actor` route: a workload token the proxy presents as actor_token.
        std::fs::write(
            dir.path().join("actor.jwt"),
            ready["subject_tokens"]["bob"].as_str().unwrap(),
        )
        .unwrap();
        let config_path = dir.path().join("routes.toml");
        std::fs::write(&config_path, edit(routes_toml(&ready))).unwrap();
        let mut interop = Interop {
            dir,
            ready,
            config_path,
            proxy: None,
            http,
            _servers: servers,
            stderr,
        };
        interop.start_proxy().await;
        interop
    }

    /// Starts (or restarts) the proxy from `routes.toml`, as `oauth-egress run` would.
    pub async fn start_proxy(&mut self) {
        if let Some(old) = self.proxy.take() {
            old.stop().await;
        }
        let config = oauth_egress::config::load(&self.config_path)
            .unwrap_or_else(|e| panic!("{e}\n{}", self.routes_text()));
        let (ca, _created) =
            CertificateAuthority::load_or_create(&config.proxy.ca_cert, &config.proxy.ca_key)
                .unwrap();
        let running = oauth_egress::server::start(config, Arc::new(ca), &[])
            .await
            .unwrap_or_else(|e| panic!("proxy did not start: {e}"));
        self.proxy = Some(running);
    }

    fn routes_text(&self) -> String {
        std::fs::read_to_string(&self.config_path).unwrap_or_default()
    }

    /// `http://127.0.0.1:<port>` of the running proxy.
    pub fn proxy_url(&self) -> String {
        format!("http://{}", self.proxy.as_ref().unwrap().proxy_addr)
    }

    /// `https://localhost:<port><path>` on the resource server.
    pub fn api_url(&self, path: &str) -> String {
        format!("{}{path}", self.ready["api"].as_str().unwrap())
    }

    fn issuer(&self) -> &str {
        self.ready["issuer"].as_str().unwrap()
    }

    /// The `client_id` oidc-provider knows the scenario's client by.
    pub fn client_id(&self, scenario: &str) -> String {
        self.ready["clients"][scenario]["client_id"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// A subject token (`alice`, `bob`) from the workload issuer the AS trusts.
    pub fn subject_token(&self, who: &str) -> String {
        self.ready["subject_tokens"][who].as_str().unwrap().into()
    }

    /// Every request the resource server saw, oldest first.
    pub async fn seen(&self) -> Vec<Value> {
        self.control_get(&self.api_url("/_control/seen")).await
    }

    /// Every token request oidc-provider saw, oldest first.
    pub async fn token_requests(&self) -> Vec<Value> {
        self.control_get(&format!("{}/_control/token-requests", self.issuer()))
            .await
    }

    /// Forgets both servers' records (and the resource server's revocations).
    pub async fn reset(&self) {
        self.control_post(&self.api_url("/_control/reset")).await;
        self.control_post(&format!("{}/_control/reset", self.issuer()))
            .await;
    }

    /// Forgets oidc-provider's record of token requests.
    pub async fn reset_token_log(&self) {
        self.control_post(&format!("{}/_control/reset", self.issuer()))
            .await;
    }

    /// The resource server rejects every access token it has seen so far.
    pub async fn revoke_seen_tokens(&self) {
        self.control_post(&self.api_url("/_control/revoke")).await;
    }

    /// The resource server starts a new DPoP nonce; the old one is refused.
    pub async fn rotate_api_nonce(&self) {
        self.control_post(&self.api_url("/_control/rotate-nonce"))
            .await;
    }

    async fn control_get(&self, url: &str) -> Vec<Value> {
        let response = self.http.get(url).send().await.unwrap();
        assert!(
            response.status().is_success(),
            "{url}: {}",
            response.status()
        );
        response.json().await.unwrap()
    }

    async fn control_post(&self, url: &str) {
        let response = self.http.post(url).send().await.unwrap();
        assert!(
            response.status().is_success(),
            "{url}: {}",
            response.status()
        );
    }

    /// The servers' log so far, for failure messages.
    pub fn server_log(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    /// Runs `client` over `calls` through the proxy and returns one answer per call.
    pub async fn run(&self, client: Client, calls: &[Call]) -> Vec<Answer> {
        self.run_as(client, calls, &ProxyAuth::None).await
    }

    /// [`Interop::run`], the client authenticating to the proxy with `auth`.
    pub async fn run_as(&self, client: Client, calls: &[Call], auth: &ProxyAuth) -> Vec<Answer> {
        let spec = calls
            .iter()
            .map(|c| {
                format!(
                    "{}\t{}\t{}\t{}\n",
                    c.method,
                    self.api_url(&c.path),
                    c.authorization.as_deref().unwrap_or("-"),
                    c.body.as_deref().unwrap_or("-")
                )
            })
            .collect::<String>();
        let spec_path = self.dir.path().join(format!("{client:?}.spec"));
        std::fs::write(&spec_path, spec).unwrap();
        let mut command = self.command(client, &spec_path, calls);
        self.authenticate(&mut command, client, auth);
        let output = tokio::task::spawn_blocking(move || run_with_timeout(command))
            .await
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{client:?} failed ({}):\n{stdout}\n{}\nservers:\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr),
            self.server_log()
        );
        let answers: Vec<Answer> = stdout
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|line| {
                let v: Value = serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("{client:?} printed {line:?}: {e}"));
                Answer {
                    status: v["status"].as_u64().unwrap() as u16,
                    body: v["body"].as_str().unwrap().to_string(),
                }
            })
            .collect();
        assert_eq!(answers.len(), calls.len(), "{client:?}: {stdout}");
        answers
    }

    /// One curl process fetching every path at once (`--parallel --parallel-immediate`, a
    /// connection each), configured by `eval "$(oauth-egress env)"`. Returns the statuses.
    pub async fn curl_parallel(&self, paths: &[String]) -> Vec<u16> {
        let urls: String = paths
            .iter()
            .map(|p| format!(" '{}' -o /dev/null", self.api_url(p)))
            .collect();
        let script = format!(
            "set -e\neval \"$('{bin}' env --proxy-url '{proxy}' -c '{config}')\"\n\
             curl -sS --parallel --parallel-immediate --parallel-max {n} -w '%{{http_code}}\\n'{urls}\n",
            bin = env!("CARGO_BIN_EXE_oauth-egress"),
            proxy = self.proxy_url(),
            config = self.config_path.display(),
            n = paths.len(),
        );
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(script)
            .env_remove("NO_PROXY")
            .env_remove("no_proxy");
        let output = tokio::task::spawn_blocking(move || run_with_timeout(command))
            .await
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        String::from_utf8(output.stdout)
            .unwrap()
            .lines()
            .map(|l| l.trim().parse().unwrap())
            .collect()
    }

    /// `oauth-egress check --fetch` on this configuration: its exit code and output.
    pub async fn check_fetch(&self) -> (Option<i32>, String) {
        let mut command = Command::new(env!("CARGO_BIN_EXE_oauth-egress"));
        command
            .args(["check", "--fetch", "-c"])
            .arg(&self.config_path)
            .env("RUST_LOG", "warn");
        let output = tokio::task::spawn_blocking(move || run_with_timeout(command))
            .await
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        (output.status.code(), text)
    }

    /// What `eval "$(oauth-egress env)"` sets, read from the real command's output.
    fn env_exports(&self) -> Vec<(String, String)> {
        let output = Command::new(env!("CARGO_BIN_EXE_oauth-egress"))
            .args(["env", "--format", "dotenv", "--proxy-url"])
            .arg(self.proxy_url())
            .arg("-c")
            .arg(&self.config_path)
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        String::from_utf8(output.stdout)
            .unwrap()
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn command(&self, client: Client, spec: &Path, calls: &[Call]) -> Command {
        let clients = interop_dir().join("clients");
        let mut command = match client {
            Client::Curl => {
                // One curl per call, as a shell script would; the environment comes from the
                // real `oauth-egress env` through `eval`, exactly as README tells users.
                let script = format!(
                    r#"set -e
eval "$('{bin}' env --proxy-url '{proxy}' -c '{config}')"
while IFS="$(printf '\t')" read -r method url authorization body; do
  set -- -sS -X "$method" -o "$RUNNER_TMP/body"
  [ "$authorization" = - ] || set -- "$@" -H "Authorization: $authorization"
  [ "$body" = - ] || set -- "$@" --data-binary "$body"
  [ -z "${{PROXY_WITH_AUTH:-}}" ] || set -- "$@" -x "$PROXY_WITH_AUTH"
  rm -f "$RUNNER_TMP/body"
  # A refused CONNECT fails the transfer: its status is then the CONNECT's (%{{http_connect}}).
  status=$(curl "$@" -w '%{{http_code}} %{{http_connect}}' "$url") || true
  python3 -c 'import json,os,sys; code, connect = sys.argv[2].split(); body = open(sys.argv[3]).read() if os.path.exists(sys.argv[3]) else ""; print(json.dumps({{"url": sys.argv[1], "status": int(code) or int(connect), "body": body}}))' "$url" "$status" "$RUNNER_TMP/body"
done < '{spec}'
"#,
                    bin = env!("CARGO_BIN_EXE_oauth-egress"),
                    proxy = self.proxy_url(),
                    config = self.config_path.display(),
                    spec = spec.display(),
                );
                let mut c = Command::new("sh");
                c.arg("-c").arg(script);
                c.env("RUNNER_TMP", self.dir.path());
                c
            }
            Client::Python => {
                let mut c = Command::new("python3");
                c.arg(clients.join("client.py")).arg(spec);
                c.envs(self.env_exports());
                c
            }
            Client::Node => {
                let mut c = Command::new("node");
                c.arg(clients.join("client.mjs")).arg(spec);
                c.env("NODE_PATH", interop_dir().join("node_modules"));
                c.current_dir(interop_dir());
                c.envs(self.env_exports());
                c
            }
            Client::Java => {
                let truststore = self.java_truststore();
                let addr = self.proxy.as_ref().unwrap().proxy_addr;
                let mut c = Command::new("java");
                c.arg(format!("-Dhttps.proxyHost={}", addr.ip()))
                    .arg(format!("-Dhttps.proxyPort={}", addr.port()))
                    // The JVM never proxies localhost unless told to: its default
                    // http.nonProxyHosts is "localhost|127.*|[::1]".
                    .arg("-Dhttp.nonProxyHosts=")
                    .arg(format!(
                        "-Djavax.net.ssl.trustStore={}",
                        truststore.display()
                    ))
                    .arg("-Djavax.net.ssl.trustStorePassword=changeit")
                    .arg(clients.join("InteropClient.java"))
                    .arg(spec);
                c
            }
        };
        let _ = calls;
        for name in ["NO_PROXY", "no_proxy"] {
            command.env_remove(name);
        }
        command.stdin(Stdio::null());
        command
    }

    /// Sets `client` up to present `auth` to the proxy, as its users would.
    fn authenticate(&self, command: &mut Command, client: Client, auth: &ProxyAuth) {
        let addr = self.proxy.as_ref().unwrap().proxy_addr;
        match (client, auth) {
            (_, ProxyAuth::None) => {}
            (Client::Curl, ProxyAuth::Basic(user, password)) => {
                command.env(
                    "PROXY_WITH_AUTH",
                    format!("http://{user}:{password}@{addr}"),
                );
            }
            (Client::Python, ProxyAuth::Basic(user, password)) => {
                let url = format!("http://{user}:{password}@{addr}");
                command.env("HTTPS_PROXY", &url).env("https_proxy", &url);
            }
            (Client::Java, ProxyAuth::Basic(user, password)) => {
                // The JDK disables Basic for CONNECT unless this names no scheme.
                let args: Vec<_> = command.get_args().map(|a| a.to_owned()).collect();
                let mut java = Command::new("java");
                java.arg("-Djdk.http.auth.tunneling.disabledSchemes=")
                    .arg(format!("-Dinterop.proxyUser={user}"))
                    .arg(format!("-Dinterop.proxyPassword={password}"))
                    .args(args)
                    .stdin(Stdio::null());
                *command = java;
            }
            (Client::Node, ProxyAuth::Bearer(token)) => {
                command.env("PROXY_TOKEN", format!("Bearer {token}"));
            }
            (client, auth) => panic!("{client:?} with {auth:?} is not a setup this suite runs"),
        }
    }

    /// A PKCS#12 truststore holding the proxy's CA, made with keytool as a Java team would.
    fn java_truststore(&self) -> PathBuf {
        let store = self.dir.path().join("truststore.p12");
        if !store.exists() {
            let ca = self.dir.path().join("proxy-ca/ca.pem");
            let status = Command::new("keytool")
                .args(["-importcert", "-noprompt", "-alias", "oauth-egress"])
                .stderr(Stdio::null())
                .args(["-storetype", "PKCS12", "-storepass", "changeit"])
                .arg("-file")
                .arg(&ca)
                .arg("-keystore")
                .arg(&store)
                .stdout(Stdio::null())
                .status()
                .expect("keytool (Java 17) is needed for the interop suite");
            assert!(status.success(), "keytool failed");
        }
        store
    }
}

/// Runs `command`, killing it after two minutes so a hung client fails the test.
fn run_with_timeout(mut command: Command) -> std::process::Output {
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = command
        .spawn()
        .unwrap_or_else(|e| panic!("{command:?}: {e}"));
    let id = child.id();
    let deadline = Instant::now() + Duration::from_secs(120);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(output) => return output.unwrap(),
            Err(_) if Instant::now() > deadline => {
                let _ = Command::new("kill").arg(id.to_string()).status();
                panic!("{command:?} did not finish in 120 s");
            }
            Err(_) => {}
        }
    }
}

/// DER → PEM (RFC 7468), for Node's `tls` module.
fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in body.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// The proxy's configuration: one client per scenario, one route per scenario, all on the
/// resource server's host and port, split by path.
pub fn routes_toml(ready: &Value) -> String {
    let issuer = ready["issuer"].as_str().unwrap();
    let api = ready["api"].as_str().unwrap();
    let port: u16 = api.rsplit(':').next().unwrap().parse().unwrap();
    let resource = ready["resource"].as_str().unwrap();
    let scope = ready["scope"].as_str().unwrap();
    let clients = &ready["clients"];
    let id = |name: &str| clients[name]["client_id"].as_str().unwrap().to_string();
    let path = |name: &str, key: &str| clients[name][key].as_str().unwrap().to_string();
    let secret_client = |name: &str, auth: &str, extra: &str| {
        format!(
            "[clients.{name}]\nissuer = \"{issuer}\"\nclient_id = \"{id}\"\nauth = \"{auth}\"\n\
             client_secret = {{ file = \"{secret}\" }}\n{extra}\n",
            id = id(name),
            secret = path(name, "client_secret_file"),
        )
    };
    let key_client = |name: &str, alg: &str, extra: &str| {
        format!(
            "[clients.{name}]\nissuer = \"{issuer}\"\nclient_id = \"{id}\"\n\
             auth = \"private_key_jwt\"\nprivate_key = {{ file = \"{key}\" }}\n\
             signing_alg = \"{alg}\"\nkey_id = \"{kid}\"\n{extra}\n",
            id = id(name),
            key = path(name, "private_key_file"),
            kid = path(name, "key_id"),
        )
    };
    let mut toml = String::from(
        r#"[proxy]
listen = "127.0.0.1:0"
unmatched = "deny"
ca_cert = "proxy-ca/ca.pem"
ca_key = "proxy-ca/ca.key"
upstream_roots = ["ca.pem"]

[tokens]
retry_max_elapsed_ms = 2000

"#,
    );
    toml += &secret_client("basic", "client_secret_basic", "");
    toml += &secret_client("post", "client_secret_post", "");
    toml += &secret_client("jwt", "client_secret_jwt", "");
    toml += &key_client("es256", "ES256", "");
    toml += &key_client("rs256", "RS256", "");
    toml += &format!(
        "[clients.mtls]\nissuer = \"{issuer}\"\nclient_id = \"{}\"\nauth = \"tls_client_auth\"\n\
         client_cert = \"client.pem\"\nclient_key = {{ file = \"client-key.pem\" }}\n\n",
        id("mtls")
    );
    toml += &key_client("dpop", "ES256", "dpop = true\n");
    toml += &secret_client("exchange", "client_secret_basic", "");
    toml += &secret_client("refresh", "client_secret_basic", "");
    // On behalf of the caller, with the proxy's own workload identity as the actor.
    toml += &format!(
        "[[route]]\nname = \"actor\"\nhost = \"localhost\"\nport = {port}\n\
         path_prefix = \"/actor\"\nclient = \"exchange\"\nscopes = [\"{scope}\"]\n\
         resource = \"{resource}\"\ngrant = \"token_exchange\"\nsubject_token = \"inbound\"\n\
         subject_token_type = \"jwt\"\nactor_token = {{ file = \"actor.jwt\" }}\n\
         actor_token_type = \"jwt\"\n\n"
    );
    for name in ROUTES {
        let extra = match *name {
            "mtls" => "mtls_bound = true\n".to_string(),
            "exchange" => format!(
                "grant = \"token_exchange\"\nsubject_token = \"inbound\"\n\
                 subject_token_type = \"{}\"\n",
                ready["subject_token_type"].as_str().unwrap()
            ),
            "refresh" => format!(
                "grant = \"refresh_token\"\nrefresh_token = {{ file = \"{}\" }}\n",
                path("refresh", "refresh_token_file")
            ),
            _ => String::new(),
        };
        toml += &format!(
            "[[route]]\nname = \"{name}\"\nhost = \"localhost\"\nport = {port}\n\
             path_prefix = \"/{name}\"\nclient = \"{name}\"\nscopes = [\"{scope}\"]\n\
             resource = \"{resource}\"\n{extra}\n"
        );
    }
    toml
}
