//! Development servers for oauth-egress: an OAuth 2.0 authorization server, a protected
//! echo API and a throwaway PKI, for `oauth-egress demo` and the tests.
//!
//! * [`pki::TestPki`]: a throwaway certificate authority for the servers below.
//! * [`auth_server::AuthServer`]: a development OAuth 2.0 authorization server
//!   (client credentials, refresh, token exchange and JWT bearer grants; secret,
//!   JWT assertion, mTLS and public clients; discovery) that issues real
//!   ES256-signed JWTs.
//! * [`WorkloadIssuer`]: a stand-in workload identity issuer whose
//!   tokens the server can be told to trust (for token exchange).
//! * [`echo_api::EchoApi`]: a protected API that verifies those tokens and echoes
//!   what it received.
//! * DPoP (`dpop.rs`): sender-constrained tokens. The server binds tokens to a DPoP key
//!   (RFC 9449, `cnf.jkt`) when the token request carries a proof, and to the
//!   client certificate (RFC 8705 §3, `cnf["x5t#S256"]`) on its mTLS alias; the
//!   echo API then demands the proof or the certificate, and both check proofs the same way.
//!
//! They are real (TLS, signatures, strict checks), observable (counters and records) and
//! steerable (failure injection: `fail_next`, `set_delay`, `revoke`, ...), and are never meant
//! to face untrusted networks. This crate does not depend on `oauth-egress`: it checks the
//! proxy's requests with code of its own, so a test passes only when the proxy does what the
//! RFCs say, not what the proxy thinks they say. The product pulls it in only through its
//! `demo` feature, so a build without it carries none of these servers or their test knobs.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod assertion;
mod auth_knobs;
pub mod auth_server;
mod client_auth;
mod clients;
mod discovery;
mod dpop;
mod dpop_state;
pub mod echo_api;
mod echo_dpop;
mod echo_upgrade;
mod grants;
mod mtls;
pub mod pki;
mod refresh;
mod token_endpoint;
mod tokens;
mod workload;

pub use auth_server::{AuthServer, Claims, DevClient, Failure, TokenVerifier};
pub use clients::{
    AssertionAudience, AuthMethod, ClientAuthSpec, ClientRegistration, JwtPublicKey,
};
pub use discovery::DiscoveryMode;
pub use dpop::jwk_thumbprint;
pub use echo_api::{EchoApi, Seen};
pub use pki::TestPki;
pub use workload::WorkloadIssuer;

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rustls::pki_types::CertificateDer;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;

/// The error type of the demo servers' fallible constructors.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Every response of the demo servers has a fully buffered body.
pub(crate) type HttpResponse = Response<Full<Bytes>>;

/// How long a client may take to complete the TLS handshake before we hang up.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The certificate chain the TLS peer presented (empty without one), added to the
/// extensions of every request on that connection.
#[derive(Clone, Default)]
pub(crate) struct PeerCertificates(pub(crate) Arc<Vec<CertificateDer<'static>>>);

/// Put into a response's extensions: the connection is dropped instead of answering.
#[derive(Clone, Copy, Debug)]
pub(crate) struct DropConnection;

/// Locks `mutex`, ignoring poisoning (the data stays usable for records).
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Aborts the server's accept loop (and with it every connection) when dropped.
pub(crate) struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs an accept loop on `listener`, serving each connection with `handler`.
///
/// With `tls`, connections speak HTTP/1.1 or h2 (auto-detected); without, HTTP/1.1.
/// Upgrades are enabled. Connection tasks live in a `JoinSet` owned by the loop, so
/// aborting the returned task closes every connection too. `accepted` counts TCP
/// connections.
pub(crate) fn spawn_server<H, F>(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    accepted: Arc<AtomicUsize>,
    handler: H,
) -> AbortOnDrop
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = HttpResponse> + Send + 'static,
{
    let acceptor = tls.map(TlsAcceptor::from);
    AbortOnDrop(tokio::spawn(async move {
        let mut connections = JoinSet::new();
        loop {
            while connections.try_join_next().is_some() {}
            match listener.accept().await {
                Ok((tcp, _peer)) => {
                    accepted.fetch_add(1, Ordering::SeqCst);
                    // Best effort: small request/response exchanges dominate here.
                    let _ = tcp.set_nodelay(true);
                    connections.spawn(serve_connection(tcp, acceptor.clone(), handler.clone()));
                }
                Err(err) => {
                    tracing::warn!(error = %err, "demo server: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }))
}

/// Serves one accepted TCP connection until the peer goes away.
async fn serve_connection<H, F>(tcp: TcpStream, acceptor: Option<TlsAcceptor>, handler: H)
where
    H: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = HttpResponse> + Send + 'static,
{
    let result = match acceptor {
        Some(acceptor) => {
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(err)) => {
                    tracing::debug!(error = %err, "demo server: TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!("demo server: TLS handshake timed out");
                    return;
                }
            };
            let chain = stream
                .get_ref()
                .1
                .peer_certificates()
                .map(|certs| certs.iter().map(|c| c.clone().into_owned()).collect())
                .unwrap_or_default();
            let service = make_service(handler, PeerCertificates(Arc::new(chain)));
            let builder = auto::Builder::new(TokioExecutor::new());
            builder
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .await
        }
        None => hyper::server::conn::http1::Builder::new()
            .serve_connection(
                TokioIo::new(tcp),
                make_service(handler, PeerCertificates::default()),
            )
            .with_upgrades()
            .await
            .map_err(BoxError::from),
    };
    if let Err(err) = result {
        tracing::debug!(error = %err, "demo server: connection ended with an error");
    }
}

/// Wraps `handler` as a hyper service that tags requests with `peer` and turns
/// responses marked [`DropConnection`] into a service error (hyper then closes the
/// connection without answering).
fn make_service<H, F>(
    handler: H,
    peer: PeerCertificates,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = HttpResponse,
    Error = BoxError,
    Future = impl Future<Output = Result<HttpResponse, BoxError>> + Send,
> + Clone
where
    H: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = HttpResponse> + Send + 'static,
{
    let handler = Arc::new(handler);
    service_fn(move |mut req: Request<Incoming>| {
        req.extensions_mut().insert(peer.clone());
        let response = handler(req);
        async move {
            let response = response.await;
            if response.extensions().get::<DropConnection>().is_some() {
                return Err(BoxError::from("connection dropped on purpose"));
            }
            Ok(response)
        }
    })
}

/// A response with `status`, a JSON body and `Cache-Control: no-store`.
pub(crate) fn json_response(status: StatusCode, body: &serde_json::Value) -> HttpResponse {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// A response with `status` and a plain-text body.
pub(crate) fn text_response(status: StatusCode, body: &'static str) -> HttpResponse {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Makes `text` safe inside a quoted header parameter (visible ASCII, no `"` or `\`).
pub(crate) fn header_safe(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '"' | '\\' => '\'',
            c if c == ' ' || c.is_ascii_graphic() => c,
            _ => '?',
        })
        .collect()
}
