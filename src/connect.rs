//! The proxy's own HTTP/1.1 front door: `CONNECT host:port` (intercept when a route covers
//! the host, else tunnel or deny by policy) and absolute-form `http://` requests.

use std::sync::Arc;

use http::uri::Scheme;
use http::{Method, Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::body::{self, Body};
use crate::config::Unmatched;
use crate::error::{self, ProxyError};
use crate::forward::{forward, Target};
use crate::listener::Drain;
use crate::proxy::{Proxy, SharedProxy};

/// Answers one request received on the proxy port.
pub async fn handle(shared: SharedProxy, req: Request<Incoming>, drain: Drain) -> Response<Body> {
    let proxy = shared.load_full();
    if req.method() == Method::CONNECT {
        return match connect(proxy, shared, req, drain).await {
            Ok(response) => response,
            Err(err) => {
                tracing::info!(error = %err, "CONNECT refused");
                error::response(&err)
            }
        };
    }
    match absolute_form(&proxy, req).await {
        Ok(response) => response,
        Err(err) => error::response(&err),
    }
}

async fn connect(
    proxy: Arc<Proxy>,
    shared: SharedProxy,
    req: Request<Incoming>,
    drain: Drain,
) -> Result<Response<Body>, ProxyError> {
    let authority = req
        .uri()
        .authority()
        .ok_or_else(|| ProxyError::BadRequest("CONNECT needs host:port".into()))?;
    let port = authority.port_u16().ok_or_else(|| {
        ProxyError::BadRequest(format!("CONNECT {authority}: a port is required"))
    })?;
    let target = Target::new(Scheme::HTTPS, authority.host(), port)?;

    if proxy.routes.intercepts(&target.host, port) {
        crate::metrics::connect("intercept");
        let on_upgrade = hyper::upgrade::on(req);
        tokio::spawn(async move {
            match on_upgrade.await {
                Ok(upgraded) => crate::intercept::serve(shared, upgraded, target, drain).await,
                Err(err) => tracing::debug!(error = %err, "CONNECT upgrade failed"),
            }
        });
        return Ok(Response::new(body::empty()));
    }

    match proxy.config.proxy.unmatched {
        Unmatched::Deny => {
            crate::metrics::connect("deny");
            Err(ProxyError::Denied {
                host: format!("{}:{port}", target.host),
            })
        }
        Unmatched::Tunnel => {
            crate::metrics::connect("tunnel");
            let addr = (target.host.as_str(), port);
            let upstream =
                tokio::time::timeout(proxy.config.proxy.connect_timeout, TcpStream::connect(addr))
                    .await
                    .map_err(|_| ProxyError::ConnectTimeout {
                        authority: target.authority.to_string(),
                        after_ms: proxy.config.proxy.connect_timeout.as_millis(),
                    })?
                    .map_err(|e| ProxyError::Upstream {
                        authority: target.authority.to_string(),
                        detail: e.to_string(),
                    })?;
            let _ = upstream.set_nodelay(true);
            let on_upgrade = hyper::upgrade::on(req);
            tokio::spawn(async move {
                let _drain = drain;
                let Ok(upgraded) = on_upgrade.await else {
                    return;
                };
                let mut client = TokioIo::new(upgraded);
                let mut upstream = upstream;
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            });
            tracing::info!(target: "access", host = %target.authority, "tunnelled");
            Ok(Response::new(body::empty()))
        }
    }
}

async fn absolute_form(
    proxy: &Proxy,
    req: Request<Incoming>,
) -> Result<Response<Body>, ProxyError> {
    let uri = req.uri();
    let (Some(scheme), Some(authority)) = (uri.scheme(), uri.authority()) else {
        return Err(ProxyError::BadRequest(
            "this is a forward proxy: send absolute-form requests (http://host/path) or CONNECT"
                .into(),
        ));
    };
    let explicit_port = authority.port_u16();
    let (secure, default_port) = match scheme.as_str() {
        "http" => (false, 80),
        "https" => (true, 443),
        other => {
            return Err(ProxyError::BadRequest(format!(
                "unsupported scheme {other:?}"
            )))
        }
    };
    let port = explicit_port.unwrap_or(default_port);
    let host = crate::route::normalize_host(authority.host()).into_owned();
    let route = proxy.routes.find(&host, port, uri.path()).cloned();
    let target = match (&route, secure) {
        (_, true) | (None, false) => Target::new(scheme.clone(), &host, port)?,
        (Some(route), false) if route.spec.upgrade_tls => {
            let port = if explicit_port.is_none_or(|p| p == 80) {
                443
            } else {
                port
            };
            Target::new(Scheme::HTTPS, &host, port)?
        }
        (Some(route), false) if route.spec.allow_plaintext => {
            Target::new(Scheme::HTTP, &host, port)?
        }
        (Some(route), false) => {
            return Err(ProxyError::PlaintextRefused {
                route: route.spec.name.clone(),
            })
        }
    };
    Ok(forward(proxy, req, &target, route, true).await)
}
