//! Connections to the real destinations: a pooled hyper client over rustls that verifies
//! every certificate against the configured roots for the host in the request URI, and the
//! hop-by-hop header rules of RFC 9110 §7.6.1; what goes back to the caller (upgrades spliced)
//! and what a failed exchange is (a connect timeout known by its cause).

use std::collections::HashMap;
use std::sync::Arc;

use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName};
use http::uri::Authority;
use http::{Response, StatusCode};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::RootCertStore;

use crate::body::{self, Body};
use crate::config::ProxySettings;
use crate::destination::{AddressPolicy, Guarded, ResolveError};
use crate::error::ProxyError;

/// The pooled client type.
pub type HttpsClient = Client<HttpsConnector<Guarded>, Body>;

/// One pair of pooled clients sharing a TLS identity.
#[derive(Clone)]
struct Pair {
    /// HTTP/1.1 and HTTP/2 (by ALPN), pooled per scheme and authority.
    pooled: HttpsClient,
    /// HTTP/1.1 only, for upgrade requests (WebSocket), which need an HTTP/1.1 connection.
    http1: HttpsClient,
}

/// Pooled upstream clients: one pair without a client certificate, and one pair per client
/// certificate of `mtls_bound` routes, so certificate-bound tokens only ever travel on
/// connections made with their certificate, and pools never mix identities. Unmatched
/// traffic has its own pair, whose connector checks every resolved address against
/// `proxy.allow_cidrs`/`deny_cidrs` ([`Guarded`]), so its pool never holds a connection
/// made for a route, nor the reverse.
#[derive(Clone)]
pub struct Upstream {
    anonymous: Pair,
    unmatched: Pair,
    bound: HashMap<String, Pair>,
}

impl Upstream {
    /// Builds the clients; `roots` decide which upstream certificates are trusted;
    /// `identities` are the TLS client configs (with certificates) by client name.
    pub fn new(
        roots: Arc<RootCertStore>,
        settings: &ProxySettings,
        identities: Vec<(String, rustls::ClientConfig)>,
    ) -> Upstream {
        let pair = |tls: rustls::ClientConfig, policy: Option<&Arc<AddressPolicy>>| Pair {
            pooled: build(tls.clone(), true, settings, policy.cloned()),
            http1: build(tls, false, settings, policy.cloned()),
        };
        let tls = crate::tls::client_config(roots);
        Upstream {
            unmatched: pair(tls.clone(), Some(&settings.addresses)),
            anonymous: pair(tls, None),
            bound: identities
                .into_iter()
                .map(|(name, tls)| (name, pair(tls, None)))
                .collect(),
        }
    }

    /// The client for a request: with the certificate of client `identity` (an
    /// `mtls_bound` route) or none; `upgrade` requests need HTTP/1.1; `guarded` (a
    /// destination no route covers) checks where it dials.
    pub fn client(&self, upgrade: bool, identity: Option<&str>, guarded: bool) -> &HttpsClient {
        let pair = match identity.and_then(|name| self.bound.get(name)) {
            Some(pair) => pair,
            None if guarded => &self.unmatched,
            None => &self.anonymous,
        };
        if upgrade {
            &pair.http1
        } else {
            &pair.pooled
        }
    }
}

fn build(
    tls: rustls::ClientConfig,
    h2: bool,
    settings: &ProxySettings,
    policy: Option<Arc<AddressPolicy>>,
) -> HttpsClient {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(settings.connect_timeout));
    let http = Guarded {
        inner: http,
        policy,
    };
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http();
    let connector = if h2 {
        builder.enable_http1().enable_http2().wrap_connector(http)
    } else {
        builder.enable_http1().wrap_connector(http)
    };
    Client::builder(TokioExecutor::new())
        // `forward::send` removes the caller's `Host`: the client writes it from the URI,
        // which is the target's (HTTP/2 carries the URI's authority as `:authority`).
        .set_host(true)
        .pool_idle_timeout(settings.pool_idle_timeout)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .build(connector)
}

/// Headers that belong to one connection (RFC 9110 §7.6.1), plus the proxy's own.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// Whether a request asks for a protocol upgrade (WebSocket).
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Removes hop-by-hop headers and those the `Connection` header names. With `upgrade`, the
/// `Connection: upgrade` and `Upgrade` headers are kept for the next hop.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .filter(|n| !(upgrade && n == header::UPGRADE))
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    if upgrade {
        headers.insert(
            header::CONNECTION,
            http::HeaderValue::from_static("upgrade"),
        );
    } else {
        headers.remove(header::UPGRADE);
    }
}

