//! Transparent mode (`[transparent]`, Linux): connections that iptables `REDIRECT`ed to the
//! proxy, from services that ignore `HTTPS_PROXY`. Each one is accepted by the same loop as
//! the forward proxy's ([`crate::listener::serve_each`]: limits, drain, the caller's peer
//! address), then:
//!
//! 1. its original destination is read from the socket (`SO_ORIGINAL_DST`, or
//!    `IP6T_SO_ORIGINAL_DST`, through socket2's safe wrapper); one that is this proxy's own
//!    listener (a redirect loop, or a caller connecting to the listener directly) is closed;
//! 2. on the TLS listener, the ClientHello's SNI is read ([`hello`]); a routed SNI host, on
//!    the original destination's port, is intercepted exactly as a `CONNECT` to it would be
//!    ([`crate::intercept::serve`]: a leaf for that name, host binding, 421 for another
//!    `Host`/`:authority`);
//! 3. on the plain-http listener, the first request's `Host` is read; a routed host is
//!    served request by request as absolute-form `http://` requests are (`upgrade_tls`,
//!    `allow_plaintext`), every `Host` bound to the first one (421 otherwise);
//! 4. anything else (no SNI, an unrouted name, not TLS) follows `proxy.unmatched`: `deny`
//!    closes it (403 on the http listener); a tunnel goes to the **original destination
//!    address**, never to an address derived from the name, under the destination policy
//!    (`allow_cidrs`, ports, the unmatched list), with the bytes read so far replayed.
//!
//! The bytes read to decide are replayed to whatever serves the connection ([`hello::Prefixed`]).
//! Loops: the proxy's own outbound connections must not be redirected back to it; the rules
//! from `oauth-egress iptables` ([`rules`]) skip the proxy's uid.

pub mod hello;
mod plain;
pub mod rules;

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use http::uri::Scheme;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::caller::Identity;
use crate::config::Unmatched;
use crate::destination::{Refused, Rule};
use crate::drain::Drain;
use crate::error::ProxyError;
use crate::forward::Target;
use crate::host::normalize_host;
use crate::listener::Connection;
use crate::proxy::Proxy;
use hello::{Hello, Prefixed};

/// The original destination of a redirected connection, read from the socket: IPv4
/// (`SO_ORIGINAL_DST`) when the connection arrived over IPv4 (also as an IPv4-mapped
/// address), IPv6 (`IP6T_SO_ORIGINAL_DST`) otherwise.
pub fn original_destination(stream: &TcpStream) -> io::Result<SocketAddr> {
    let local = stream.local_addr()?;
    let v4 = match local {
        SocketAddr::V4(_) => true,
        SocketAddr::V6(a) => a.ip().to_ipv4_mapped().is_some(),
    };
    read_original(stream, v4)
}

#[cfg(target_os = "linux")]
fn read_original(stream: &TcpStream, v4: bool) -> io::Result<SocketAddr> {
    let socket = socket2::SockRef::from(stream);
    let addr = if v4 {
        socket.original_dst_v4()?
    } else {
        socket.original_dst_v6()?
    };
    addr.as_socket()
        .ok_or_else(|| io::Error::other("the original destination is not an IP address"))
}

#[cfg(not(target_os = "linux"))]
fn read_original(_stream: &TcpStream, _v4: bool) -> io::Result<SocketAddr> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "the original destination can only be read on Linux",
    ))
}

/// Where a redirected connection was going, or `None` (logged, counted) when it cannot be
/// served: no original destination (not redirected), or the proxy's own listener (a loop).
fn destination(proxy: &Proxy, conn: &Connection, listener: &'static str) -> Option<SocketAddr> {
    let tcp = conn.stream.tcp();
    let peer = conn.peer;
    let original = match original_destination(tcp) {
        Ok(original) => original,
        Err(err) => {
            crate::metrics::connection_refused("not_redirected");
            tracing::info!(%peer, listener, error = %err, "transparent: refused a connection with no original destination (not redirected by iptables?)");
            return None;
        }
    };
    let own = matches!(
        proxy.config.proxy.addresses.check(original),
        Err(Refused {
            rule: Rule::OwnListener,
            ..
        })
    );
    if own || tcp.local_addr().ok() == Some(original) {
        crate::metrics::connection_refused("own_listener");
        tracing::warn!(%peer, %original, listener, "transparent: refused a connection to this proxy's own listener (a redirect loop, or a direct connection): the rules must skip the proxy's uid");
        return None;
    }
    Some(original)
}

/// Who is calling a transparent listener: there is no proxy handshake, so only the source
/// address can name a caller; `proxy.callers = "known"` refuses an unlisted one.
fn caller(proxy: &Proxy, peer: std::net::SocketAddr) -> Result<Identity, ProxyError> {
    let identity = proxy.callers.by_source(peer.ip());
    proxy.callers.admit(&identity, peer.ip())?;
    Ok(identity)
}

