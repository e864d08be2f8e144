//! The proxy's own HTTP/1.1 front door: `CONNECT host:port` and absolute-form `http://` and
//! `https://` requests. Whichever way a destination is named, one rule ([`admit`]) decides
//! what happens to it: a routed destination is intercepted or forwarded with its route's
//! token; any other is tunnelled or forwarded untouched, or denied, by `proxy.unmatched`.

use std::net::SocketAddr;
use std::sync::Arc;

use http::uri::Scheme;
use http::{Method, Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::body::{self, Body};
use crate::caller::Identity;
use crate::config::{ProxySettings, Unmatched};
use crate::destination::{judge, Mode, Refused, ResolveError, Rule};
use crate::drain::Drain;
use crate::error::{self, ProxyError};
use crate::forward::{forward, Target};
use crate::idle::Spliced;
use crate::proxy::{Proxy, SharedProxy};
use crate::route::RouteTable;

/// How a destination was named to the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// `CONNECT host:port`.
    Connect,
    /// An absolute-form request, `http://` or `https://`.
    Absolute,
}

/// What the proxy does with a destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// A routed CONNECT: terminate TLS and serve the requests inside.
    Intercept,
    /// An absolute-form request: send it on (with the route's token when a route matches).
    Forward,
    /// An unrouted CONNECT: splice the bytes untouched.
    Tunnel,
    /// An unrouted destination under `unmatched = "deny"`: 403.
    Deny,
    /// An unrouted destination not on the `unmatched = { tunnel = [...] }` list: 403, or
    /// (in report mode) let through as the unlisted host it is.
    NotListed,
}

/// The one rule for every entry point: a destination is routed when any route covers its
/// host and port (whatever the path), and `unmatched` decides for every other, so the policy
/// cannot be bypassed by naming the destination another way.
pub fn admit(
    routes: &RouteTable,
    host: &str,
    port: u16,
    form: Form,
    unmatched: &Unmatched,
) -> Admission {
    let routed = routes.intercepts(host, port);
    match (routed, unmatched, form) {
        (true, _, Form::Connect) => Admission::Intercept,
        (true, _, Form::Absolute) => Admission::Forward,
        (false, Unmatched::Deny, _) => Admission::Deny,
        (false, list, _) if !list.lets_through(host) => Admission::NotListed,
        (false, _, Form::Connect) => Admission::Tunnel,
        (false, _, Form::Absolute) => Admission::Forward,
    }
}

/// The destination rules for an unrouted `host:port` before anything is resolved: the
/// unmatched list (when `listed` is false) and the port (`proxy.connect_ports` for
/// `CONNECT` and `https://`, `proxy.http_ports` for `http://`), under `proxy.policy_mode`.
pub(crate) fn unrouted(
    settings: &ProxySettings,
    host: &str,
    port: u16,
    plain_http: bool,
    listed: bool,
) -> Result<(), ProxyError> {
    let refuse = |what: String, rule| Err(Refused { what, rule });
    let (ports, rule) = if plain_http {
        (&settings.http_ports, Rule::HttpPorts)
    } else {
        (&settings.connect_ports, Rule::ConnectPorts)
    };
    let mode = settings.policy_mode;
    if !listed {
        judge(mode, refuse(host.to_string(), Rule::NotListed))?;
    }
    if !ports.contains(port) {
        judge(mode, refuse(format!("{host}:{port}: port {port}"), rule))?;
    }
    // A numeric host is judged here, before TLS sees it (rustls refuses `127.1` as a name);
    // in report mode the dial judges (and counts) it once instead.
    if let (Some(ip), Mode::Enforce) = (crate::destination::literal(host), mode) {
        let addresses = &settings.addresses;
        addresses.judge(addresses.check(std::net::SocketAddr::new(ip, port)))?;
    }
    Ok(())
}

