//! A development OAuth 2.0 authorization server issuing ES256-signed JWT access
//! tokens (RFC 9068 style) for the client credentials, refresh token, token
//! exchange (RFC 8693) and JWT bearer (RFC 7523) grants; clients authenticate with
//! secrets, JWT assertions, mTLS certificates (RFC 8705) or not at all (public).
//!
//! It is the counterpart the proxy fetches tokens from in the demo and in the
//! integration tests, so it checks requests strictly, counts what it sees and can
//! be told to misbehave (delays, error answers, garbage, dropped connections).
//! The test knobs and records beyond the basics live in `auth_knobs.rs`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW};
use hyper::{Method, Request, StatusCode};
use jsonwebtoken::Algorithm;
use serde_json::json;
use tokio::net::TcpListener;

use crate::assertion::ReplayCache;
use crate::clients::{ClientRegistration, JwtPublicKey};
use crate::discovery::{metadata, DiscoveryMode, OAUTH_METADATA_PATH, OIDC_METADATA_PATH};
use crate::dpop_state::DpopState;
use crate::refresh::RefreshStore;
use crate::token_endpoint::token;
use crate::tokens::SigningKey;
pub use crate::tokens::{Claims, TokenVerifier};
use crate::{json_response, spawn_server, text_response, AbortOnDrop, BoxError, HttpResponse};

/// Path of the token endpoint (on the main listener and the mTLS alias).
pub(super) const TOKEN_PATH: &str = "/token";
/// Path of the JWKS.
pub(super) const JWKS_PATH: &str = "/jwks";

/// A client registered with the development server that authenticates with its
/// secret via `client_secret_basic` or `client_secret_post`. For the other methods
/// use [`ClientRegistration`] (every `DevClient` converts into one).
#[derive(Clone)]
pub struct DevClient {
    /// The `client_id`.
    pub id: String,
    /// The client secret (compared in constant time).
    pub secret: String,
    /// Scopes the client may request; `None` allows any scope.
    pub allowed_scopes: Option<Vec<String>>,
}

impl std::fmt::Debug for DevClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevClient")
            .field("id", &self.id)
            .field("secret", &"<redacted>")
            .field("allowed_scopes", &self.allowed_scopes)
            .finish()
    }
}

/// A canned bad answer for `/token`, injected with [`AuthServer::fail_next`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// `500` with an HTML body, like a crashed gateway in front of the server.
    Html500,
    /// An RFC 6749 §5.2 error with this status, `error` and `error_description`.
    OAuth {
        /// HTTP status (invalid values fall back to 400).
        status: u16,
        /// The `error` code, e.g. `invalid_client`.
        error: String,
        /// The `error_description`.
        description: String,
    },
    /// `200` labelled `application/json` whose body is not JSON.
    Garbage200,
    /// `503 temporarily_unavailable`, with `Retry-After: <secs>` when given.
    Unavailable503 {
        /// The `Retry-After` value in seconds; `None` sends no header.
        retry_after_secs: Option<u64>,
    },
    /// The connection is dropped without any answer.
    CloseConnection,
}

/// Knobs and records that tests change and read while the server runs.
pub(super) struct Settings {
    pub(super) lifetime_secs: u64,
    pub(super) omit_expires_in: bool,
    pub(super) delay: Duration,
    pub(super) failure: Option<(usize, Failure)>,
    pub(super) last_form: Vec<(String, String)>,
    pub(super) last_auth_method: Option<String>,
    pub(super) last_assertion: Option<serde_json::Value>,
    pub(super) last_subject_sub: Option<String>,
    pub(super) rotate_refresh_tokens: bool,
    pub(super) basic_raw: bool,
    pub(super) grants: HashMap<String, usize>,
    pub(super) discovery: DiscoveryMode,
    pub(super) advertised_issuer: Option<String>,
    pub(super) advertised_auth_methods: Option<Vec<String>>,
    /// Fields set in (or, when `null`, removed from) the next n success answers.
    pub(super) answer_patch: Option<(usize, serde_json::Map<String, serde_json::Value>)>,
}

