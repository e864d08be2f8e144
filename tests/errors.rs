//! Failures classified by their type, not their text: an upstream that does not accept a
//! connection in time is a 504 `connection_timeout`.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use oauth_egress::intercept::ca::CertificateAuthority;
use oauth_egress::proxy::Proxy;
use oauth_egress::secret::{SecretSource, SecretString};
use support::{Harness, Setup, CLIENT_ID, CLIENT_SECRET, SCOPE};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// A loopback listener that never accepts, with its backlog filled: further connections get
/// no answer to their SYN, so connecting to it times out.
async fn unresponsive() -> (std::net::SocketAddr, TcpListener, Vec<TcpStream>) {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = socket.local_addr().unwrap();
    let listener = socket.listen(0).unwrap();
    let mut held = Vec::new();
    // Fill the backlog: connect until one does not complete within 200 ms (at most 16).
    for _ in 0..16 {
        match tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => held.push(stream),
            _ => break,
        }
    }
    (addr, listener, held)
}

#[tokio::test]
async fn an_upstream_connect_timeout_is_a_504_connection_timeout() {
    let h = Harness::start(Setup::default()).await;
    let (blocked, _listener, _held) = unresponsive().await;
    let toml = format!(
        r#"
[proxy]
listen = "127.0.0.1:0"
connect_timeout_ms = 300

[clients.test]
token_endpoint = "{endpoint}"
client_id = "{CLIENT_ID}"
auth = "client_secret_basic"
client_secret = {{ env = "SET_IN_MEMORY" }}

[[route]]
name = "blocked"
host = "127.0.0.1"
port = {port}
client = "test"
scopes = ["{SCOPE}"]
"#,
        endpoint = h.auth.token_endpoint(),
        port = blocked.port(),
    );
    let dir = tempfile::tempdir().unwrap();
    let mut config = oauth_egress::config::from_toml(&toml, dir.path(), "test").unwrap();
    config.set_client_secret(
        "test",
        SecretSource::Inline(Arc::new(SecretString::from(CLIENT_SECRET))),
    );
    let ca = Arc::new(CertificateAuthority::generate().unwrap());
    let proxy = Proxy::new(config, ca.clone(), &[h.pki.ca_cert_der()]).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(oauth_egress::listener::run(
        oauth_egress::proxy::shared(proxy),
        listener,
        async move {
            let _ = stopped.await;
        },
        Duration::from_secs(1),
    ));
    let client = reqwest::Client::builder()
        .use_preconfigured_tls(support::client_tls(ca.cert_pem()))
        .proxy(reqwest::Proxy::all(format!("http://{proxy_addr}")).unwrap())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let started = Instant::now();
    let response = client
        .get(format!("https://127.0.0.1:{}/", blocked.port()))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let proxy_status = response.headers()["proxy-status"]
        .to_str()
        .unwrap()
        .to_string();
    let body = response.text().await.unwrap();
    assert_eq!(status, 504, "{proxy_status}: {body}");
    assert!(
        proxy_status.contains("error=connection_timeout"),
        "{proxy_status}"
    );
    assert!(body.contains("within 300 ms"), "{body}");
    assert!(started.elapsed() < Duration::from_secs(5));
    let _ = stop.send(());
    let _ = task.await;
}
