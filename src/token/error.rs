//! Why no token could be had: one [`TokenError`] naming the client (and the token endpoint,
//! once known) once, a [`TokenErrorKind`] saying what went wrong, and the cause in `source()`
//! (the reqwest, serde or secret error). [`crate::error`] answers the caller from
//! [`Classify::class`], never from the text.

use std::error::Error;
use std::fmt;

use super::endpoint::MAX_RESPONSE_BYTES;
use crate::error::{chain, Class, Classify};

/// A boxed cause.
pub(crate) type Cause = Box<dyn Error + Send + Sync + 'static>;

/// Why no token could be had. Names the client and the endpoint, never a secret.
#[derive(Debug)]
pub struct TokenError {
    client: Box<str>,
    endpoint: Option<Box<str>>,
    kind: TokenErrorKind,
    source: Option<Cause>,
}

/// What the operator can do about a refusal, when the proxy can tell: the source of an
/// OAuth error (the server's answer is the error itself).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Hint(&'static str);

/// What went wrong getting a token.
#[derive(Debug)]
#[non_exhaustive]
pub enum TokenErrorKind {
    /// The server answered with an OAuth error (RFC 6749 §5.2).
    OAuth {
        /// HTTP status.
        status: u16,
        /// The OAuth `error` code, cleaned and shortened.
        error: String,
        /// `error_description`, cleaned and shortened.
        description: Option<String>,
    },
    /// An error status without an OAuth error body (an HTML page, a proxy error...).
    BadStatus {
        /// HTTP status.
        status: u16,
        /// The answer's content type.
        content_type: String,
        /// The answer's length.
        bytes: usize,
    },
    /// A success status whose body is not a usable token response.
    BadResponse(Unusable),
    /// No answer in time.
    Timeout {
        /// The configured bound.
        after_ms: u128,
    },
    /// Connection refused, DNS, TLS... (the transport error is the source).
    Unreachable,
    /// The token endpoint could not be discovered or does not fit the client (the source says
    /// why).
    Discovery,
    /// The request could not be built: a secret, key or token file is unreadable or unusable
    /// (the source says which and why).
    Config,
    /// The stored refresh token could not be read (the source says why).
    Refresh,
    /// The token arrived already past its usable end (the token request took longer than
    /// the token lives, or its `exp` was nearly past).
    Late,
    /// A bug or a cancelled fetch (the source, if any, says which).
    Internal(&'static str),
}

/// What makes a success answer unusable.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Unusable {
    /// The answer is larger than any token response.
    TooLarge {
        /// HTTP status.
        status: u16,
    },
    /// Not JSON, or not a token response (the serde error is the source).
    NotJson {
        /// HTTP status.
        status: u16,
        /// Its content type.
        content_type: String,
        /// Its length.
        bytes: usize,
    },
    /// No `access_token`.
    NoAccessToken,
    /// `token_type` DPoP on a route without DPoP.
    DpopOnBearerRoute,
    /// `token_type` Bearer on a `dpop_required` route.
    BearerOnDpopRoute,
    /// `token_type` N_A (RFC 8693 §2.2.1).
    NotAnAccessToken,
    /// Another `token_type` (cleaned, shortened).
    UnknownType(String),
    /// No `token_type`.
    NoTokenType,
    /// `expires_in` is not a positive number (the JSON value, as the server sent it).
    BadExpiresIn(String),
    /// The token (or the subject token) is already past its `exp`.
    Expired,
    /// The token cannot go in an `Authorization` header.
    NotToken68,
}

impl fmt::Display for Unusable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unusable::TooLarge { status } => {
                write!(f, "HTTP {status} answer larger than {MAX_RESPONSE_BYTES} bytes")
            }
            Unusable::NotJson { status, content_type, bytes } => write!(
                f,
                "HTTP {status} with a body that is not a JSON token response ({content_type}, {bytes} bytes)"
            ),
            Unusable::NoAccessToken => f.write_str("no access_token in the answer"),
            Unusable::DpopOnBearerRoute => f.write_str(
                "token_type DPoP, but this route does not use DPoP (set dpop = true)",
            ),
            Unusable::BearerOnDpopRoute => f.write_str(
                "the server issued a Bearer token to a DPoP route; refusing it (dpop_required = true)",
            ),
            Unusable::NotAnAccessToken => f.write_str(
                "token_type N_A: the issued token is not an access token (RFC 8693 §2.2.1); set requested_token_type = \"access_token\"",
            ),
            Unusable::UnknownType(t) => {
                write!(f, "token_type {t:?} cannot be sent as a Bearer token")
            }
            Unusable::NoTokenType => f.write_str("no token_type in the answer (RFC 6749 §5.1)"),
            Unusable::BadExpiresIn(v) => {
                write!(f, "expires_in {v} is not a positive number of seconds")
            }
            Unusable::Expired => f.write_str(
                "the access token (or the token it was exchanged for) has already expired by its exp; check the clocks",
            ),
            Unusable::NotToken68 => f.write_str(
                "access_token has characters that are not allowed in an Authorization header (RFC 6750 token68)",
            ),
        }
    }
}