/// State shared by the request handlers and the [`AuthServer`] handle.
pub(super) struct Shared {
    pub(super) issuer: String,
    /// The host part of URLs (bracketed if IPv6).
    pub(super) host: String,
    pub(super) clients: Mutex<Vec<ClientRegistration>>,
    pub(super) signing: SigningKey,
    pub(super) token_requests: AtomicUsize,
    pub(super) tokens_issued: AtomicUsize,
    pub(super) refresh_grants: AtomicUsize,
    pub(super) discovery_requests: AtomicUsize,
    pub(super) connections: Arc<AtomicUsize>,
    /// The token endpoint of the mTLS alias, once enabled.
    pub(super) mtls_endpoint: Mutex<Option<String>>,
    pub(super) replay: Mutex<ReplayCache>,
    pub(super) refresh: Mutex<RefreshStore>,
    /// Token exchange: subject/actor token issuers we trust, by `iss`.
    pub(super) trusted_issuers: Mutex<HashMap<String, JwtPublicKey>>,
    /// JWT bearer grant: assertion keys and their algorithm, by `iss`.
    pub(super) assertion_keys: Mutex<HashMap<String, Vec<(JwtPublicKey, Algorithm)>>>,
    pub(super) settings: Mutex<Settings>,
    /// DPoP nonce, replay cache, knobs and records of the token endpoint.
    pub(super) dpop: DpopState,
}

impl Shared {
    pub(super) fn settings(&self) -> MutexGuard<'_, Settings> {
        self.settings
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A running development authorization server; stops when dropped.
pub struct AuthServer {
    /// The socket address it listens on.
    pub addr: SocketAddr,
    pub(super) shared: Arc<Shared>,
    _task: AbortOnDrop,
    /// Further listeners (the mTLS alias); they stop with the server.
    pub(super) extra_tasks: Mutex<Vec<AbortOnDrop>>,
}

impl AuthServer {
    /// Serves on `listener` (tests pass a `127.0.0.1:0` listener) over TLS with `tls`,
    /// with a fresh P-256 signing key. `public_host` is the host name used in URLs
    /// (e.g. `localhost`) and must be covered by the `tls` certificate.
    ///
    /// Each [`DevClient`] may authenticate with `client_secret_basic` or
    /// `client_secret_post`; see [`AuthServer::start_with_registrations`] and
    /// [`AuthServer::register_client`] for the other methods.
    pub async fn start(
        listener: TcpListener,
        tls: Arc<rustls::ServerConfig>,
        public_host: &str,
        clients: Vec<DevClient>,
    ) -> Result<AuthServer, BoxError> {
        let clients = clients.into_iter().map(ClientRegistration::from).collect();
        Self::start_with_registrations(listener, tls, public_host, clients).await
    }

    /// Like [`AuthServer::start`], with clients of any authentication method.
    pub async fn start_with_registrations(
        listener: TcpListener,
        tls: Arc<rustls::ServerConfig>,
        public_host: &str,
        clients: Vec<ClientRegistration>,
    ) -> Result<AuthServer, BoxError> {
        let addr = listener.local_addr()?;
        let host = if public_host.contains(':') && !public_host.starts_with('[') {
            format!("[{public_host}]")
        } else {
            public_host.to_string()
        };
        let issuer = format!("https://{host}:{}", addr.port());

        let signing = SigningKey::generate(&issuer)?;
        let shared = Arc::new(Shared {
            issuer,
            host,
            clients: Mutex::new(clients),
            signing,
            token_requests: AtomicUsize::new(0),
            tokens_issued: AtomicUsize::new(0),
            refresh_grants: AtomicUsize::new(0),
            discovery_requests: AtomicUsize::new(0),
            connections: Arc::new(AtomicUsize::new(0)),
            mtls_endpoint: Mutex::new(None),
            replay: Mutex::new(ReplayCache::default()),
            refresh: Mutex::new(RefreshStore::default()),
            trusted_issuers: Mutex::new(HashMap::new()),
            assertion_keys: Mutex::new(HashMap::new()),
            settings: Mutex::new(Settings {
                lifetime_secs: 3600,
                omit_expires_in: false,
                delay: Duration::ZERO,
                failure: None,
                last_form: Vec::new(),
                last_auth_method: None,
                last_assertion: None,
                last_subject_sub: None,
                rotate_refresh_tokens: true,
                basic_raw: false,
                grants: HashMap::new(),
                discovery: DiscoveryMode::Both,
                advertised_issuer: None,
                advertised_auth_methods: None,
                answer_patch: None,
            }),
            dpop: DpopState::default(),
        });
        let endpoint = format!("{}{TOKEN_PATH}", shared.issuer);
        let task = serve(listener, tls, &shared, endpoint);
        tracing::info!(issuer = %shared.issuer, "development authorization server listening");
        Ok(AuthServer {
            addr,
            shared,
            _task: task,
            extra_tasks: Mutex::new(Vec::new()),
        })
    }

