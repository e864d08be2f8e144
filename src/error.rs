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
                (StatusCode::GATEWAY_TIMEOUT, token_error_type(source))
            }
            ProxyError::Token { source, .. } => (StatusCode::BAD_GATEWAY, token_error_type(source)),
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

    /// `details` for `Proxy-Status`: for token failures, the OAuth error code or the kind of
    /// failure (short, bounded, never a secret or a description the server wrote).
    fn details(&self) -> Option<String> {
        let token = match self {
            ProxyError::Token { source, .. } | ProxyError::CallerTokenRefused { source, .. } => {
                source
            }
            _ => return None,
        };
        Some(match token.oauth_error() {
            Some(code) => format!("token endpoint: {code}"),
            None => format!("token endpoint: {}", token.kind()),
        })
    }
}

/// The RFC 9209 §2.3 error type for a failure to get a token. The token endpoint is a hop
/// the proxy makes on its own, so the types describe that hop: `proxy_internal_error` is
/// kept for the proxy's own faults, and a refusal is the proxy's registration at the
/// authorization server being wrong, not the caller's request.
fn token_error_type(err: &TokenError) -> &'static str {
    match err {
        // invalid_client, invalid_scope, unauthorized_client...: credentials, scopes or
        // audiences the configuration names do not work at the authorization server.
        TokenError::OAuth { error, .. }
            if error != "server_error" && error != "temporarily_unavailable" =>
        {
            "proxy_configuration_error"
        }
        TokenError::OAuth { .. } | TokenError::Unreachable { .. } => "destination_unavailable",
        // Discovery problems that make the config wrong are refused at start; at run time
        // this is the metadata server not answering.
        TokenError::Discovery { .. } => "destination_unavailable",
        TokenError::BadStatus { .. } | TokenError::BadResponse { .. } => "http_protocol_error",
        // Late: the answer came, but after the token it carried was no longer usable.
        TokenError::Timeout { .. } | TokenError::Late { .. } => "http_response_timeout",
        TokenError::Secret { .. } | TokenError::Config { .. } => "proxy_configuration_error",
        TokenError::Refresh { .. } | TokenError::Internal { .. } => "proxy_internal_error",
    }
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
    let (status, kind) = err.classify();
    let message = format!("oauth-egress: {err}\n");
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

#[cfg(test)]
mod tests {
    use super::*;

    fn proxy_status(source: TokenError) -> (u16, String) {
        let response = response(&ProxyError::Token {
            route: "r".into(),
            source: Arc::new(source),
        });
        let header = response.headers()["proxy-status"]
            .to_str()
            .unwrap()
            .to_string();
        (response.status().as_u16(), header)
    }

    #[test]
    fn token_failures_get_their_rfc_9209_type_and_the_oauth_error_in_details() {
        let (client, endpoint) = (|| "c".to_string(), || "https://idp/token".to_string());
        let oauth = |error: &str| TokenError::OAuth {
            client: client(),
            endpoint: endpoint(),
            status: 400,
            error: error.into(),
            description: Some("the secret is hunter2".into()),
        };
        let cases = [
            (
                oauth("invalid_client"),
                502,
                "error=proxy_configuration_error; details=\"token endpoint: invalid_client\"",
            ),
            (
                oauth("temporarily_unavailable"),
                502,
                "error=destination_unavailable; details=\"token endpoint: temporarily_unavailable\"",
            ),
            (
                oauth("x\"\\\r\n"),
                502,
                "error=proxy_configuration_error; details=\"token endpoint: x\\\"\\\\\"",
            ),
            (
                TokenError::BadStatus {
                    client: client(),
                    endpoint: endpoint(),
                    status: 503,
                    detail: "html".into(),
                },
                502,
                "error=http_protocol_error; details=\"token endpoint: bad_status\"",
            ),
            (
                TokenError::BadResponse {
                    client: client(),
                    endpoint: endpoint(),
                    detail: "no access_token".into(),
                },
                502,
                "error=http_protocol_error; details=\"token endpoint: bad_response\"",
            ),
            (
                TokenError::Timeout {
                    client: client(),
                    endpoint: endpoint(),
                    after_ms: 10,
                },
                504,
                "error=http_response_timeout; details=\"token endpoint: timeout\"",
            ),
            (
                TokenError::Unreachable {
                    client: client(),
                    endpoint: endpoint(),
                    detail: "refused".into(),
                },
                502,
                "error=destination_unavailable; details=\"token endpoint: unreachable\"",
            ),
            (
                TokenError::Discovery {
                    client: client(),
                    detail: "down".into(),
                },
                502,
                "error=destination_unavailable; details=\"token endpoint: discovery\"",
            ),
            (
                TokenError::Config {
                    client: client(),
                    detail: "key".into(),
                },
                502,
                "error=proxy_configuration_error; details=\"token endpoint: config\"",
            ),
            (
                TokenError::Refresh {
                    client: client(),
                    detail: "unwritable".into(),
                },
                502,
                "error=proxy_internal_error; details=\"token endpoint: refresh_store\"",
            ),
            (
                TokenError::Internal {
                    client: client(),
                    detail: "cancelled".into(),
                },
                502,
                "error=proxy_internal_error; details=\"token endpoint: internal\"",
            ),
        ];
        for (source, status, want) in cases {
            let what = format!("{source:?}");
            let (got_status, header) = proxy_status(source);
            assert_eq!(got_status, status, "{what}");
            assert_eq!(header, format!("oauth-egress; {want}"), "{what}");
            assert!(!header.contains("hunter2"), "{header}");
        }
    }
}
