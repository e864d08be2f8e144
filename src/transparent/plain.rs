//! The plain-http listener (`transparent.http_listen`): the first request's `Host` decides. A
//! routed host is served request by request as an absolute-form `http://` request to it
//! would be (same `upgrade_tls` / `allow_plaintext` rules), every later `Host` bound to it;
//! anything else goes to the original destination untouched, or is answered 403.

use std::convert::Infallible;
use std::sync::Arc;

use http::uri::Scheme;
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};

use super::hello::{self, Prefixed};
use crate::body::Body;
use crate::caller::Identity;
use crate::error::{self, ProxyError};
use crate::forward::Target;
use crate::host::normalize_host;
use crate::listener::Connection;
use crate::proxy::{Proxy, SharedProxy};

/// A connection on `transparent.http_listen`.
pub async fn http_connection(conn: Connection) {
    let proxy = conn.proxy.load_full();
    let Some(original) = super::destination(&proxy, &conn, "transparent.http_listen") else {
        return;
    };
    let Connection {
        proxy: shared,
        mut stream,
        peer,
        drain,
        limits,
    } = conn;
    let peek = hello::request_host(&mut stream);
    let (head, host) = match tokio::time::timeout(limits.header_timeout, peek).await {
        Ok(Ok(read)) => read,
        Ok(Err(err)) => {
            tracing::debug!(%peer, %original, error = %err, "transparent: no request head");
            return;
        }
        Err(_) => {
            crate::metrics::connection_closed("header_timeout");
            tracing::debug!(%peer, %original, "transparent: request head timed out");
            return;
        }
    };
    let named = host
        .and_then(|h| h.parse::<http::uri::Authority>().ok())
        .map(|a| normalize_host(a.host()).into_owned());
    let client = Prefixed::new(head, stream);
    let identity = match super::caller(&proxy, peer) {
        Ok(identity) => identity,
        Err(err) => {
            crate::metrics::caller(crate::config::UNIDENTIFIED, 403);
            tracing::info!(target: "access", %peer, %original, error = %err, "transparent: caller refused");
            return answer(client, err).await;
        }
    };
    let port = original.port();
    let serve = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .clone();
    match named {
        Some(host) if proxy.routes.intercepts(&host, port) => {
            let Ok(target) = Target::new(Scheme::HTTP, &host, port) else {
                return;
            };
            tracing::debug!(%peer, host = %target.authority, %original, "transparent: routed plain http");
            drop(proxy);
            let conn = serve
                .serve_connection(TokioIo::new(client), routed(shared, target, identity, peer))
                .with_upgrades();
            if let Err(err) = drain.serve(conn).await {
                crate::listener::ended(&err, peer);
            }
        }
        named => {
            let host = named.unwrap_or_else(|| original.ip().to_string());
            match super::pass(&proxy, &host, original, true).await {
                Ok(upstream) => {
                    let idle = proxy.config.limits.tunnel_idle_timeout;
                    drop(proxy);
                    super::splice(client, upstream, idle, drain).await;
                }
                Err(err) => {
                    tracing::info!(%peer, %original, error = %err, "transparent: refused");
                    answer(client, err).await;
                }
            }
        }
    }
}

/// The service for a routed host: each request bound to `target`, then sent on as the
/// absolute-form `http://` request it stands for.
fn routed(
    shared: SharedProxy,
    target: Target,
    identity: Identity,
    peer: std::net::SocketAddr,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<Body>,
    Error = Infallible,
    Future = impl Send,
> {
    let target = Arc::new(target);
    service_fn(move |mut req: Request<Incoming>| {
        req.extensions_mut().insert(crate::access::Peer(peer));
        let proxy = shared.load_full();
        let target = target.clone();
        let identity = identity.clone();
        async move { Ok::<_, Infallible>(request(&proxy, req, &target, &identity).await) }
    })
}

async fn request(
    proxy: &Proxy,
    mut req: Request<Incoming>,
    target: &Target,
    identity: &Identity,
) -> Response<Body> {
    if let Err(err) = crate::intercept::bound_to(&req, target) {
        tracing::warn!(error = %err, "transparent: refused a request for another host");
        return error::response(&err);
    }
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let Ok(uri) = format!("http://{}{path}", target.authority).parse::<Uri>() else {
        return error::response(&ProxyError::BadRequest(format!(
            "{}: the request target is not a valid path",
            target.authority
        )));
    };
    *req.uri_mut() = uri;
    match crate::connect::absolute_form(proxy, req, identity).await {
        Ok(response) => response,
        Err(err) => error::response(&err),
    }
}

/// Answers the request already read with `err`'s response, then closes.
async fn answer<S>(client: S, err: ProxyError)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let service = service_fn(move |_req: Request<Incoming>| {
        let response = error::response(&err);
        async move { Ok::<_, Infallible>(response) }
    });
    let _ = http1::Builder::new()
        .keep_alive(false)
        .serve_connection(TokioIo::new(client), service)
        .await;
}
