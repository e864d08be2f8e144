//! `oauth-egress demo`: the proxy on the shipped routes.toml, with the development
//! authorization server and echo API the file points at, a self-check request through the
//! proxy, and the curl command that shows the same thing by hand.
//!
//! A module of the binary, compiled with the `demo` feature only: the servers come from the
//! `oauth-egress-devserver` crate, and the library knows nothing of them.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use oauth_egress::config::{self, Config, ConfigError};
use oauth_egress::intercept::ca::CertificateAuthority;
use oauth_egress::secret::SecretSource;
use oauth_egress_devserver::{AuthServer, DevClient, EchoApi, TestPki};
use rand::RngCore;
use tokio::net::TcpListener;

/// The shipped routes.toml, which the demo runs on unless given another file.
const EXAMPLE: &str = include_str!("../routes.toml");

/// The client and route names the demo looks for in the config.
const DEMO_CLIENT: &str = "demo";

/// Why the demo could not run. Each message says what to change.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The config has no demo client or route, or they do not point at loopback.
    #[error("{0}")]
    Config(String),
    /// A demo server or the proxy could not start.
    #[error("{0}")]
    Start(String),
    /// The self-check request through the proxy failed.
    #[error("self-check through the proxy failed: {0}")]
    SelfCheck(String),
}

/// The shipped example (compiled in), with environment overrides; relative paths are
/// relative to the working directory.
pub fn example() -> Result<Config, ConfigError> {
    config::from_toml(EXAMPLE, Path::new("."), "embedded routes.toml")
}

/// Runs the demo; with `once`, makes the self-check request and returns, else serves until
/// `shutdown` resolves.
pub async fn run(
    mut config: Config,
    once: bool,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), DemoError> {
    let plan = Plan::from_config(&config)?;
    let secret = std::env::var("DEMO_CLIENT_SECRET").unwrap_or_else(|_| {
        let mut bytes = [0u8; 18];
        rand::rng().fill_bytes(&mut bytes);
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    });
    let secret_file = SecretFile::write(&secret)?;
    if let Some(demo_client) = config.clients.get_mut(DEMO_CLIENT) {
        Arc::make_mut(demo_client).client_secret = Some(SecretSource::File(secret_file.path()));
    }
    let servers = Servers::start(&plan, secret).await?;

    let (ca, _) = CertificateAuthority::load_or_create(&config.proxy.ca_cert, &config.proxy.ca_key)
        .map_err(|e| DemoError::Start(format!("interception CA: {e}")))?;
    let ca_path = config
        .proxy
        .ca_cert
        .path()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let ca = Arc::new(ca);
    let running = oauth_egress::server::start(config, ca.clone(), &[servers.pki.ca_cert_der()])
        .await
        .map_err(|e| DemoError::Start(e.to_string()))?;

    let proxy_url = format!("http://{}", running.proxy_addr);
    let check = show(&plan, &servers, &proxy_url, &ca_path, ca.cert_pem()).await;
    if once {
        running.stop().await;
        return check.map(|_| ()).map_err(DemoError::SelfCheck);
    }
    println!();
    println!("Press Ctrl-C to stop.");
    shutdown.await;
    running.stop().await;
    Ok(())
}

/// What the demo serves, read from the config's demo client and route.
struct Plan {
    client_id: String,
    /// The authorization server's port (from the client's `token_endpoint`).
    as_port: u16,
    api_host: String,
    api_port: u16,
    audience: Option<String>,
    scope: Option<String>,
}

impl Plan {
    /// Finds the demo client and route; both must point at loopback, on explicit ports.
    fn from_config(config: &Config) -> Result<Plan, DemoError> {
        let client = config.clients.get(DEMO_CLIENT).ok_or_else(|| {
            DemoError::Config(format!(
                "{}: the demo needs a [clients.{DEMO_CLIENT}] table",
                config.origin
            ))
        })?;
        let route = config
            .routes
            .iter()
            .find(|r| r.client.as_deref() == Some(DEMO_CLIENT))
            .ok_or_else(|| {
                DemoError::Config(format!(
                    "{}: the demo needs a [[route]] with client = \"{DEMO_CLIENT}\"",
                    config.origin
                ))
            })?;
        let config::Endpoint::Fixed(token_endpoint) = &client.endpoint else {
            return Err(DemoError::Config(
                "clients.demo needs a token_endpoint (not an issuer)".into(),
            ));
        };
        let as_port = token_endpoint
            .port_or_known_default()
            .ok_or_else(|| DemoError::Config("clients.demo.token_endpoint has no port".into()))?;
        let api_port = route.port.ok_or_else(|| {
            DemoError::Config(format!("route {}: the demo route needs a port", route.name))
        })?;
        let api_host = route.host.to_string();
        for host in [token_endpoint.host_str().unwrap_or(""), api_host.as_str()] {
            if host != "localhost" && host != "127.0.0.1" {
                return Err(DemoError::Config(format!(
                    "the demo serves its authorization server and API on loopback; {host:?} must be localhost or 127.0.0.1"
                )));
            }
        }
        Ok(Plan {
            client_id: client.client_id.clone(),
            as_port,
            api_host,
            api_port,
            audience: (route.audience.first().or(route.resource.first())).cloned(),
            scope: route.scopes.first().cloned(),
        })
    }
}