impl TokenError {
    /// A failure of `client`'s token request.
    pub(crate) fn new(client: &str, kind: TokenErrorKind) -> TokenError {
        TokenError {
            client: client.into(),
            endpoint: None,
            kind,
            source: None,
        }
    }

    /// Adds what the operator can do about it to the message.
    pub(crate) fn hinted(self, hint: &'static str) -> TokenError {
        self.because(Hint(hint))
    }

    /// At this token endpoint.
    pub(crate) fn at(mut self, endpoint: &str) -> TokenError {
        self.endpoint = Some(endpoint.into());
        self
    }

    /// Caused by `source`.
    pub(crate) fn because(mut self, source: impl Into<Cause>) -> TokenError {
        self.source = Some(source.into());
        self
    }

    /// The client (its name in the config).
    pub fn client(&self) -> &str {
        &self.client
    }

    /// The token endpoint, when the failure happened there.
    pub fn endpoint(&self) -> Option<&str> {
        self.endpoint.as_deref()
    }

    /// What went wrong.
    pub fn what(&self) -> &TokenErrorKind {
        &self.kind
    }

    /// The OAuth error code, when the server gave one.
    pub fn oauth_error(&self) -> Option<&str> {
        match &self.kind {
            TokenErrorKind::OAuth { error, .. } => Some(error),
            _ => None,
        }
    }

    /// Whether the token endpoint timed out.
    pub fn is_timeout(&self) -> bool {
        matches!(self.kind, TokenErrorKind::Timeout { .. })
    }

    /// Whether the configuration is what is wrong: the server refused the registration
    /// (`invalid_client`, `invalid_scope`...) or a secret or key cannot be used.
    pub fn is_misconfiguration(&self) -> bool {
        matches!(self.class(), Class::Refused | Class::Configuration)
    }

    /// A short, bounded name for the failure (a metrics label, and `Proxy-Status` details
    /// when the server gave no OAuth error).
    pub fn kind(&self) -> &'static str {
        match self.kind {
            TokenErrorKind::OAuth { .. } => "oauth_error",
            TokenErrorKind::BadStatus { .. } => "bad_status",
            TokenErrorKind::BadResponse(_) => "bad_response",
            TokenErrorKind::Timeout { .. } => "timeout",
            TokenErrorKind::Unreachable => "unreachable",
            TokenErrorKind::Config => "config",
            TokenErrorKind::Discovery => "discovery",
            TokenErrorKind::Refresh => "refresh_store",
            TokenErrorKind::Late => "late",
            TokenErrorKind::Internal(_) => "internal",
        }
    }
}

impl Classify for TokenError {
    fn class(&self) -> Class {
        match &self.kind {
            TokenErrorKind::OAuth { error, .. }
                if error == "server_error" || error == "temporarily_unavailable" =>
            {
                Class::Unavailable
            }
            // invalid_client, invalid_scope, unauthorized_client...: credentials, scopes or
            // audiences the configuration names do not work at the authorization server.
            TokenErrorKind::OAuth { .. } => Class::Refused,
            TokenErrorKind::Unreachable | TokenErrorKind::Discovery => Class::Unavailable,
            TokenErrorKind::BadStatus { .. } | TokenErrorKind::BadResponse(_) => Class::Protocol,
            TokenErrorKind::Timeout { .. } => Class::Timeout,
            TokenErrorKind::Late => Class::Late,
            TokenErrorKind::Config => Class::Configuration,
            TokenErrorKind::Refresh | TokenErrorKind::Internal(_) => Class::Internal,
        }
    }

