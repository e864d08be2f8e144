//! Every way a proxied request can fail, and the one place ([`response`]) that turns a
//! failure into the status and body the caller sees.
//!
//! Bodies are plain text that a person can act on: they name the route, the client and the
//! OAuth error, never a secret or a token. A `Proxy-Status` header (RFC 9209) carries the
//! same classification for machines.

use std::sync::Arc;

use http::{header, HeaderValue, Response, StatusCode};

use crate::body::{full, Body};

/// What kind of failure a credential problem is, as data: [`ProxyError::classify`] turns it
/// into the status and `Proxy-Status` type. The token module implements [`Classify`] for its
/// errors, so this module (a leaf every module may use) never names their types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// The caller's own credential is missing, expired or refused (401).
    Caller,
    /// The authorization server refused the proxy's registration (`invalid_client`,
    /// `invalid_scope`...): credentials, scopes or audiences the configuration names.
    Refused,
    /// The authorization server (or its metadata) did not answer, or said it is unavailable.
    Unavailable,
    /// An answer that is not a usable OAuth answer.
    Protocol,
    /// No answer in time (504).
    Timeout,
    /// The answer came, but after the token it carried was no longer usable.
    Late,
    /// The proxy's own configuration (a key or secret file) is unusable.
    Configuration,
    /// A bug, a cancelled fetch or a store that failed.
    Internal,
}