/// Prepares the upstream response for the caller: hop-by-hop headers dropped; on `101
/// Switching Protocols`, the two upgraded connections spliced.
pub fn to_caller(
    mut response: Response<Incoming>,
    downstream: Option<OnUpgrade>,
) -> Response<Body> {
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(downstream) = downstream {
            let upstream = hyper::upgrade::on(&mut response);
            tokio::spawn(async move {
                match tokio::try_join!(downstream, upstream) {
                    Ok((down, up)) => {
                        let mut down = hyper_util::rt::TokioIo::new(down);
                        let mut up = hyper_util::rt::TokioIo::new(up);
                        if let Err(err) = tokio::io::copy_bidirectional(&mut down, &mut up).await {
                            tracing::debug!(error = %err, "upgraded connection ended");
                        }
                    }
                    Err(err) => tracing::debug!(error = %err, "upgrade failed"),
                }
            });
        }
        let (parts, _) = response.into_parts();
        return Response::from_parts(parts, body::empty());
    }
    let (mut parts, incoming) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers, false);
    Response::from_parts(parts, body::boxed(incoming))
}

/// The upstream request's failure, for `authority`: a connect that ran out of
/// `connect_timeout` (504), or any other (502).
pub fn failure(
    err: &hyper_util::client::legacy::Error,
    authority: &Authority,
    connect_timeout: Duration,
) -> ProxyError {
    if let Some(refused) = refusal(err) {
        return ProxyError::DestinationRefused(refused);
    }
    // hyper-util reports its connect timeout as an `io::Error` of kind `TimedOut` (whose
    // text is tokio's "deadline has elapsed"), as the OS reports its own.
    if err.is_connect() && crate::error::is_timeout(err) {
        ProxyError::ConnectTimeout {
            authority: authority.to_string(),
            after_ms: connect_timeout.as_millis(),
        }
    } else {
        ProxyError::Upstream {
            authority: authority.to_string(),
            detail: crate::error::chain(err),
        }
    }
}

/// The destination policy's refusal, if that is why the connect failed.
fn refusal(err: &(dyn std::error::Error + 'static)) -> Option<crate::destination::Refused> {
    let mut next = Some(err);
    while let Some(e) = next {
        if let Some(ResolveError::Refused(refused)) = e.downcast_ref::<ResolveError>() {
            return Some(refused.clone());
        }
        next = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error with a cause, as hyper-util's connect errors are.
    #[derive(Debug, thiserror::Error)]
    #[error("{0}")]
    struct Wrapped(&'static str, #[source] std::io::Error);

    #[test]
    fn a_timeout_is_known_by_its_kind_not_its_text() {
        use std::io::{Error, ErrorKind};
        let cases = [
            (
                Wrapped(
                    "tcp connect error",
                    Error::new(ErrorKind::TimedOut, "deadline has elapsed"),
                ),
                true,
            ),
            (
                Wrapped("tcp connect error", Error::from(ErrorKind::TimedOut)),
                true,
            ),
            (
                Wrapped(
                    "tcp connect error",
                    Error::from(ErrorKind::ConnectionRefused),
                ),
                false,
            ),
            (
                Wrapped(
                    "timed out",
                    Error::other("connection timed out, said the text"),
                ),
                false,
            ),
        ];
        for (err, want) in cases {
            assert_eq!(crate::error::is_timeout(&err), want, "{err:?}");
        }
    }

    #[test]
    fn strips_hop_by_hop_and_connection_named() {
        let mut h = HeaderMap::new();
        h.insert("connection", "keep-alive, x-secret-hop".parse().unwrap());
        h.insert("x-secret-hop", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("proxy-authorization", "Basic Zm9vOmJhcg==".parse().unwrap());
        h.insert("te", "trailers".parse().unwrap());
        h.insert("host", "api.example".parse().unwrap());
        h.insert("x-end-to-end", "kept".parse().unwrap());
        strip_hop_by_hop(&mut h, false);
        let mut left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        left.sort();
        assert_eq!(left, ["host", "x-end-to-end"]);
    }

    #[test]
    fn keeps_upgrade_for_websockets() {
        let mut h = HeaderMap::new();
        h.insert("connection", "Upgrade".parse().unwrap());
        h.insert("upgrade", "websocket".parse().unwrap());
        assert!(is_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "upgrade");
    }
}
