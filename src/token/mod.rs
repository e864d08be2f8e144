//! Tokens: one [`TokenSlot`] per distinct token ([`TokenKey`]: client + everything that
//! changes the token), shared by every route that asks for it.
//!
//! - `cache.rs`: the slot's state machine: cached token, single flight, refresh ahead,
//!   invalidation after a 401.
//! - `fetcher.rs`: the token clients (reqwest, no proxy, no redirects, timeouts; mutual TLS
//!   per client), DPoP keys and nonces, discovered endpoints.
//! - `endpoint.rs`: one token request and its retries; `answer.rs`: the checks on the
//!   answer; `schedule.rs`: when a token stops being sent and when it is renewed.
//! - `client_auth.rs`, `grant.rs`, `assertion.rs`: the request's form: how the client
//!   authenticates, the grant's parameters, signed JWTs.
//! - `subject.rs`: token exchange, one slot per subject token; `refresh_store.rs`: stored
//!   refresh tokens, rotated in place; `discovery.rs`: authorization server metadata.
//! - `shared/`: the fleet's token store behind the slots (`[cache] backend = "redis"`):
//!   fleet-wide single flight and invalidation, sealed values, a breaker for outages.
//! - `error.rs`: [`TokenError`], classified for the caller's answer by [`crate::error`].

mod answer;
pub mod assertion;
mod cache;
mod client_auth;
mod discovery;
mod endpoint;
mod error;
mod fetcher;
mod grant;
mod refresh_store;
mod schedule;
pub mod shared;
mod subject;
pub mod view;

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use http::HeaderValue;
use secrecy::{ExposeSecret, SecretString};
use tokio::time::Instant;
use zeroize::Zeroizing;

pub use crate::sender::TokenScheme;
pub use cache::{Lookup, TokenSlot};
pub use discovery::{DiscoveryCheck, DiscoveryError, UnsupportedAuth};
pub use error::{TokenError, TokenErrorKind, Unusable};
pub use fetcher::{Fetcher, FetcherError};
pub use schedule::{schedule, Schedule, MAX_SKEW_SHARE};
pub use subject::{RouteToken, SubjectError, SubjectSlots};

use crate::config::{
    AssertionAudience, BasicEncoding, ClientAuth, ClientConfig, Endpoint, Grant, RouteSpec,
    SigningAlg,
};
use crate::secret::SecretSource;
use crate::sync::lock;

/// Why this client's private key (or its `assertion_cert`) cannot be used, if it cannot;
/// `None` for a good key or a client without one. Read now, so `check`, start-up and reload
/// (the preflight checks) report it instead of the first token request. Never includes key
/// material.
pub(crate) fn key_problem(client: &ClientConfig) -> Option<String> {
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

/// What a token request asks for.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    /// The client.
    pub client: Arc<ClientConfig>,
    /// The grant.
    pub grant: Grant,
    /// Scopes.
    pub scopes: Vec<String>,
    /// `audience` values.
    pub audience: Vec<String>,
    /// `resource` values (RFC 8707: one parameter each).
    pub resource: Vec<String>,
    /// Extra form parameters (`token_params`, the client's and the route's merged).
    pub params: std::collections::BTreeMap<String, String>,
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
            params: spec.token_params.clone(),
            subject: None,
            subject_exp: None,
            dpop: None,
            dpop_required: spec.dpop && spec.dpop_required,
        }
    }
}

/// Everything that changes which token the authorization server issues: the identity of a
/// [`TokenRequest`], built from it by [`TokenKey::of`] alone. Two routes with the same key
/// share one cached token. Secrets are keyed on their *source* (an env name, a path), never
/// on their value; a subject token on its SHA-256.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TokenKey {
    /// Client name in the config.
    pub client: String,
    /// The client's registration: a changed registration never reuses a token.
    registration: Registration,
    /// The grant and its parameters (sources, never values).
    grant: Grant,
    /// Sorted, deduplicated scopes.
    scopes: Vec<String>,
    /// `audience` parameters.
    audience: Vec<String>,
    /// `resource` parameters.
    resource: Vec<String>,
    /// `token_params`.
    params: std::collections::BTreeMap<String, String>,
    /// SHA-256 of the subject token, for token exchange.
    subject: Option<[u8; 32]>,
    /// The DPoP key's thumbprint, for DPoP routes.
    pub dpop: Option<String>,
    /// `dpop_required`: a route that refuses Bearer tokens never shares one with a route
    /// that accepts them.
    dpop_required: bool,
}

