//! Tokens: one [`TokenSlot`] per distinct token (client + everything that changes the token),
//! shared by every route that asks for it.
//!
//! - `cache.rs`: the slot's state machine: cached token, single flight, refresh ahead,
//!   invalidation after a 401.
//! - `endpoint.rs`: the token request itself (reqwest, no proxy, no redirects, timeouts) and
//!   the checks on the answer.
//! - `client_auth.rs`: how the client authenticates at the token endpoint.

pub mod assertion;
mod cache;
mod client_auth;
pub mod discovery;
mod endpoint;
mod grant;
pub mod refresh_store;
mod subject;

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use http::HeaderValue;
use secrecy::{ExposeSecret, SecretString};
use tokio::time::Instant;

pub use cache::{Lookup, TokenSlot};
pub use endpoint::{schedule, DiscoveryCheck, Fetcher, FetcherError, Schedule, MAX_SKEW_SHARE};
pub use subject::{RouteToken, SubjectError, SubjectSlots};

use crate::config::{ClientConfig, Grant, RouteSpec};
use crate::secret::SecretError;

/// Why this client's private key (or its `assertion_cert`) cannot be used, if it cannot;
/// `None` for a good key or a client without one. Read now, so `check`, start-up and reload
/// ([`crate::preflight`]) report it instead of the first token request. Never includes key
/// material.
pub fn key_problem(client: &ClientConfig) -> Option<String> {
    client.private_key.as_ref()?;
    client_auth::private_key(client)
        .err()
        .map(|err| err.to_string())
}

/// Problems that would make a `refresh_token` route lose its only valid token: a token file
/// that is a symbolic link, or in a directory the proxy cannot write (a read-only mount: the
/// server rotates the token, and its successor could not be saved): `(route, problem)`.
pub fn refresh_problems(config: &crate::config::Config) -> Vec<(String, String)> {
    let mut seen = std::collections::HashSet::new();
    config
        .routes
        .iter()
        .filter_map(|r| match &r.grant {
            Grant::RefreshToken { file } => Some((r, file)),
            _ => None,
        })
        .filter(|(_, file)| seen.insert(file.to_path_buf()))
        .flat_map(|(r, file)| {
            refresh_store::file_problems(file)
                .into_iter()
                .map(|problem| (r.name.clone(), problem))
        })
        .collect()
}

/// Everything that changes which token the authorization server issues. Two routes with the
/// same key share one cached token.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TokenKey {
    /// Client name in the config.
    pub client: String,
    /// The client's whole registration (endpoint, auth, key and secret *sources*, never
    /// values): a changed registration never reuses a token.
    pub registration: String,
    /// `client_id`.
    pub client_id: String,
    /// The grant and its parameters (never a secret: sources are named, not read).
    pub grant: String,
    /// Sorted, deduplicated scopes.
    pub scopes: Vec<String>,
    /// `audience` parameter.
    pub audience: Option<String>,
    /// `resource` parameter.
    pub resource: Option<String>,
    /// SHA-256 of the subject token, for token exchange.
    pub subject: Option<[u8; 32]>,
    /// The DPoP key's thumbprint, for DPoP routes.
    pub dpop: Option<String>,
    /// `dpop_required`: a route that refuses Bearer tokens never shares one with a route
    /// that accepts them.
    pub dpop_required: bool,
}

impl TokenKey {
    /// The key for a route of this client.
    pub fn for_route(client: &ClientConfig, spec: &RouteSpec) -> TokenKey {
        TokenKey {
            client: client.name.clone(),
            registration: format!(
                "{:?}",
                (
                    &client.endpoint,
                    &client.auth,
                    &client.client_secret,
                    &client.private_key,
                    &client.signing_alg,
                    &client.key_id,
                    &client.assertion_audience,
                    &client.client_cert,
                    &client.client_key
                )
            ),
            client_id: client.client_id.clone(),
            grant: format!("{:?}", spec.grant),
            scopes: spec.scopes.clone(),
            audience: spec.audience.clone(),
            resource: spec.resource.clone(),
            subject: None,
            dpop: None,
            dpop_required: spec.dpop && spec.dpop_required,
        }
    }
}

