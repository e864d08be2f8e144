//! Test harness: a development authorization server, an HTTPS echo API that verifies its
//! tokens, and the proxy in front, all on 127.0.0.1:0 over real sockets.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use oauth_egress::intercept::ca::CertificateAuthority;
use oauth_egress::proxy::Proxy;
use oauth_egress_devserver::auth_server::{AuthServer, DevClient};
use oauth_egress_devserver::echo_api::EchoApi;
use oauth_egress_devserver::pki::TestPki;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

pub const CLIENT_ID: &str = "test-client";
pub const CLIENT_SECRET: &str = "s3cret-never-shown";
pub const SCOPE: &str = "echo:read";

/// What to vary between tests.
pub struct Setup {
    /// `unmatched` policy.
    pub unmatched: &'static str,
    /// `auth` of the client.
    pub auth: &'static str,
    /// The secret the proxy presents (the server knows CLIENT_SECRET).
    pub secret: &'static str,
    /// Extra lines in the `[[route]]` for the echo API.
    pub route_extra: String,
    /// Lines in `[tokens]`.
    pub tokens: String,
    /// `retry_body_limit`.
    pub retry_body_limit: usize,
    /// Overrides the token endpoint URL.
    pub token_endpoint: Option<String>,
    /// How the routed API serves.
    pub api_tls: ApiTls,
    /// The routed host as written in the route (and used in `api_url`).
    pub route_host: &'static str,
    /// Replaces the body of `[clients.test]`; `{token_endpoint}` and `{issuer}` are filled in.
    pub client_toml: Option<String>,
    /// The routed API asks callers for a certificate from this CA (certificate-bound tokens).
    pub api_client_ca: Option<rustls::pki_types::CertificateDer<'static>>,
    /// The destination policy lines of `[proxy]`; by default loopback on any port is allowed
    /// (the tests' upstreams are on loopback, on random ports).
    pub proxy_policy: String,
    /// Lines in `[limits]`.
    pub limits: String,
}

/// How the routed API serves.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum ApiTls {
    /// HTTPS with a certificate the proxy trusts.
    Trusted,
    /// HTTPS with a certificate from a CA the proxy does not trust.
    Untrusted,
    /// Plain HTTP.
    Plain,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            unmatched: "tunnel",
            auth: "client_secret_basic",
            secret: CLIENT_SECRET,
            route_extra: format!("scopes = [\"{SCOPE}\"]"),
            tokens: String::new(),
            retry_body_limit: 1 << 20,
            token_endpoint: None,
            api_tls: ApiTls::Trusted,
            route_host: "localhost",
            client_toml: None,
            api_client_ca: None,
            proxy_policy: "allow_cidrs = [\"127.0.0.0/8\", \"::1/128\"]\n\
                           connect_ports = [\"1-65535\"]\nhttp_ports = [\"1-65535\"]"
                .into(),
            limits: String::new(),
        }
    }
}

pub struct Harness {
    pub route_host: &'static str,
    pub pki: TestPki,
    pub auth: AuthServer,
    /// The routed API (verifies tokens).
    pub api: EchoApi,
    /// An API with no route (no auth), reachable only by tunnel.
    pub open_api: EchoApi,
    pub proxy_addr: SocketAddr,
    pub ca: Arc<CertificateAuthority>,
    pub ca_dir: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    toml: String,
    secret: Option<&'static str>,
}

async fn spawn_proxy(
    toml: &str,
    secret: Option<&'static str>,
    base: &Path,
    ca: Arc<CertificateAuthority>,
    upstream_ca: rustls::pki_types::CertificateDer<'static>,
) -> (SocketAddr, oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    if let Some(secret) = secret {
        // The default client reads its secret from this file (`{ file = "client-secret" }`).
        std::fs::write(base.join("client-secret"), secret).unwrap();
    }
    let config = oauth_egress::config::from_toml(toml, base, "test config")
        .unwrap_or_else(|e| panic!("{e}\n{toml}"));
    let proxy = Proxy::new(config, ca, &[upstream_ca]).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(oauth_egress::listener::run(
        oauth_egress::proxy::shared(proxy),
        listener,
        async move {
            let _ = stopped.await;
        },
        std::time::Duration::from_secs(1),
    ));
    (proxy_addr, stop, task)
}

pub fn audience(api: &EchoApi) -> String {
    format!("https://localhost:{}", api.addr.port())
}