/// The demo client's secret in a file only this user can read (created exclusively, mode
/// 0600, under a random name in the temporary directory), for the proxy to read as it would a
/// mounted secret; removed on drop.
struct SecretFile(tempfile::NamedTempFile);

impl SecretFile {
    fn write(secret: &str) -> Result<SecretFile, DemoError> {
        let failed = |e: std::io::Error| {
            DemoError::Start(format!(
                "cannot write the demo client secret to a temporary file: {e}"
            ))
        };
        let mut file = tempfile::Builder::new()
            .prefix("oauth-egress-demo-secret-")
            .tempfile()
            .map_err(failed)?;
        std::io::Write::write_all(&mut file, secret.as_bytes()).map_err(failed)?;
        Ok(SecretFile(file))
    }

    fn path(&self) -> std::path::PathBuf {
        self.0.path().to_path_buf()
    }
}

/// The development servers, on the ports the config names; they stop when dropped.
struct Servers {
    pki: TestPki,
    auth: AuthServer,
    api: EchoApi,
}

impl Servers {
    async fn start(plan: &Plan, secret: String) -> Result<Servers, DemoError> {
        let start = |e: Box<dyn std::error::Error + Send + Sync>| DemoError::Start(e.to_string());
        let pki = TestPki::new("oauth-egress demo upstream CA").map_err(|e| start(e.into()))?;
        let tls = pki
            .server_config(&["localhost", "127.0.0.1"])
            .map_err(start)?;
        let client = DevClient {
            id: plan.client_id.clone(),
            secret,
            allowed_scopes: None,
        };
        let listener = bind(plan.as_port, "authorization server").await?;
        let auth = AuthServer::start(listener, tls.clone(), "localhost", vec![client])
            .await
            .map_err(start)?;
        let api = EchoApi::start(
            bind(plan.api_port, "echo API").await?,
            Some(tls),
            Some(auth.verifier()),
            plan.audience.clone(),
            plan.scope.clone(),
        )
        .await
        .map_err(start)?;
        Ok(Servers { pki, auth, api })
    }
}

/// A loopback listener on `port` for the demo's `what`.
async fn bind(port: u16, what: &str) -> Result<TcpListener, DemoError> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    TcpListener::bind(addr).await.map_err(|e| {
        DemoError::Start(format!(
            "cannot listen on {addr} for the demo {what}: {e} (change the port in routes.toml)"
        ))
    })
}

/// Prints what runs where, makes the self-check request and prints its answer, and the curl
/// command that does the same by hand. Returns the self-check's result.
async fn show(
    plan: &Plan,
    servers: &Servers,
    proxy_url: &str,
    ca_path: &Path,
    ca_pem: &str,
) -> Result<String, String> {
    let api_host = &plan.api_host;
    let url = format!("https://{api_host}:{}/hello", plan.api_port);
    println!("oauth-egress demo");
    println!("  authorization server  {}", servers.auth.token_endpoint());
    println!(
        "  echo API (verifies)   https://{api_host}:{}",
        servers.api.addr.port()
    );
    println!(
        "  proxy                 {proxy_url}   (CA: {})",
        ca_path.display()
    );
    println!();
    let check = self_check(proxy_url, ca_pem, &url).await;
    match &check {
        Ok(body) => {
            println!("Self-check: GET {url} through the proxy, no token sent by the caller:");
            println!("  {body}");
        }
        Err(err) => println!("Self-check failed: {err}"),
    }
    println!();
    println!(
        "Try it yourself (the caller sends no token; the API answers with the claims it verified):"
    );
    println!("  curl -x {proxy_url} --cacert {} {url}", ca_path.display());
    check
}

/// GETs `url` through the proxy, trusting its CA; the body, or why not.
async fn self_check(proxy_url: &str, ca_pem: &str, url: &str) -> Result<String, String> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots
            .add(cert.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    let tls = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let client = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .proxy(reqwest::Proxy::all(proxy_url).map_err(|e| e.to_string())?)
        .build()
        .map_err(|e| e.to_string())?;
    let response = client
        .get(url)
        .send()
        .await
        .map_err(|e| format!("{:#}", anyhow::Error::new(e)))?;
    let status = response.status();
    let body = response.text().await.map_err(|e| e.to_string())?;
    if status.is_success() {
        Ok(body)
    } else {
        Err(format!("HTTP {status}: {body}"))
    }
}