    fn details(&self) -> Option<&str> {
        Some(self.oauth_error().unwrap_or(self.kind()))
    }
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (client, endpoint) = (&self.client, self.endpoint.as_deref().unwrap_or_default());
        // The transport error with its causes (reqwest's own text is terse); others as they
        // word themselves.
        let chained = || self.source.as_deref().map(|s| chain(s)).unwrap_or_default();
        let cause = || {
            self.source
                .as_ref()
                .map(|s| s.to_string())
                .unwrap_or_default()
        };
        match &self.kind {
            TokenErrorKind::OAuth { error, description, .. } => {
                write!(f, "token endpoint {endpoint} refused client {client}: {error}")?;
                if let Some(d) = description {
                    write!(f, " ({d})")?;
                }
                match &self.source {
                    Some(hint) => write!(f, "; {hint}"),
                    None => Ok(()),
                }
            }
            TokenErrorKind::BadStatus { status, content_type, bytes } => write!(
                f,
                "token endpoint {endpoint} answered HTTP {status} for client {client} without an OAuth error body ({content_type}, {bytes} bytes)"
            ),
            TokenErrorKind::BadResponse(why) => write!(
                f,
                "token endpoint {endpoint} gave client {client} an unusable token response: {why}"
            ),
            TokenErrorKind::Timeout { after_ms } => write!(
                f,
                "token endpoint {endpoint} did not answer within {after_ms} ms (client {client})"
            ),
            TokenErrorKind::Unreachable => write!(
                f,
                "cannot reach token endpoint {endpoint} for client {client}: {}",
                chained()
            ),
            TokenErrorKind::Discovery | TokenErrorKind::Config => {
                write!(f, "client {client}: {}", cause())
            }
            TokenErrorKind::Refresh => write!(f, "client {client}: refresh token: {}", cause()),
            TokenErrorKind::Late => write!(
                f,
                "client {client}: the token arrived already past its usable end (a token request slower than the token's lifetime?)"
            ),
            TokenErrorKind::Internal(what) => {
                let cause = cause();
                let detail = if cause.is_empty() { what } else { cause.as_str() };
                write!(f, "token fetch for client {client} failed: {detail}")
            }
        }
    }
}

impl Error for TokenError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.source.as_deref().map(|s| s as &(dyn Error + 'static))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::error::{response, ProxyError};

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
        let at = |kind| TokenError::new("c", kind).at("https://idp/token");
        let oauth = |error: &str| {
            at(TokenErrorKind::OAuth {
                status: 400,
                error: error.into(),
                description: Some("the secret is hunter2".into()),
            })
        };
        let client = |kind| TokenError::new("c", kind);
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
                at(TokenErrorKind::BadStatus {
                    status: 503,
                    content_type: "text/html".into(),
                    bytes: 4,
                }),
                502,
                "error=http_protocol_error; details=\"token endpoint: bad_status\"",
            ),
            (
                at(TokenErrorKind::BadResponse(Unusable::NoAccessToken)),
                502,
                "error=http_protocol_error; details=\"token endpoint: bad_response\"",
            ),
            (
                at(TokenErrorKind::Timeout { after_ms: 10 }),
                504,
                "error=http_response_timeout; details=\"token endpoint: timeout\"",
            ),
            (
                at(TokenErrorKind::Unreachable).because("refused"),
                502,
                "error=destination_unavailable; details=\"token endpoint: unreachable\"",
            ),
            (
                client(TokenErrorKind::Discovery).because("down"),
                502,
                "error=destination_unavailable; details=\"token endpoint: discovery\"",
            ),
            (
                client(TokenErrorKind::Config).because("key"),
                502,
                "error=proxy_configuration_error; details=\"token endpoint: config\"",
            ),
            (
                client(TokenErrorKind::Refresh).because("unwritable"),
                502,
                "error=proxy_internal_error; details=\"token endpoint: refresh_store\"",
            ),
            (
                client(TokenErrorKind::Internal("cancelled")),
                502,
                "error=proxy_internal_error; details=\"token endpoint: internal\"",
            ),
            (
                client(TokenErrorKind::Late),
                502,
                "error=http_response_timeout; details=\"token endpoint: late\"",
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

    #[test]
    fn messages_name_client_endpoint_and_cause_and_keep_the_cause_as_source() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused");
        let err = TokenError::new("billing", TokenErrorKind::Unreachable)
            .at("https://idp/token")
            .because(io);
        assert_eq!(
            err.to_string(),
            "cannot reach token endpoint https://idp/token for client billing: connection refused"
        );
        let source = err.source().unwrap();
        assert_eq!(
            source.downcast_ref::<std::io::Error>().unwrap().kind(),
            std::io::ErrorKind::ConnectionRefused
        );
        assert!(!err.is_timeout() && !err.is_misconfiguration());
        let refused = TokenError::new(
            "billing",
            TokenErrorKind::OAuth {
                status: 401,
                error: "invalid_client".into(),
                description: None,
            },
        )
        .at("https://idp/token");
        assert_eq!(
            refused.to_string(),
            "token endpoint https://idp/token refused client billing: invalid_client"
        );
        assert!(refused.is_misconfiguration());
        assert_eq!(refused.oauth_error(), Some("invalid_client"));
    }
}
