//! Every way a proxied request can fail, and the one place ([`response`]) that turns a
//! failure into the status and body the caller sees.
//!
//! Bodies are plain text that a person can act on: they name the route, the client and the
//! OAuth error, never a secret or a token. A `Proxy-Status` header (RFC 9209) carries the
//! same classification for machines.

use std::sync::Arc;

use http::{header, HeaderValue, Response, StatusCode};

use crate::body::{full, Body};
use crate::token::TokenError;

/// Why the proxy answered instead of the upstream.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The request cannot be understood or forwarded as it is.
    #[error("malformed request: {0}")]
    BadRequest(String),
    /// A destination without a route, under `unmatched = "deny"`, however it was named
    /// (`CONNECT`, absolute-form `http://` or `https://`).
    #[error("{host}: no route matches and this proxy denies unmatched hosts (proxy.unmatched = \"deny\")")]
    Denied {
        /// `host:port` asked for.
        host: String,
    },
    /// An `http://` request on a route that would send its token in clear.
    #[error("route {route}: refusing to send its token over plain http; use https, or set upgrade_tls = true (the proxy speaks https upstream) or allow_plaintext = true on the route")]
    PlaintextRefused {
        /// Route name.
        route: String,
    },
    /// Inside an intercepted tunnel, the request names another host than the CONNECT did.
    #[error("this tunnel was opened for {expected}, but the request's {what} names {got}; open a tunnel to that host instead")]
    Misdirected {
        /// The CONNECT authority.
        expected: String,
        /// `TLS SNI`, `request-target`, `:authority` or `Host`.
        what: &'static str,
        /// What the request said.
        got: String,
    },
    /// A method refused on a route: `TRACE` would echo the injected token back to the caller.
    #[error("route {route}: {method} is refused on routes, its answer would show the caller the token the proxy adds; allowed: {allowed}")]
    MethodNotAllowed {
        /// Route name.
        route: String,
        /// The method asked for.
        method: String,
        /// The methods allowed, as in the `Allow` header.
        allowed: &'static str,
    },
    /// No token could be had for the route.
    #[error("route {route}: {source}")]
    Token {
        /// Route name.
        route: String,
        /// The token error (names client, endpoint and OAuth error).
        source: Arc<TokenError>,
    },
    /// The authorization server refused to exchange the caller's own token (on-behalf-of): the
    /// caller's credential is what is wrong, so the caller is told 401, not 502.
    #[error("route {route}: the authorization server refused the caller's token: {source}")]
    CallerTokenRefused {
        /// Route name.
        route: String,
        /// The token error (names client, endpoint and OAuth error).
        source: Arc<TokenError>,
    },
    /// No subject token for a token-exchange route.
    #[error("route {route}: {source}")]
    Subject {
        /// Route name.
        route: String,
        /// What is missing.
        source: crate::token::SubjectError,
    },
    /// The upstream did not accept a connection in time.
    #[error("upstream {authority} did not accept a connection within {after_ms} ms")]
    ConnectTimeout {
        /// `host:port`.
        authority: String,
        /// The configured bound.
        after_ms: u128,
    },
    /// The upstream could not be reached or broke the exchange.
    #[error("upstream {authority}: {detail}")]
    Upstream {
        /// `host:port`.
        authority: String,
        /// The transport or TLS error chain.
        detail: String,
    },
}

impl ProxyError {
    fn classify(&self) -> (StatusCode, &'static str) {
        match self {
            ProxyError::BadRequest(_) => (StatusCode::BAD_REQUEST, "http_request_error"),
            ProxyError::Denied { .. } => (StatusCode::FORBIDDEN, "destination_not_found"),
            ProxyError::PlaintextRefused { .. } => (StatusCode::FORBIDDEN, "http_request_denied"),
            ProxyError::Misdirected { .. } => {
                (StatusCode::MISDIRECTED_REQUEST, "http_request_denied")
            }
            ProxyError::MethodNotAllowed { .. } => {
                (StatusCode::METHOD_NOT_ALLOWED, "http_request_denied")
            }
            ProxyError::Token { source, .. } if source.is_timeout() => {
                (StatusCode::GATEWAY_TIMEOUT, "proxy_internal_error")
            }
            ProxyError::Token { .. } => (StatusCode::BAD_GATEWAY, "proxy_internal_error"),
            ProxyError::CallerTokenRefused { .. } => {
                (StatusCode::UNAUTHORIZED, "http_request_denied")
            }
            ProxyError::Subject { source, .. } if source.is_callers() => {
                (StatusCode::UNAUTHORIZED, "http_request_denied")
            }
            ProxyError::Subject { .. } => (StatusCode::BAD_GATEWAY, "proxy_internal_error"),
            ProxyError::ConnectTimeout { .. } => {
                (StatusCode::GATEWAY_TIMEOUT, "connection_timeout")
            }
            ProxyError::Upstream { .. } => (StatusCode::BAD_GATEWAY, "destination_unavailable"),
        }
    }
}

/// The response the caller gets for `err`.
pub fn response(err: &ProxyError) -> Response<Body> {
    let (status, kind) = err.classify();
    let message = format!("oauth-egress: {err}\n");
    let proxy_status = format!("oauth-egress; error={kind}");
    let mut response = Response::new(full(message));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Ok(v) = HeaderValue::from_str(&proxy_status) {
        headers.insert("proxy-status", v);
    }
    if let ProxyError::MethodNotAllowed { allowed, .. } = err {
        headers.insert(header::ALLOW, HeaderValue::from_static(allowed));
    }
    if let ProxyError::CallerTokenRefused { .. } = err {
        // RFC 6750 §3.1: the presented token is not acceptable; the caller may get a new one.
        headers.insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"oauth-egress\", error=\"invalid_token\""),
        );
    } else if status == StatusCode::UNAUTHORIZED {
        headers.insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"oauth-egress\""),
        );
    }
    response
}

/// The error and its sources, joined (`a: b: c`), for messages.
pub fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}