/// What a token request asks for.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    /// The client.
    pub client: Arc<ClientConfig>,
    /// The grant.
    pub grant: Grant,
    /// Scopes.
    pub scopes: Vec<String>,
    /// `audience`.
    pub audience: Option<String>,
    /// `resource`.
    pub resource: Option<String>,
    /// The subject token of a token exchange.
    pub subject: Option<Arc<SecretString>>,
    /// Its `exp` (unix seconds), when it is a JWT: the issued token never outlives it.
    pub subject_exp: Option<u64>,
    /// The DPoP key proving possession, for DPoP routes.
    pub dpop: Option<Arc<crate::sender::dpop::DpopKey>>,
    /// On a DPoP route, refuse a `Bearer` answer.
    pub dpop_required: bool,
}

impl TokenRequest {
    fn for_route(client: &Arc<ClientConfig>, spec: &RouteSpec) -> TokenRequest {
        TokenRequest {
            client: client.clone(),
            grant: spec.grant.clone(),
            scopes: spec.scopes.clone(),
            audience: spec.audience.clone(),
            resource: spec.resource.clone(),
            subject: None,
            subject_exp: None,
            dpop: None,
            dpop_required: spec.dpop && spec.dpop_required,
        }
    }
}

/// How a token is presented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenScheme {
    /// `Authorization: Bearer` (RFC 6750).
    Bearer,
    /// `Authorization: DPoP` plus a `DPoP` proof (RFC 9449).
    Dpop,
}

impl TokenScheme {
    /// The `Authorization` scheme name.
    pub fn name(self) -> &'static str {
        match self {
            TokenScheme::Bearer => "Bearer",
            TokenScheme::Dpop => "DPoP",
        }
    }
}

/// An access token in hand. Its value is zeroized on drop and never printed.
pub struct AccessToken {
    value: SecretString,
    /// How it must be presented.
    pub scheme: TokenScheme,
    /// For DPoP tokens: the `ath` every proof carries (computed once per token).
    pub ath: Option<String>,
    /// When this token must no longer be sent (expiry minus skew).
    pub usable_until: Instant,
    /// From when a background renewal starts.
    pub refresh_at: Instant,
    /// Scopes the server says it granted, if it said.
    pub granted_scope: Option<String>,
}

impl AccessToken {
    /// Builds a token after checking that its value can go in a header (RFC 6750 token68).
    pub fn new(
        value: SecretString,
        usable_until: Instant,
        refresh_at: Instant,
        granted_scope: Option<String>,
    ) -> Result<AccessToken, &'static str> {
        if !is_token68(value.expose_secret()) {
            return Err("access_token has characters that are not allowed in an Authorization header (RFC 6750 token68)");
        }
        Ok(AccessToken {
            value,
            scheme: TokenScheme::Bearer,
            ath: None,
            usable_until,
            refresh_at,
            granted_scope,
        })
    }

    /// Marks the token as DPoP-bound: presented as `DPoP`, with `ath` in every proof.
    pub fn into_dpop(mut self) -> AccessToken {
        self.ath = Some(crate::sender::dpop::ath(self.value.expose_secret()));
        self.scheme = TokenScheme::Dpop;
        self
    }

    /// The `Authorization` header value, marked sensitive so hyper never logs or indexes it.
    pub fn authorization(&self) -> HeaderValue {
        let secret = self.value.expose_secret();
        let scheme = self.scheme.name();
        let mut bytes = Vec::with_capacity(scheme.len() + 1 + secret.len());
        bytes.extend_from_slice(scheme.as_bytes());
        bytes.push(b' ');
        bytes.extend_from_slice(secret.as_bytes());
        // Checked by `new`: token68 bytes are always valid header bytes.
        let mut header = HeaderValue::from_bytes(&bytes).unwrap_or(HeaderValue::from_static(""));
        header.set_sensitive(true);
        header
    }

    /// Whether the token may still be sent at `now`.
    pub fn is_usable_at(&self, now: Instant) -> bool {
        now < self.usable_until
    }
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessToken")
            .field("value", &"***")
            .field("usable_until", &self.usable_until)
            .finish()
    }
}