/// The parts of a client registration that change its tokens.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Registration {
    endpoint: Endpoint,
    client_id: String,
    auth: ClientAuth,
    client_secret: Option<SecretSource>,
    private_key: Option<SecretSource>,
    signing_alg: Option<SigningAlg>,
    key_id: Option<String>,
    assertion_audience: AssertionAudience,
    client_cert: Option<SecretSource>,
    client_key: Option<SecretSource>,
    basic_encoding: BasicEncoding,
    client_assertion: Option<SecretSource>,
}

impl Registration {
    fn of(client: &ClientConfig) -> Registration {
        // Every field is named: a new one must be placed in the key or said not to matter.
        let ClientConfig {
            name: _,
            endpoint,
            client_id,
            auth,
            client_secret,
            private_key,
            signing_alg,
            key_id,
            assertion_audience,
            // The certificate only adds `x5t` headers to assertions signed by the same key.
            assertion_cert: _,
            client_cert,
            client_key,
            // In the key as the DPoP key's thumbprint.
            dpop: _,
            dpop_key: _,
            // In the key as the request's merged `params`.
            token_params: _,
            basic_encoding,
            client_assertion,
        } = client;
        Registration {
            endpoint: endpoint.clone(),
            client_id: client_id.clone(),
            auth: *auth,
            client_secret: client_secret.clone(),
            private_key: private_key.clone(),
            signing_alg: *signing_alg,
            key_id: key_id.clone(),
            assertion_audience: *assertion_audience,
            client_cert: client_cert.clone(),
            client_key: client_key.clone(),
            basic_encoding: *basic_encoding,
            client_assertion: client_assertion.clone(),
        }
    }
}

impl TokenKey {
    /// The identity of `request`. Every field is named, so a field added to the request
    /// changes the key or fails to compile until it is said not to.
    pub(crate) fn of(request: &TokenRequest) -> TokenKey {
        let TokenRequest {
            client,
            grant,
            scopes,
            audience,
            resource,
            params,
            subject,
            // Read from the subject token, which is in the key.
            subject_exp: _,
            dpop,
            dpop_required,
        } = request;
        TokenKey {
            client: client.name.clone(),
            registration: Registration::of(client),
            grant: grant.clone(),
            scopes: scopes.clone(),
            audience: audience.clone(),
            resource: resource.clone(),
            params: params.clone(),
            subject: subject.as_deref().map(subject_hash),
            dpop: dpop.as_ref().map(|key| key.thumbprint().to_string()),
            dpop_required: *dpop_required,
        }
    }
}

/// The SHA-256 of a subject token: its identity in keys and maps, never the token itself.
fn subject_hash(subject: &SecretString) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    Sha256::digest(subject.expose_secret().as_bytes()).into()
}