/// Resolves an unrouted tunnel's host once and connects to the first address the policy
/// allows (trying the next on failure); a refused address is never dialled.
async fn dial(settings: &ProxySettings, target: &Target) -> Result<TcpStream, ProxyError> {
    let (host, port) = (target.host.as_str(), target.port);
    let addrs = crate::destination::resolve(host, port, Some(&settings.addresses))
        .await
        .map_err(|err| match err {
            ResolveError::Refused(refused) => ProxyError::DestinationRefused(refused),
            ResolveError::Lookup(e) => ProxyError::Upstream {
                authority: target.authority.to_string(),
                detail: format!("cannot resolve: {e}"),
            },
        })?;
    let mut last = ProxyError::Upstream {
        authority: target.authority.to_string(),
        detail: "the name resolved to no address".into(),
    };
    for addr in addrs {
        match tokio::time::timeout(settings.connect_timeout, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => return Ok(stream),
            Ok(Err(e)) => {
                last = ProxyError::Upstream {
                    authority: target.authority.to_string(),
                    detail: format!("{addr}: {e}"),
                }
            }
            Err(_) => {
                last = ProxyError::ConnectTimeout {
                    authority: target.authority.to_string(),
                    after_ms: settings.connect_timeout.as_millis(),
                }
            }
        }
    }
    Err(last)
}

/// Answers one request received on the proxy port from `peer`: who is calling first
/// (`caller.rs`; a CONNECT's caller holds for its whole tunnel), then where it may go.
pub async fn handle(
    shared: SharedProxy,
    req: Request<Incoming>,
    peer: SocketAddr,
    drain: Drain,
) -> Response<Body> {
    let proxy = shared.load_full();
    let caller = proxy.callers.identify(peer.ip(), req.headers());
    if let Err(err) = proxy.callers.admit(&caller, peer.ip()) {
        tracing::info!(target: "access", caller = caller.label(), %peer, error = %err, "caller refused");
        let response = error::response(&err);
        crate::metrics::caller(caller.label(), response.status().as_u16());
        return response;
    }
    if req.method() == Method::CONNECT {
        return match connect(proxy, shared, req, caller.clone(), peer, drain).await {
            Ok(response) => response,
            Err(err) => {
                tracing::info!(caller = caller.label(), error = %err, "CONNECT refused");
                let response = error::response(&err);
                crate::metrics::caller(caller.label(), response.status().as_u16());
                response
            }
        };
    }
    let mut req = req;
    req.extensions_mut().insert(crate::access::Peer(peer));
    match absolute_form(&proxy, req, &caller).await {
        Ok(response) => response,
        Err(err) => {
            let response = error::response(&err);
            crate::metrics::caller(caller.label(), response.status().as_u16());
            response
        }
    }
}

async fn connect(
    proxy: Arc<Proxy>,
    shared: SharedProxy,
    req: Request<Incoming>,
    caller: Identity,
    peer: SocketAddr,
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

    let settings = &proxy.config.proxy;
    let unmatched = &settings.unmatched;
    let admission = admit(&proxy.routes, &target.host, port, Form::Connect, unmatched);
    match admission {
        Admission::Intercept => {
            crate::metrics::connect("intercept");
            let on_upgrade = hyper::upgrade::on(req);
            tokio::spawn(async move {
                match on_upgrade.await {
                    Ok(upgraded) => {
                        crate::intercept::serve(
                            shared,
                            TokioIo::new(upgraded),
                            target,
                            caller,
                            peer,
                            drain,
                        )
                        .await
                    }
                    Err(err) => tracing::debug!(error = %err, "CONNECT upgrade failed"),
                }
            });
            Ok(Response::new(body::empty()))
        }
        Admission::Deny | Admission::Forward => {
            crate::metrics::connect("deny");
            Err(denied(&target))
        }
        Admission::Tunnel | Admission::NotListed => {
            let listed = admission == Admission::Tunnel;
            let upstream = match unrouted(settings, &target.host, port, false, listed) {
                Ok(()) => dial(settings, &target).await,
                Err(err) => Err(err),
            };
            let refused = matches!(upstream, Err(ProxyError::DestinationRefused(_)));
            crate::metrics::connect(if refused { "deny" } else { "tunnel" });
            let upstream = upstream?;
            let _ = upstream.set_nodelay(true);
            let on_upgrade = hyper::upgrade::on(req);
            let idle = proxy.config.limits.tunnel_idle_timeout;
            tokio::spawn(async move {
                let _drain = drain;
                let Ok(upgraded) = on_upgrade.await else {
                    return;
                };
                let mut client = TokioIo::new(upgraded);
                let mut upstream = upstream;
                if crate::idle::splice(&mut client, &mut upstream, idle).await == Spliced::Idle {
                    crate::metrics::connection_closed("tunnel_idle_timeout");
                    tracing::debug!("tunnel idle: closed");
                }
            });
            tracing::info!(target: "access", caller = caller.label(), host = %target.authority, "tunnelled");
            crate::metrics::caller(caller.label(), 200);
            Ok(Response::new(body::empty()))
        }
    }
}