impl Harness {
    pub async fn start(setup: Setup) -> Harness {
        let pki = TestPki::new("test upstream CA").unwrap();
        let tls = pki.server_config(&["localhost", "127.0.0.1"]).unwrap();
        let auth = AuthServer::start(
            TcpListener::bind("127.0.0.1:0").await.unwrap(),
            tls.clone(),
            "localhost",
            vec![DevClient {
                id: CLIENT_ID.into(),
                secret: CLIENT_SECRET.into(),
                allowed_scopes: Some(vec![SCOPE.into(), "echo:write".into()]),
            }],
        )
        .await
        .unwrap();
        let api_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let aud = format!(
            "https://{}:{}",
            setup.route_host,
            api_listener.local_addr().unwrap().port()
        );
        let api_tls = match setup.api_tls {
            ApiTls::Trusted => match &setup.api_client_ca {
                Some(ca) => Some(
                    pki.server_config_client_auth(&["localhost", "127.0.0.1"], ca.clone())
                        .unwrap(),
                ),
                None => Some(tls.clone()),
            },
            ApiTls::Untrusted => Some(
                TestPki::new("a CA the proxy does not trust")
                    .unwrap()
                    .server_config(&["localhost", "127.0.0.1"])
                    .unwrap(),
            ),
            ApiTls::Plain => None,
        };
        let api = EchoApi::start(
            api_listener,
            api_tls,
            Some(auth.verifier()),
            Some(aud.clone()),
            Some(SCOPE.into()),
        )
        .await
        .unwrap();
        let open_api = EchoApi::start(
            TcpListener::bind("127.0.0.1:0").await.unwrap(),
            Some(tls),
            None,
            None,
            None,
        )
        .await
        .unwrap();

        let toml = format!(
            r#"
[proxy]
listen = "127.0.0.1:0"
unmatched = "{unmatched}"
{policy}
retry_body_limit = {limit}
connect_timeout_ms = 2000

[tokens]
{tokens}

[limits]
{limits}

[clients.test]
{client}

[[route]]
name = "echo"
host = "{route_host}"
port = {port}
client = "test"
audience = "{aud}"
{extra}
"#,
            unmatched = setup.unmatched,
            policy = setup.proxy_policy,
            limit = setup.retry_body_limit,
            tokens = setup.tokens,
            limits = setup.limits,
            client = match &setup.client_toml {
                Some(body) => body
                    .replace("{token_endpoint}", &auth.token_endpoint())
                    .replace("{issuer}", &auth.issuer()),
                None => format!(
                    "token_endpoint = \"{}\"\nclient_id = \"{CLIENT_ID}\"\nauth = \"{}\"\nclient_secret = {{ file = \"client-secret\" }}",
                    setup.token_endpoint.clone().unwrap_or_else(|| auth.token_endpoint()),
                    setup.auth
                ),
            },
            port = api.addr.port(),
            extra = setup.route_extra,
            route_host = setup.route_host,
        );
        let ca_dir = tempfile::tempdir().unwrap();
        let ca = Arc::new(CertificateAuthority::generate().unwrap());
        let secret = setup.client_toml.is_none().then_some(setup.secret);
        let (proxy_addr, stop, task) =
            spawn_proxy(&toml, secret, ca_dir.path(), ca.clone(), pki.ca_cert_der()).await;
        Harness {
            route_host: setup.route_host,
            pki,
            auth,
            api,
            open_api,
            proxy_addr,
            ca,
            ca_dir,
            stop: Some(stop),
            task: Some(task),
            toml,
            secret,
        }
    }

    /// Stops the proxy and starts a new one on the same config (the servers stay up).
    pub async fn restart_proxy(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        let (addr, stop, task) = spawn_proxy(
            &self.toml,
            self.secret,
            self.ca_dir.path(),
            self.ca.clone(),
            self.pki.ca_cert_der(),
        )
        .await;
        self.proxy_addr = addr;
        self.stop = Some(stop);
        self.task = Some(task);
    }

    /// The routed API's base URL.
    pub fn api_url(&self) -> String {
        format!("https://{}:{}", self.route_host, self.api.addr.port())
    }

    /// A reqwest client using the proxy and trusting only the proxy's CA.
    pub fn client(&self) -> reqwest::Client {
        self.client_trusting(self.ca.cert_pem())
    }

    /// A reqwest client using the proxy and trusting only `ca_pem`.
    pub fn client_trusting(&self, ca_pem: &str) -> reqwest::Client {
        reqwest::Client::builder()
            .use_preconfigured_tls(client_tls(ca_pem))
            .proxy(reqwest::Proxy::all(format!("http://{}", self.proxy_addr)).unwrap())
            .build()
            .unwrap()
    }

    /// Writes the proxy's CA to a file and returns its path.
    pub fn ca_file(&self) -> std::path::PathBuf {
        let path = self.ca_dir.path().join("proxy-ca.pem");
        std::fs::write(&path, self.ca.cert_pem()).unwrap();
        path
    }

    /// Stops the proxy and waits for it.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

/// A rustls client config trusting only the CA in `ca_pem`.
pub fn client_tls(ca_pem: &str) -> rustls::ClientConfig {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// Opens `CONNECT authority` on the proxy and returns the stream and the status line.
pub async fn connect_tunnel(proxy: SocketAddr, authority: &str) -> (TcpStream, String) {
    let mut stream = TcpStream::connect(proxy).await.unwrap();
    stream
        .write_all(format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let head = read_head(&mut stream).await;
    (stream, head)
}

/// Reads up to the end of an HTTP head (`\r\n\r\n`).
pub async fn read_head<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).await.unwrap() == 0 {
            break;
        }
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// Sends raw bytes to the proxy and reads the whole answer until it closes or 2 s pass.
pub async fn raw_exchange(proxy: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(proxy).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(2),
        stream.read_to_end(&mut out),
    )
    .await;
    String::from_utf8_lossy(&out).into_owned()
}

/// The `jti` of the token the echo API saw for a GET of `url` through `client`.
pub async fn jti_of(client: &reqwest::Client, url: String) -> String {
    let text = client.get(url).send().await.unwrap().text().await.unwrap();
    let echo: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    echo["jti"].as_str().unwrap().to_string()
}

/// PEM text for DER bytes (`CERTIFICATE`, `PRIVATE KEY`).
pub fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|l| std::str::from_utf8(l).unwrap())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

/// Writes a client certificate chain and key from `ca` for `name`; returns their paths.
pub fn client_identity(ca: &TestPki, name: &str, dir: &Path) -> (String, String) {
    let (chain, key) = ca.client_leaf(&[name]).unwrap();
    let cert_pem: String = chain
        .iter()
        .map(|c| pem("CERTIFICATE", c.as_ref()))
        .collect();
    let cert = dir.join(format!("{name}.pem"));
    let key_path = dir.join(format!("{name}.key"));
    std::fs::write(&cert, cert_pem).unwrap();
    std::fs::write(&key_path, pem("PRIVATE KEY", key.secret_der())).unwrap();
    (cert.display().to_string(), key_path.display().to_string())
}