/// A connection on `transparent.listen`: intercepted by SNI, or passed to its original
/// destination under `proxy.unmatched`.
pub async fn tls_connection(conn: Connection) {
    let proxy = conn.proxy.load_full();
    let Some(original) = destination(&proxy, &conn, "transparent.listen") else {
        return;
    };
    let Connection {
        proxy: shared,
        mut stream,
        peer,
        drain,
        limits,
    } = conn;
    let identity = match caller(&proxy, peer) {
        Ok(identity) => identity,
        Err(err) => {
            crate::metrics::caller(crate::config::UNIDENTIFIED, 403);
            tracing::info!(target: "access", %peer, %original, error = %err, "transparent: caller refused, closed");
            return;
        }
    };
    let peek = hello::client_hello(&mut stream);
    let (head, hello) = match tokio::time::timeout(limits.handshake_timeout, peek).await {
        Ok(Ok(read)) => read,
        Ok(Err(err)) => {
            tracing::debug!(%peer, %original, error = %err, "transparent: no ClientHello");
            return;
        }
        Err(_) => {
            crate::metrics::connection_closed("handshake_timeout");
            tracing::debug!(%peer, %original, "transparent: ClientHello timed out");
            return;
        }
    };
    let sni = match hello {
        Hello::Tls { sni } => sni.map(|s| normalize_host(&s).into_owned()),
        Hello::NotTls => None,
    };
    let client = Prefixed::new(head, stream);
    match sni {
        Some(host) if proxy.routes.intercepts(&host, original.port()) => {
            let Ok(target) = Target::new(Scheme::HTTPS, &host, original.port()) else {
                return;
            };
            crate::metrics::connect("intercept");
            tracing::info!(target: "access", %peer, host = %target.authority, %original, "transparent: intercepted");
            drop(proxy);
            crate::intercept::serve(shared, client, target, identity, peer, drain).await;
        }
        sni => {
            let host = sni.unwrap_or_else(|| original.ip().to_string());
            let upstream = match pass(&proxy, &host, original, false).await {
                Ok(upstream) => upstream,
                Err(err) => {
                    tracing::info!(%peer, %original, error = %err, "transparent: closed");
                    return;
                }
            };
            let idle = proxy.config.limits.tunnel_idle_timeout;
            drop(proxy);
            splice(client, upstream, idle, drain).await;
        }
    }
}

/// An unrouted redirected connection named `host` (its SNI or `Host`, else the original
/// address): `proxy.unmatched` and the destination policy decide, and a tunnel is dialled
/// to the original destination address, never to one the name resolves to.
async fn pass(
    proxy: &Proxy,
    host: &str,
    original: SocketAddr,
    plain_http: bool,
) -> Result<TcpStream, ProxyError> {
    let settings = &proxy.config.proxy;
    let authority = original.to_string();
    if settings.unmatched == Unmatched::Deny {
        crate::metrics::connect("deny");
        return Err(ProxyError::Denied {
            host: format!("{host} ({authority})"),
        });
    }
    let listed = settings.unmatched.lets_through(host);
    let judged = crate::connect::unrouted(settings, host, original.port(), plain_http, listed)
        .and_then(|()| {
            Ok(settings
                .addresses
                .judge(settings.addresses.check(original))?)
        });
    if let Err(err) = judged {
        crate::metrics::connect("deny");
        return Err(err);
    }
    let dial = tokio::time::timeout(settings.connect_timeout, TcpStream::connect(original));
    let upstream = match dial.await {
        Ok(Ok(upstream)) => upstream,
        Ok(Err(e)) => {
            return Err(ProxyError::Upstream {
                authority,
                detail: e.to_string(),
            })
        }
        Err(_) => {
            return Err(ProxyError::ConnectTimeout {
                authority,
                after_ms: settings.connect_timeout.as_millis(),
            })
        }
    };
    let _ = upstream.set_nodelay(true);
    crate::metrics::connect("tunnel");
    tracing::info!(target: "access", host, %original, "transparent: tunnelled to the original destination");
    Ok(upstream)
}

/// Splices `client` and `upstream` until either closes or the tunnel idles.
async fn splice<S>(mut client: S, mut upstream: TcpStream, idle: Duration, drain: Drain)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let _drain = drain;
    if crate::idle::splice(&mut client, &mut upstream, idle).await == crate::idle::Spliced::Idle {
        crate::metrics::connection_closed("tunnel_idle_timeout");
        tracing::debug!("transparent tunnel idle: closed");
    }
}

pub use plain::http_connection;

#[cfg(test)]
mod tests;