/// RFC 6750 §2.1 `b64token`: `1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`.
pub fn is_token68(s: &str) -> bool {
    let body = s.trim_end_matches('=');
    !body.is_empty()
        && body.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/')
        })
}

/// Why no token could be had. Names the client and the endpoint, never a secret.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The server answered with an OAuth error (RFC 6749 §5.2).
    #[error("token endpoint {endpoint} refused client {client}: {error}{}", description.as_ref().map(|d| format!(" ({d})")).unwrap_or_default())]
    OAuth {
        /// Client name.
        client: String,
        /// Token endpoint URL.
        endpoint: String,
        /// HTTP status.
        status: u16,
        /// The OAuth `error` code.
        error: String,
        /// `error_description`, cleaned and shortened.
        description: Option<String>,
    },
    /// An error status without an OAuth error body (an HTML page, a proxy error...).
    #[error("token endpoint {endpoint} answered HTTP {status} for client {client} without an OAuth error body ({detail})")]
    BadStatus {
        /// Client name.
        client: String,
        /// Token endpoint URL.
        endpoint: String,
        /// HTTP status.
        status: u16,
        /// What the body was.
        detail: String,
    },
    /// A success status whose body is not a usable token response.
    #[error("token endpoint {endpoint} gave client {client} an unusable token response: {detail}")]
    BadResponse {
        /// Client name.
        client: String,
        /// Token endpoint URL.
        endpoint: String,
        /// What is wrong.
        detail: String,
    },
    /// No answer in time.
    #[error("token endpoint {endpoint} did not answer within {after_ms} ms (client {client})")]
    Timeout {
        /// Client name.
        client: String,
        /// Token endpoint URL.
        endpoint: String,
        /// The configured bound.
        after_ms: u128,
    },
    /// Connection refused, DNS, TLS...
    #[error("cannot reach token endpoint {endpoint} for client {client}: {detail}")]
    Unreachable {
        /// Client name.
        client: String,
        /// Token endpoint URL.
        endpoint: String,
        /// The transport error.
        detail: String,
    },
    /// The client's secret could not be read.
    #[error("client {client}: {source}")]
    Secret {
        /// Client name.
        client: String,
        /// Why.
        source: SecretError,
    },
    /// The token endpoint could not be discovered or does not fit the client.
    #[error("client {client}: {detail}")]
    Discovery {
        /// Client name.
        client: String,
        /// What is wrong.
        detail: String,
    },
    /// The request could not be built (a key or token file is unreadable or unusable).
    #[error("client {client}: {detail}")]
    Config {
        /// Client name.
        client: String,
        /// What is wrong.
        detail: String,
    },
    /// The stored refresh token could not be read or the rotated one saved.
    #[error("client {client}: refresh token: {detail}")]
    Refresh {
        /// Client name.
        client: String,
        /// What is wrong.
        detail: String,
    },
    /// The token arrived already past its usable end (the token request took longer than
    /// the token lives, or its `exp` was nearly past).
    #[error("client {client}: the token arrived already past its usable end (a token request slower than the token's lifetime?)")]
    Late {
        /// Client name.
        client: String,
    },
    /// A bug or a cancelled fetch.
    #[error("token fetch for client {client} failed: {detail}")]
    Internal {
        /// Client name.
        client: String,
        /// What happened.
        detail: String,
    },
}

impl TokenError {
    /// The OAuth error code, when the server gave one.
    pub fn oauth_error(&self) -> Option<&str> {
        match self {
            TokenError::OAuth { error, .. } => Some(error),
            _ => None,
        }
    }