    /// The issuer URL, `https://{public_host}:{port}` (also the tokens' `iss`).
    pub fn issuer(&self) -> String {
        self.shared.issuer.clone()
    }

    /// The token endpoint URL, `{issuer}/token`.
    pub fn token_endpoint(&self) -> String {
        format!("{}{TOKEN_PATH}", self.shared.issuer)
    }

    /// The JWKS URL, `{issuer}/jwks`.
    pub fn jwks_uri(&self) -> String {
        format!("{}{JWKS_PATH}", self.shared.issuer)
    }

    /// How many `POST /token` requests arrived (any outcome).
    pub fn token_requests(&self) -> usize {
        self.shared.token_requests.load(Ordering::SeqCst)
    }

    /// How many access tokens were issued.
    pub fn tokens_issued(&self) -> usize {
        self.shared.tokens_issued.load(Ordering::SeqCst)
    }

    /// How many TCP connections were accepted (shows connection reuse).
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// Sets `expires_in` (and the JWT lifetime) of new tokens; default 3600 seconds.
    pub fn set_token_lifetime(&self, secs: u64) {
        self.shared.settings().lifetime_secs = secs;
    }

    /// When on, token responses leave out `expires_in` (it is only RECOMMENDED).
    pub fn set_omit_expires_in(&self, omit: bool) {
        self.shared.settings().omit_expires_in = omit;
    }

    /// Sleeps this long before answering each `/token` request (widens races).
    pub fn set_delay(&self, delay: Duration) {
        self.shared.settings().delay = delay;
    }

    /// Answers the next `n` `/token` requests with `failure`, whatever they contain.
    pub fn fail_next(&self, n: usize, failure: Failure) {
        self.shared.settings().failure = (n > 0).then_some((n, failure));
    }

    /// Form fields of the last `/token` request; the `client_secret` value is `<redacted>`.
    pub fn last_form(&self) -> Vec<(String, String)> {
        self.shared.settings().last_form.clone()
    }

    /// How the last `/token` request tried to authenticate, judged from what it
    /// carried: `client_secret_basic`, `client_secret_post`, `client_secret_jwt`,
    /// `private_key_jwt` (by the assertion's `alg`), `tls_client_auth` (`client_id`
    /// only, with a client certificate) or `none` (`client_id` only); `None` if it
    /// carried no client identification at all.
    pub fn last_auth_method(&self) -> Option<String> {
        self.shared.settings().last_auth_method.clone()
    }

    /// A verifier for tokens issued by this server (hand it to [`crate::EchoApi`]).
    pub fn verifier(&self) -> TokenVerifier {
        self.shared.signing.verifier.clone()
    }
}

/// Serves the server's routes on `listener`; `endpoint` is this listener's token URL.
pub(super) fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    shared: &Arc<Shared>,
    endpoint: String,
) -> AbortOnDrop {
    let handler_shared = Arc::clone(shared);
    let endpoint: Arc<str> = Arc::from(endpoint);
    spawn_server(
        listener,
        Some(tls),
        Arc::clone(&shared.connections),
        move |req| {
            let shared = Arc::clone(&handler_shared);
            let endpoint = Arc::clone(&endpoint);
            async move { route(&shared, req, &endpoint).await }
        },
    )
}

async fn route(shared: &Shared, req: Request<Incoming>, endpoint: &str) -> HttpResponse {
    let path = req.uri().path();
    match (req.method(), path) {
        (&Method::POST, TOKEN_PATH) => token(shared, req, endpoint).await,
        (&Method::GET, JWKS_PATH) => {
            json_response(StatusCode::OK, &json!({ "keys": [shared.signing.jwk] }))
        }
        (&Method::GET, OAUTH_METADATA_PATH | OIDC_METADATA_PATH) => metadata(shared, path),
        (_, TOKEN_PATH | JWKS_PATH | OAUTH_METADATA_PATH | OIDC_METADATA_PATH) => {
            let allow = if path == TOKEN_PATH { "POST" } else { "GET" };
            let mut response =
                text_response(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
            response
                .headers_mut()
                .insert(ALLOW, HeaderValue::from_static(allow));
            response
        }
        _ => text_response(StatusCode::NOT_FOUND, "not found\n"),
    }
}