/// An access token in hand. It is held only as its `Authorization` header value, built
/// once when the token arrives and marked sensitive (hyper never logs or indexes it), never
/// printed. Every request clones a reference count, not the token; the bytes are owned by a
/// `Zeroizing` buffer that is wiped when the last clone (the cache's or a request's in
/// flight) is dropped.
pub struct AccessToken {
    authorization: HeaderValue,
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
    /// Builds a token after checking that its value can go in a header (RFC 6750 token68);
    /// `dpop`: presented as `DPoP`, with `ath` in every proof, else as `Bearer`.
    pub fn new(
        value: SecretString,
        usable_until: Instant,
        refresh_at: Instant,
        granted_scope: Option<String>,
        dpop: bool,
    ) -> Result<AccessToken, Unusable> {
        let secret = value.expose_secret();
        if !is_token68(secret) {
            return Err(Unusable::NotToken68);
        }
        let scheme = if dpop {
            TokenScheme::Dpop
        } else {
            TokenScheme::Bearer
        };
        let mut bytes = Zeroizing::new(Vec::with_capacity(scheme.name().len() + 1 + secret.len()));
        bytes.extend_from_slice(scheme.name().as_bytes());
        bytes.push(b' ');
        bytes.extend_from_slice(secret.as_bytes());
        // token68 bytes are always valid header bytes. `from_owner` keeps the zeroizing
        // buffer as the storage (no copy), so it is wiped when the last clone goes.
        let mut authorization = HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(bytes))
            .map_err(|_| Unusable::NotToken68)?;
        authorization.set_sensitive(true);
        Ok(AccessToken {
            authorization,
            scheme,
            ath: dpop.then(|| crate::sender::dpop::ath(secret)),
            usable_until,
            refresh_at,
            granted_scope,
        })
    }

    /// The `Authorization` header value (sensitive): a clone of the one built with the token.
    pub fn authorization(&self) -> HeaderValue {
        self.authorization.clone()
    }

    /// Whether the token may still be sent at `now`.
    pub fn is_usable_at(&self, now: Instant) -> bool {
        now < self.usable_until
    }
}

impl crate::sender::Presented for AccessToken {
    fn authorization(&self) -> HeaderValue {
        self.authorization.clone()
    }

    fn bare(&self) -> &[u8] {
        // `Authorization` is `scheme SP token`.
        let bytes = self.authorization.as_bytes();
        bytes
            .get(self.scheme.name().len() + 1..)
            .unwrap_or_default()
    }

    fn scheme(&self) -> TokenScheme {
        self.scheme
    }

    fn ath(&self) -> Option<&str> {
        self.ath.as_deref()
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
pub(crate) fn is_token68(s: &str) -> bool {
    let body = s.trim_end_matches('=');
    !body.is_empty()
        && body.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/')
        })
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
        let mut request = TokenRequest::for_route(client, spec);
        if spec.dpop {
            if let Some(previous) = previous {
                self.fetcher
                    .adopt_generated_dpop_key(&client.name, &previous.fetcher);
            }
            request.dpop = self.fetcher.dpop_key(&client.name);
        }
        let key = TokenKey::of(&request);
        if let Grant::TokenExchange(exchange) = &spec.grant {
            let inherited = previous.and_then(|p| lock(&p.subjects).get(&key).cloned());
            let slots = lock(&self.subjects)
                .entry(key)
                .or_insert_with(|| {
                    let fetcher = self.fetcher.clone();
                    let slots = SubjectSlots::new(request, &exchange.subject, fetcher);
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
            .entry(key)
            .or_insert_with(|| {
                let slot = TokenSlot::new(Arc::new(request), self.fetcher.clone());
                Arc::new(match inherited {
                    Some(old) => slot.carrying(&old),
                    None => slot,
                })
            })
            .clone();
        RouteToken::Fixed(slot)
    }
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
        let t =
            AccessToken::new(SecretString::from("s3cr3t-token"), now, now, None, false).unwrap();
        assert!(!format!("{t:?}").contains("s3cr3t"));
        assert!(t.authorization().is_sensitive());
        assert_eq!(t.authorization().to_str().unwrap(), "Bearer s3cr3t-token");
    }

    #[test]
    fn the_authorization_value_is_built_once_per_token() {
        let now = Instant::now();
        let t = AccessToken::new(SecretString::from("tok"), now, now, None, true).unwrap();
        let (a, b) = (t.authorization(), t.authorization());
        assert_eq!(
            a.as_bytes().as_ptr(),
            b.as_bytes().as_ptr(),
            "rebuilt per call"
        );
        assert_eq!(a.to_str().unwrap(), "DPoP tok");
        assert!(a.is_sensitive() && t.ath.is_some());
    }
}