    /// A short, bounded name for the failure (a metrics label).
    pub fn kind(&self) -> &'static str {
        match self {
            TokenError::OAuth { .. } => "oauth_error",
            TokenError::BadStatus { .. } => "bad_status",
            TokenError::BadResponse { .. } => "bad_response",
            TokenError::Timeout { .. } => "timeout",
            TokenError::Unreachable { .. } => "unreachable",
            TokenError::Secret { .. } | TokenError::Config { .. } => "config",
            TokenError::Discovery { .. } => "discovery",
            TokenError::Refresh { .. } => "refresh_store",
            TokenError::Late { .. } => "late",
            TokenError::Internal { .. } => "internal",
        }
    }

    /// Whether the token endpoint timed out.
    pub fn is_timeout(&self) -> bool {
        matches!(self, TokenError::Timeout { .. })
    }
}

/// All token slots, by key, so routes asking for the same token share it.
pub struct TokenCache {
    fetcher: Arc<Fetcher>,
    slots: Mutex<HashMap<TokenKey, Arc<TokenSlot>>>,
    subjects: Mutex<HashMap<TokenKey, Arc<SubjectSlots>>>,
}

impl TokenCache {
    /// An empty cache fetching through `fetcher`.
    pub fn new(fetcher: Arc<Fetcher>) -> TokenCache {
        TokenCache {
            fetcher,
            slots: Mutex::new(HashMap::new()),
            subjects: Mutex::new(HashMap::new()),
        }
    }

    /// The fetcher (for discovery at start).
    pub fn fetcher(&self) -> &Arc<Fetcher> {
        &self.fetcher
    }

    /// Where this route's tokens come from, created on first use; with `previous` (the
    /// cache of the configuration being replaced), an unchanged key keeps its cached token,
    /// and only that: the slot is new, with this configuration's request and fetcher (its
    /// `[tokens]` settings, client certificate and DPoP nonces). A generated DPoP key is
    /// kept too, so the token bound to it stays usable.
    pub fn route_token(
        &self,
        client: &Arc<ClientConfig>,
        spec: &RouteSpec,
        previous: Option<&TokenCache>,
    ) -> RouteToken {
        let mut key = TokenKey::for_route(client, spec);
        let mut request = TokenRequest::for_route(client, spec);
        if spec.dpop {
            if let Some(previous) = previous {
                self.fetcher
                    .adopt_generated_dpop_key(&client.name, &previous.fetcher);
            }
            if let Some(dpop) = self.fetcher.dpop_key(&client.name) {
                key.dpop = Some(dpop.thumbprint().to_string());
                request.dpop = Some(dpop);
            }
        }
        if let Grant::TokenExchange(exchange) = &spec.grant {
            let inherited = previous.and_then(|p| lock(&p.subjects).get(&key).cloned());
            let slots = lock(&self.subjects)
                .entry(key.clone())
                .or_insert_with(|| {
                    let fetcher = self.fetcher.clone();
                    let slots = SubjectSlots::new(request, key, &exchange.subject, fetcher);
                    Arc::new(match inherited {
                        Some(old) => slots.carrying(&old),
                        None => slots,
                    })
                })
                .clone();
            return RouteToken::PerSubject(slots);
        }
        let inherited = previous.and_then(|p| lock(&p.slots).get(&key).cloned());
        let slot = lock(&self.slots)
            .entry(key.clone())
            .or_insert_with(|| {
                let slot = TokenSlot::new(key, Arc::new(request), self.fetcher.clone());
                Arc::new(match inherited {
                    Some(old) => slot.carrying(&old),
                    None => slot,
                })
            })
            .clone();
        RouteToken::Fixed(slot)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token68_cases() {
        let cases = [
            ("abc.DEF-123_~+/", true),
            ("abc==", true),
            ("eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln", true),
            ("", false),
            ("==", false),
            ("a=b", false),
            ("abc\r\nX-Evil: 1", false),
            ("has space", false),
            ("quote\"", false),
        ];
        for (token, want) in cases {
            assert_eq!(is_token68(token), want, "{token:?}");
        }
    }

    #[test]
    fn debug_never_shows_the_token() {
        let now = Instant::now();
        let t = AccessToken::new(SecretString::from("s3cr3t-token"), now, now, None).unwrap();
        assert!(!format!("{t:?}").contains("s3cr3t"));
        assert!(t.authorization().is_sensitive());
        assert_eq!(t.authorization().to_str().unwrap(), "Bearer s3cr3t-token");
    }
}