pub(crate) async fn absolute_form(
    proxy: &Proxy,
    req: Request<Incoming>,
    caller: &Identity,
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
    let host = crate::host::normalize_host(authority.host()).into_owned();
    let settings = &proxy.config.proxy;
    let admission = admit(
        &proxy.routes,
        &host,
        port,
        Form::Absolute,
        &settings.unmatched,
    );
    let refused = match admission {
        Admission::Deny => Err(denied(&Target::new(scheme.clone(), &host, port)?)),
        Admission::NotListed => unrouted(settings, &host, port, !secure, false),
        _ if !proxy.routes.intercepts(&host, port) => {
            unrouted(settings, &host, port, !secure, true)
        }
        _ => Ok(()),
    };
    if let Err(err) = refused {
        tracing::info!(error = %err, "request refused");
        return Err(err);
    }
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
    Ok(forward(proxy, req, &target, route, caller).await)
}

pub(crate) fn denied(target: &Target) -> ProxyError {
    ProxyError::Denied {
        host: format!("{}:{}", target.host, target.port),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::CertificateAuthority;

    #[test]
    fn every_form_of_naming_a_destination_gets_the_same_policy() {
        let toml = r#"
[clients.c]
token_endpoint = "https://idp.example/token"
client_id = "c"
auth = "client_secret_basic"
client_secret = { env = "UNUSED" }

[[route]]
name = "api"
host = "api.example"
path_prefix = "/v1"
client = "c"
"#;
        let config = crate::config::from_toml(toml, std::path::Path::new("."), "t").unwrap();
        let ca = std::sync::Arc::new(CertificateAuthority::generate().unwrap());
        let proxy = Proxy::new(config, ca, &[]).unwrap();
        use Admission as A;
        use Form::{Absolute, Connect};
        use Unmatched as U;
        let cases = [
            ("api.example", Connect, U::Tunnel, A::Intercept),
            ("api.example", Connect, U::Deny, A::Intercept),
            ("api.example", Absolute, U::Tunnel, A::Forward),
            // A routed host is routed whatever the path (the route may not match it).
            ("api.example", Absolute, U::Deny, A::Forward),
            ("other.example", Connect, U::Tunnel, A::Tunnel),
            ("other.example", Connect, U::Deny, A::Deny),
            ("other.example", Absolute, U::Tunnel, A::Forward),
            ("other.example", Absolute, U::Deny, A::Deny),
        ];
        for (host, form, policy, want) in cases {
            let got = admit(&proxy.routes, host, 443, form, &policy);
            assert_eq!(got, want, "{host} {form:?} {policy:?}");
        }
        let only = U::Only(vec![
            crate::host::HostPattern::parse("*.github.com").unwrap()
        ]);
        let listed = [
            ("api.example", Connect, A::Intercept),
            ("api.example", Absolute, A::Forward),
            ("codeload.github.com", Connect, A::Tunnel),
            ("codeload.github.com", Absolute, A::Forward),
            ("github.com", Connect, A::NotListed),
            ("other.example", Absolute, A::NotListed),
        ];
        for (host, form, want) in listed {
            assert_eq!(
                admit(&proxy.routes, host, 443, form, &only),
                want,
                "{host} {form:?}"
            );
        }
    }
}