/// A failure on the way to the route's credential, classified by its kind (never its text).
pub trait Classify: std::error::Error + Send + Sync + 'static {
    /// The kind of failure.
    fn class(&self) -> Class;
    /// `details` for `Proxy-Status`: short, bounded, never a secret or a description the
    /// server wrote (the OAuth error code, or the kind of failure).
    fn details(&self) -> Option<&str> {
        None
    }
}

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
    /// A destination the destination policy refuses (an address range, the proxy itself, a
    /// port, a host not on the unmatched list): never dialled.
    #[error("{0}")]
    DestinationRefused(#[from] crate::destination::Refused),
    /// `proxy.callers = "known"` and no `[[caller]]` matches: 407 with a `Proxy-Authenticate`
    /// challenge per configured scheme, or 403 when no caller has `proxy_auth`.
    #[error("no [[caller]] matches the connection from {peer}: proxy.callers = \"known\" serves only configured callers; {}", why.advice())]
    CallerUnknown {
        /// The connection's peer address.
        peer: std::net::IpAddr,
        /// What was missing.
        why: crate::caller::Unmatched,
        /// The challenges the 407 carries.
        challenges: crate::caller::Challenges,
    },
    /// A route's `callers = [...]` does not list the caller: refused before any token is
    /// fetched.
    #[error("route {route}: caller {caller} may not use this route (its callers are [{listed}]); add the caller to the route's callers or call as one of them")]
    CallerNotAllowed {
        /// Route name.
        route: String,
        /// The caller's name, or `unidentified`.
        caller: String,
        /// The route's `callers`.
        listed: String,
    },
    /// An `http://` request on a route that would send its token in clear.
    #[error("route {route}: refusing to send its token over plain http; use https, or set upgrade_tls = true (the proxy speaks https upstream) or allow_plaintext = true on the route")]
    PlaintextRefused {
        /// Route name.
        route: String,
    },
    /// Inside an intercepted tunnel (or a redirected connection), the request names another
    /// host than the CONNECT (or the SNI / first `Host`) did.
    #[error("this connection is bound to {expected} (its CONNECT, or the SNI / first Host of a redirected connection), but the request's {what} names {got}; open a new connection to that host instead")]
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
    /// On a route with a `path_prefix`, a path the upstream could read as another path than
    /// the one the route matched (`path.rs`): refused before any token is fetched.
    #[error("route {route}: refusing a path with {why}: the route has path_prefix {prefix:?} and the upstream could read this path as one outside it; send the path as the upstream should see it")]
    PathRefused {
        /// Route name.
        route: String,
        /// The route's `path_prefix`.
        prefix: String,
        /// What is wrong with the path.
        why: crate::path::PathProblem,
    },
    /// No token could be had for the route.
    #[error("route {route}: {source}")]
    Token {
        /// Route name.
        route: String,
        /// The token error (names client, endpoint and OAuth error).
        source: Arc<dyn Classify>,
    },
    /// The authorization server refused to exchange the caller's own token (on-behalf-of): the
    /// caller's credential is what is wrong, so the caller is told 401, not 502.
    #[error("route {route}: the authorization server refused the caller's token: {source}")]
    CallerTokenRefused {
        /// Route name.
        route: String,
        /// The token error (names client, endpoint and OAuth error).
        source: Arc<dyn Classify>,
    },
    /// No subject token for a token-exchange route.
    #[error("route {route}: {source}")]
    Subject {
        /// Route name.
        route: String,
        /// What is missing.
        source: Arc<dyn Classify>,
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
    /// The one map from a failure to the caller's status and RFC 9209 error type.
    fn classify(&self) -> (StatusCode, &'static str) {
        match self {
            ProxyError::BadRequest(_) => (StatusCode::BAD_REQUEST, "http_request_error"),
            ProxyError::Denied { .. } => (StatusCode::FORBIDDEN, "destination_not_found"),
            ProxyError::DestinationRefused(_) => {
                (StatusCode::FORBIDDEN, "destination_ip_prohibited")
            }
            ProxyError::PlaintextRefused { .. } => (StatusCode::FORBIDDEN, "http_request_denied"),
            ProxyError::CallerUnknown { challenges, .. } => {
                match challenges.basic || challenges.bearer {
                    true => (
                        StatusCode::PROXY_AUTHENTICATION_REQUIRED,
                        "http_request_denied",
                    ),
                    false => (StatusCode::FORBIDDEN, "http_request_denied"),
                }
            }
            ProxyError::CallerNotAllowed { .. } => (StatusCode::FORBIDDEN, "http_request_denied"),
            ProxyError::Misdirected { .. } => {
                (StatusCode::MISDIRECTED_REQUEST, "http_request_denied")
            }
            ProxyError::MethodNotAllowed { .. } => {
                (StatusCode::METHOD_NOT_ALLOWED, "http_request_denied")
            }
            ProxyError::PathRefused { .. } => (StatusCode::BAD_REQUEST, "http_request_denied"),
            ProxyError::CallerTokenRefused { .. } => {
                (StatusCode::UNAUTHORIZED, "http_request_denied")
            }
            ProxyError::Token { source, .. } => credential_status(source.class()),
            ProxyError::Subject { source, .. } => match source.class() {
                Class::Caller => (StatusCode::UNAUTHORIZED, "http_request_denied"),
                _ => (StatusCode::BAD_GATEWAY, "proxy_internal_error"),
            },
            ProxyError::ConnectTimeout { .. } => {
                (StatusCode::GATEWAY_TIMEOUT, "connection_timeout")
            }
            ProxyError::Upstream { .. } => (StatusCode::BAD_GATEWAY, "destination_unavailable"),
        }
    }

    /// `details` for `Proxy-Status`, for token failures.
    fn details(&self) -> Option<String> {
        match self {
            ProxyError::Token { source, .. } | ProxyError::CallerTokenRefused { source, .. } => {
                source.details().map(|d| format!("token endpoint: {d}"))
            }
            _ => None,
        }
    }
}

/// The status and RFC 9209 §2.3 error type for a failure to get a token. The token endpoint
/// is a hop the proxy makes on its own, so the types describe that hop:
/// `proxy_internal_error` is kept for the proxy's own faults, and a refusal is the proxy's
/// registration at the authorization server being wrong, not the caller's request.
fn credential_status(class: Class) -> (StatusCode, &'static str) {
    let kind = match class {
        Class::Timeout => return (StatusCode::GATEWAY_TIMEOUT, "http_response_timeout"),
        Class::Caller | Class::Refused | Class::Configuration => "proxy_configuration_error",
        // Discovery problems that make the config wrong are refused at start; at run time
        // this is the metadata server not answering.
        Class::Unavailable => "destination_unavailable",
        Class::Protocol => "http_protocol_error",
        Class::Late => "http_response_timeout",
        Class::Internal => "proxy_internal_error",
    };
    (StatusCode::BAD_GATEWAY, kind)
}

/// Whether `err` or one of its sources is an I/O time-out (a connect timeout, for one).
pub fn is_timeout(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(err);
    while let Some(e) = next {
        if e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
        {
            return true;
        }
        next = e.source();
    }
    false
}

/// An RFC 8941 sf-string: printable ASCII, `"` and `\` escaped, anything else dropped.
fn sf_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars().filter(|c| (' '..='~').contains(c)).take(200) {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// The response the caller gets for `err`.
pub fn response(err: &ProxyError) -> Response<Body> {
    answer(err, None)
}

/// [`response`] for a request with a correlation id: the body names it (`request id: ...`)
/// and the `x-request-id` header carries it, so the caller's report finds the proxy's log line.
pub fn response_for(err: &ProxyError, request_id: &str) -> Response<Body> {
    answer(err, Some(request_id))
}

fn answer(err: &ProxyError, request_id: Option<&str>) -> Response<Body> {
    let (status, kind) = err.classify();
    let message = match request_id {
        Some(id) => format!("oauth-egress: {err}\nrequest id: {id}\n"),
        None => format!("oauth-egress: {err}\n"),
    };
    let mut proxy_status = format!("oauth-egress; error={kind}");
    if let Some(details) = err.details() {
        proxy_status.push_str("; details=");
        proxy_status.push_str(&sf_string(&details));
    }
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
    if let Some(v) = request_id.and_then(|id| HeaderValue::from_str(id).ok()) {
        headers.insert("x-request-id", v);
    }
    if let ProxyError::MethodNotAllowed { allowed, .. } = err {
        headers.insert(header::ALLOW, HeaderValue::from_static(allowed));
    }
    if let ProxyError::CallerUnknown { challenges, .. } = err {
        if challenges.basic {
            headers.append(
                header::PROXY_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"oauth-egress\""),
            );
        }
        if challenges.bearer {
            headers.append(
                header::PROXY_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"oauth-egress\""),
            );
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("a {0:?} failure")]
    struct Failure(Class, Option<&'static str>);

    impl Classify for Failure {
        fn class(&self) -> Class {
            self.0
        }
        fn details(&self) -> Option<&str> {
            self.1
        }
    }

    #[test]
    fn credential_classes_get_their_status_and_rfc_9209_type() {
        let cases = [
            (Class::Refused, 502, "proxy_configuration_error"),
            (Class::Configuration, 502, "proxy_configuration_error"),
            (Class::Unavailable, 502, "destination_unavailable"),
            (Class::Protocol, 502, "http_protocol_error"),
            (Class::Timeout, 504, "http_response_timeout"),
            (Class::Late, 502, "http_response_timeout"),
            (Class::Internal, 502, "proxy_internal_error"),
        ];
        for (class, status, kind) in cases {
            let err = ProxyError::Token {
                route: "r".into(),
                source: Arc::new(Failure(class, Some("x"))),
            };
            let response = response(&err);
            assert_eq!(response.status().as_u16(), status, "{class:?}");
            assert_eq!(
                response.headers()["proxy-status"],
                format!("oauth-egress; error={kind}; details=\"token endpoint: x\""),
                "{class:?}"
            );
        }
        let subject = |class| ProxyError::Subject {
            route: "r".into(),
            source: Arc::new(Failure(class, None)),
        };
        assert_eq!(response(&subject(Class::Caller)).status(), 401);
        assert_eq!(response(&subject(Class::Internal)).status(), 502);
    }

    #[test]
    fn a_timeout_is_found_among_the_sources() {
        #[derive(Debug, thiserror::Error)]
        #[error("connect failed")]
        struct Wrapper(#[source] std::io::Error);
        let timed_out = Wrapper(std::io::Error::new(std::io::ErrorKind::TimedOut, "slow"));
        assert!(is_timeout(&timed_out));
        let refused = Wrapper(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "timed out (but refused)",
        ));
        assert!(!is_timeout(&refused));
    }
}
