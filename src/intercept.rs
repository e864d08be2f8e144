//! Interception: after `CONNECT host:port` for a routed host, terminate the caller's TLS with
//! a leaf minted for that host, and serve the decrypted HTTP/1.1 or HTTP/2 requests.
//!
//! Host binding: the tunnel was opened for one host, and every authority a request carries
//! must name it: the TLS SNI, the request-target's authority (absolute form, or HTTP/2
//! `:authority`) and the `Host` header (HTTP/2 `host` field). One that names another host
//! gets `421 Misdirected Request`, more than one `Host` gets `400`; such a request is never
//! injected and never sent anywhere. What goes upstream carries one authority, the target's
//! (`forward::prepare`).
//!
//! Limits: the TLS handshake, ClientHello included, must end within
//! `limits.handshake_timeout_secs`; each HTTP/1.1 request head (and the wait for the next
//! one) within `header_timeout_secs`; a connection with no request in flight for
//! `idle_timeout_secs` is shut down gracefully; HTTP/2 allows `h2_max_concurrent_streams`
//! streams, and hyper's h2 defaults bound rapid resets (pending-accept and local-error
//! reset limits).

/// The CA moved to [`crate::ca`] (a leaf the assembled [`Proxy`] holds); this path stays for
/// callers outside the request path (the binary, tests, benches, the demo).
pub use crate::ca;

use std::convert::Infallible;
use std::sync::Arc;

use http::{Request, Response, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::LazyConfigAcceptor;

use crate::body::Body;
use crate::caller::Identity;
use crate::drain::Drain;
use crate::error::{self, ProxyError};
use crate::forward::{forward, single_host, Target};
use crate::host::normalize_host;
use crate::proxy::{Proxy, SharedProxy};

/// Serves an intercepted tunnel until the caller closes it: `io` is the caller's side, a
/// `CONNECT` tunnel or a redirected connection (transparent mode) whose ClientHello is
/// replayed. `caller` is who opened it (its identity holds for every request inside), from
/// `peer` (named in each request's access line).
pub async fn serve<I>(
    shared: SharedProxy,
    io: I,
    target: Target,
    caller: Identity,
    peer: std::net::SocketAddr,
    drain: Drain,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let proxy = shared.load_full();
    let limits = proxy.config.limits.clone();
    let handshake = handshake(&proxy, io, &target);
    let (tls, sni_mismatch) = match tokio::time::timeout(limits.handshake_timeout, handshake).await
    {
        Ok(Some(done)) => done,
        Ok(None) => return,
        Err(_) => {
            crate::metrics::connection_closed("handshake_timeout");
            tracing::debug!(host = %target.authority, "TLS handshake with caller timed out");
            return;
        }
    };
    let target = Arc::new(target);
    let caller = Arc::new(caller);
    let sni_mismatch = Arc::new(sni_mismatch);
    drop(proxy);
    let in_flight = crate::idle::InFlight::new();
    let requests = in_flight.clone();
    let service = service_fn(move |mut req: Request<Incoming>| {
        req.extensions_mut().insert(crate::access::Peer(peer));
        // Each request sees the configuration in force when it arrives.
        let proxy = shared.load_full();
        let target = target.clone();
        let caller = caller.clone();
        let sni_mismatch = sni_mismatch.clone();
        let busy = requests.begin();
        async move {
            let response = request(proxy, req, &target, &caller, sni_mismatch.as_deref()).await;
            // In flight until its body has been sent (a long download is not idle).
            let response = response.map(|body| {
                body.map_frame(move |frame| {
                    let _busy = &busy;
                    frame
                })
                .boxed_unsync()
            });
            Ok::<_, Infallible>(response)
        }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.h2_max_concurrent_streams);
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls), service);
    let idle = async {
        in_flight.idle_for(limits.idle_timeout).await;
        crate::metrics::connection_closed("idle_timeout");
        tracing::debug!("intercepted connection idle: closing");
    };
    if let Err(err) = drain.serve_until(conn, idle).await {
        if crate::idle::header_timed_out(&*err) {
            crate::metrics::connection_closed("header_timeout");
            tracing::debug!("intercepted connection closed: header_timeout_secs passed");
        } else {
            tracing::debug!(error = %err, "intercepted connection ended");
        }
    }
}

/// The caller's TLS, terminated with a leaf for the tunnel's host, and the SNI when it
/// names another host; `None` (logged) when there is no handshake.
async fn handshake<I>(
    proxy: &Proxy,
    io: I,
    target: &Target,
) -> Option<(tokio_rustls::server::TlsStream<I>, Option<String>)>
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let acceptor = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), io);
    let start = match acceptor.await {
        Ok(start) => start,
        Err(err) => {
            tracing::debug!(host = %target.authority, error = %err, "no TLS ClientHello in tunnel");
            return None;
        }
    };
    let sni = start
        .client_hello()
        .server_name()
        .map(|s| normalize_host(s).into_owned());
    let sni_mismatch = sni.filter(|s| *s != target.host);
    let config = match proxy.ca.server_config(&target.host) {
        Ok(config) => config,
        Err(err) => {
            tracing::error!(host = %target.host, error = %err, "cannot mint a certificate");
            return None;
        }
    };
    match start.into_stream(config).await {
        Ok(tls) => Some((tls, sni_mismatch)),
        Err(err) => {
            tracing::debug!(host = %target.authority, error = %err, "TLS handshake with caller failed");
            None
        }
    }
}

async fn request(
    proxy: Arc<Proxy>,
    req: Request<Incoming>,
    target: &Target,
    caller: &Identity,
    sni_mismatch: Option<&str>,
) -> Response<Body> {
    if let Some(sni) = sni_mismatch {
        return refuse(misdirected(target, "TLS SNI", sni));
    }
    if let Err(err) = bound_to(&req, target) {
        return refuse(err);
    }
    let route = proxy
        .routes
        .find(&target.host, target.port, req.uri().path())
        .cloned();
    forward(&proxy, req, target, route, caller).await
}

/// Checks that every authority `req` carries names the tunnel's host: the request-target's
/// (absolute form; `:authority` in HTTP/2) and the `Host` header (at most one).
pub(crate) fn bound_to(req: &Request<Incoming>, target: &Target) -> Result<(), ProxyError> {
    let host = single_host(req.headers())?;
    if let Some(authority) = req.uri().authority() {
        let what = if req.version() == Version::HTTP_2 {
            ":authority"
        } else {
            "request-target"
        };
        if !names_target(authority.as_str(), target) {
            return Err(misdirected(target, what, authority.as_str()));
        }
    }
    if let Some(host) = host {
        let host = String::from_utf8_lossy(host.as_bytes());
        if !names_target(&host, target) {
            return Err(misdirected(target, "Host", &host));
        }
    }
    Ok(())
}

/// Whether a `Host` value names the tunnel's host (a missing port means the tunnel's).
fn names_target(named: &str, target: &Target) -> bool {
    let Ok(authority) = named.parse::<http::uri::Authority>() else {
        return false;
    };
    normalize_host(authority.host()) == target.host
        && authority.port_u16().is_none_or(|p| p == target.port)
}

fn misdirected(target: &Target, what: &'static str, got: &str) -> ProxyError {
    ProxyError::Misdirected {
        expected: target.authority.to_string(),
        what,
        got: got.chars().filter(|c| !c.is_control()).take(256).collect(),
    }
}

fn refuse(err: ProxyError) -> Response<Body> {
    tracing::warn!(error = %err, "refused a request in an intercepted tunnel");
    error::response(&err)
}
