//! The token request: where it goes (fixed or discovered endpoint), over which client (plain,
//! or mutual TLS), with which retries, and the checks on the answer.
//!
//! Token requests use their own reqwest clients: `.no_proxy()` (the environment's
//! `HTTPS_PROXY` may point at this very proxy), no redirects (a redirect could carry the
//! client secret elsewhere), bounded timeouts, and the same trust roots as upstream TLS.
//!
//! Retries: network errors, 5xx and 429 are retried with exponential backoff and jitter,
//! honouring `Retry-After`, until `tokens.retry_max_elapsed_ms` has passed since the first
//! attempt. A refresh-token request is retried only when the server cannot have acted on it
//! (the connection was never made, or it answered 503/429): after a timeout or a 500 the
//! server may already have rotated the token, and resending the old one would look like
//! token theft to a server that revokes on reuse.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rand::Rng;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use reqwest::StatusCode;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use tokio::time::Instant;
use zeroize::Zeroize;

use super::discovery::{Discovery, DiscoveryError};
use super::refresh_store::RefreshStore;
use super::{client_auth, grant, AccessToken, TokenError, TokenRequest};
use crate::config::{ClientConfig, Endpoint, Grant, TokenSettings};
use crate::sender::dpop::{self, DpopKey, NonceStore};

/// Largest token-endpoint answer read; anything bigger is not a token response.
const MAX_RESPONSE_BYTES: usize = 256 * 1024;
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Sends token requests.
pub struct Fetcher {
    /// DPoP keys from `dpop_key` files, by client.
    dpop_keys: HashMap<String, Arc<DpopKey>>,
    /// DPoP keys generated on first use (no `dpop_key`), by client; kept across reloads.
    generated_dpop_keys: std::sync::Mutex<HashMap<String, Arc<DpopKey>>>,
    nonces: Arc<NonceStore>,
    http: reqwest::Client,
    mtls: HashMap<String, reqwest::Client>,
    discovery: HashMap<String, Arc<Discovery>>,
    refresh: &'static RefreshStore,
    settings: TokenSettings,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: Option<SecretString>,
    token_type: Option<String>,
    expires_in: Option<serde_json::Value>,
    scope: Option<String>,
}

#[derive(Deserialize)]
struct ErrorResponse {
    error: String,
    error_description: Option<String>,
}

/// One answer from the token endpoint.
struct Answer {
    status: StatusCode,
    content_type: String,
    retry_after: Option<Duration>,
    body: Vec<u8>,
}

impl Answer {
    /// `400` with `error = "use_dpop_nonce"` (RFC 9449 §8).
    fn is_nonce_challenge(&self) -> bool {
        self.status == StatusCode::BAD_REQUEST
            && serde_json::from_slice::<ErrorResponse>(&self.body)
                .is_ok_and(|e| e.error == "use_dpop_nonce")
    }
}

impl Drop for Answer {
    fn drop(&mut self) {
        self.body.zeroize();
    }
}

/// A failed attempt: whether the request can have reached the server.
enum Failed {
    /// No connection was made: safe to resend anything.
    NotSent(TokenError),
    /// Sent, but no complete answer: the server may have acted on it.
    Unknown(TokenError),
    /// An answer that no retry will make usable (too large).
    Final(TokenError),
}

/// Why the token clients could not be built.
#[derive(Debug, thiserror::Error)]
pub enum FetcherError {
    /// A reqwest client could not be built.
    #[error("token client: {0}")]
    Http(#[from] reqwest::Error),
    /// A DPoP key could not be loaded or created.
    #[error("clients.{client}: {source}")]
    Dpop {
        /// The client.
        client: String,
        /// Why.
        source: dpop::DpopError,
    },
    /// A client certificate or key could not be loaded.
    #[error("clients.{client}: {detail}")]
    ClientCert {
        /// The client.
        client: String,
        /// What is wrong.
        detail: String,
    },
}

fn builder(settings: &TokenSettings) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(settings.request_timeout.min(Duration::from_secs(5)))
        .timeout(settings.request_timeout)
        .user_agent(concat!("oauth-egress/", env!("CARGO_PKG_VERSION")))
}

impl Fetcher {
    /// Token clients trusting `roots`; one with a client certificate per mutual-TLS client.
    pub fn new(
        settings: TokenSettings,
        roots: Arc<rustls::RootCertStore>,
        clients: &BTreeMap<String, Arc<ClientConfig>>,
    ) -> Result<Fetcher, FetcherError> {
        let http = builder(&settings)
            .use_preconfigured_tls(crate::tls::client_config(roots.clone()))
            .build()?;
        let mut mtls = HashMap::new();
        let mut discovery = HashMap::new();
        let mut dpop_keys = HashMap::new();
        for client in clients.values() {
            if let Some(path) = &client.dpop_key {
                let key = DpopKey::load_or_create(path).map_err(|source| FetcherError::Dpop {
                    client: client.name.clone(),
                    source,
                })?;
                dpop_keys.insert(client.name.clone(), Arc::new(key));
            }
            if let (Some(cert), Some(key)) = (&client.client_cert, &client.client_key) {
                let tls = crate::tls::client_config_with_identity(roots.clone(), cert, key)
                    .map_err(|err| FetcherError::ClientCert {
                        client: client.name.clone(),
                        detail: err.to_string(),
                    })?;
                mtls.insert(
                    client.name.clone(),
                    builder(&settings).use_preconfigured_tls(tls).build()?,
                );
            }
            if let Endpoint::Discovered(issuer) = &client.endpoint {
                discovery.insert(
                    client.name.clone(),
                    Arc::new(Discovery::new(issuer.clone())),
                );
            }
        }
        Ok(Fetcher {
            dpop_keys,
            generated_dpop_keys: std::sync::Mutex::new(HashMap::new()),
            nonces: Arc::new(NonceStore::default()),
            http,
            mtls,
            discovery,
            refresh: RefreshStore::global(),
            settings,
        })
    }

    /// The DPoP key of a client: its `dpop_key` file, or one generated on first use.
    pub fn dpop_key(&self, client: &str) -> Option<Arc<DpopKey>> {
        if let Some(key) = self.dpop_keys.get(client) {
            return Some(key.clone());
        }
        let mut keys = self
            .generated_dpop_keys
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(key) = keys.get(client) {
            return Some(key.clone());
        }
        match DpopKey::generate() {
            Ok(key) => {
                let key = Arc::new(key);
                keys.insert(client.to_string(), key.clone());
                Some(key)
            }
            Err(err) => {
                tracing::error!(client, error = %err, "cannot generate a DPoP key");
                None
            }
        }
    }

    /// After a reload: a client still without a `dpop_key` file keeps the key `previous`
    /// generated for it, so its DPoP-bound tokens (and the server's view of it) survive.
    pub(super) fn adopt_generated_dpop_key(&self, client: &str, previous: &Fetcher) {
        if self.dpop_keys.contains_key(client) {
            return;
        }
        let old = previous
            .generated_dpop_keys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(client)
            .cloned();
        if let Some(old) = old {
            self.generated_dpop_keys
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(client.to_string())
                .or_insert(old);
        }
    }

    /// The DPoP nonces seen, by origin (shared with resource requests).
    pub fn nonces(&self) -> &Arc<NonceStore> {
        &self.nonces
    }

    fn http_for(&self, client: &ClientConfig) -> &reqwest::Client {
        self.mtls.get(&client.name).unwrap_or(&self.http)
    }

    /// Fetches (or re-uses) the metadata of a discovered client and checks it fits the
    /// client's `auth`. `Ok(None)` for clients with a fixed endpoint.
    pub async fn discover(&self, client: &ClientConfig) -> Result<Option<String>, DiscoveryCheck> {
        let Some(discovery) = self.discovery.get(&client.name) else {
            return Ok(None);
        };
        let metadata = discovery
            .metadata(&self.http)
            .await
            .map_err(DiscoveryCheck::Fetch)?;
        metadata
            .check_auth(client.auth)
            .map_err(DiscoveryCheck::Unsupported)?;
        let mtls =
            client.auth == crate::config::ClientAuth::TlsClientAuth || client.client_cert.is_some();
        Ok(Some(metadata.token_endpoint_for(mtls).to_string()))
    }

    async fn endpoint(&self, client: &ClientConfig) -> Result<String, TokenError> {
        match &client.endpoint {
            Endpoint::Fixed(url) => Ok(url.to_string()),
            Endpoint::Discovered(_) => match self.discover(client).await {
                Ok(Some(endpoint)) => Ok(endpoint),
                Ok(None) => Err(TokenError::Internal {
                    client: client.name.clone(),
                    detail: "no discovery state".into(),
                }),
                Err(err) => Err(TokenError::Discovery {
                    client: client.name.clone(),
                    detail: err.to_string(),
                }),
            },
        }
    }

    fn forget_discovery(&self, client: &ClientConfig) {
        if let Some(d) = self.discovery.get(&client.name) {
            d.forget();
        }
    }

    /// Requests a token. `sent_at` anchors the token's lifetime.
    pub(super) async fn fetch(
        &self,
        request: &TokenRequest,
        sent_at: Instant,
    ) -> Result<AccessToken, TokenError> {
        let started = Instant::now();
        let result = self.fetch_inner(request, sent_at).await;
        let (outcome, error) = match &result {
            Ok(_) => ("ok", None),
            Err(e) => (e.kind(), e.oauth_error()),
        };
        crate::metrics::token_request(&request.client.name, outcome, error, started.elapsed());
        result
    }

    async fn fetch_inner(
        &self,
        request: &TokenRequest,
        sent_at: Instant,
    ) -> Result<AccessToken, TokenError> {
        let client = &request.client;
        let endpoint = self.endpoint(client).await?;
        // One refresh per refresh-token file at a time in the whole process,
        // read → request → write back.
        let refresh_file = match &request.grant {
            Grant::RefreshToken { file } => Some((file.as_path(), self.refresh.file(file))),
            _ => None,
        };
        let mut held = match &refresh_file {
            Some((path, file)) => Some(file.lock(path).await),
            None => None,
        };
        let stored = match held.as_mut() {
            Some(held) => Some(held.current().map_err(|detail| TokenError::Refresh {
                client: client.name.clone(),
                detail,
            })?),
            None => None,
        };
        let is_refresh = stored.is_some();

        let deadline = Instant::now() + self.settings.retry_max_elapsed;
        let mut backoff = FIRST_BACKOFF;
        let mut attempts = 0u32;
        let mut nonce_retried = false;
        let answer = loop {
            attempts += 1;
            let (error, retryable, retry_after) = match self
                .attempt(client, request, &endpoint, stored.as_ref())
                .await
            {
                Ok(answer)
                    if request.dpop.is_some() && !nonce_retried && answer.is_nonce_challenge() =>
                {
                    // RFC 9449 §8: resend once with the nonce the server just gave.
                    nonce_retried = true;
                    continue;
                }
                Ok(answer)
                    if answer.status.is_server_error()
                        || answer.status == StatusCode::TOO_MANY_REQUESTS =>
                {
                    let safe = answer.status == StatusCode::SERVICE_UNAVAILABLE
                        || answer.status == StatusCode::TOO_MANY_REQUESTS;
                    let retry_after = answer.retry_after;
                    let error = self
                        .interpret(client, &endpoint, &answer, sent_at, request)
                        .err();
                    (error, !is_refresh || safe, retry_after)
                }
                Ok(answer) => break answer,
                Err(Failed::NotSent(error)) => {
                    self.forget_discovery(client);
                    (Some(error), true, None)
                }
                Err(Failed::Unknown(error)) => (Some(error), !is_refresh, None),
                Err(Failed::Final(error)) => (Some(error), false, None),
            };
            let error = error.unwrap_or_else(|| TokenError::Internal {
                client: client.name.clone(),
                detail: "retryable answer without an error".into(),
            });
            let wait = retry_after.unwrap_or_else(|| jitter(backoff));
            if !retryable || Instant::now() + wait > deadline {
                if attempts > 1 {
                    tracing::warn!(client = %client.name, attempts, "token request failed; giving up");
                }
                return Err(error);
            }
            tracing::info!(client = %client.name, attempt = attempts, wait_ms = wait.as_millis() as u64, error = %error, "token request failed; retrying");
            tokio::time::sleep(wait).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        };
        // Whatever else the answer holds, a rotated refresh token is the only valid one now:
        // keep it before judging the access token (the old one is spent).
        if let (Some(held), true) = (held.as_mut(), answer.status.is_success()) {
            if let Some(new_refresh) = rotated_refresh_token(&answer.body) {
                if held.rotated(&client.name, new_refresh).is_none() {
                    tracing::info!(client = %client.name, "refresh token rotated and saved");
                }
            }
        }
        self.interpret(client, &endpoint, &answer, sent_at, request)
    }

    async fn attempt(
        &self,
        client: &ClientConfig,
        request: &TokenRequest,
        endpoint: &str,
        refresh_token: Option<&SecretString>,
    ) -> Result<Answer, Failed> {
        let config_error = |detail: String| {
            Failed::NotSent(TokenError::Config {
                client: client.name.clone(),
                detail,
            })
        };
        let auth = client_auth::apply(client, endpoint).map_err(config_error)?;
        let mut fields = grant::form(request, endpoint, refresh_token).map_err(config_error)?;
        fields.extend(auth.form);
        let body = {
            let mut form = form_urlencoded::Serializer::new(String::new());
            for (name, value) in &fields {
                form.append_pair(name, value);
            }
            form.finish()
        };
        let mut builder = self
            .http_for(client)
            .post(endpoint)
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(ACCEPT, "application/json")
            .body(body);
        if let Some(header) = auth.authorization {
            builder = builder.header(AUTHORIZATION, header);
        }
        let origin = endpoint
            .parse::<http::Uri>()
            .map(|u| dpop::origin(&u))
            .unwrap_or_default();
        if let Some(key) = &request.dpop {
            let htu = endpoint
                .parse::<http::Uri>()
                .map(|u| dpop::htu(&u))
                .unwrap_or_default();
            let proof = crate::sender::Proof::new(key.clone(), htu, &self.nonces);
            let mut headers = http::HeaderMap::new();
            crate::sender::inject(&mut headers, &http::Method::POST, None, Some(&proof))
                .map_err(|e| config_error(e.to_string()))?;
            builder = builder.headers(headers);
        }
        let transport = |err: reqwest::Error| {
            let token_error = if err.is_timeout() {
                TokenError::Timeout {
                    client: client.name.clone(),
                    endpoint: endpoint.to_string(),
                    after_ms: self.settings.request_timeout.as_millis(),
                }
            } else {
                TokenError::Unreachable {
                    client: client.name.clone(),
                    endpoint: endpoint.to_string(),
                    detail: crate::error::chain(&err),
                }
            };
            if err.is_connect() {
                Failed::NotSent(token_error)
            } else {
                Failed::Unknown(token_error)
            }
        };
        let mut response = builder.send().await.map_err(transport)?;
        if let Some(nonce) = response.headers().get("dpop-nonce") {
            self.nonces.remember(&origin, nonce);
        }
        let status = response.status();
        let header = |name| {
            response
                .headers()
                .get(name)
                .and_then(|v: &http::HeaderValue| v.to_str().ok())
                .map(str::to_string)
        };
        let content_type = header(CONTENT_TYPE).unwrap_or_else(|| "no content type".into());
        let retry_after = header(RETRY_AFTER).and_then(|v| parse_retry_after(&v));
        let mut answer = Answer {
            status,
            content_type,
            retry_after,
            body: Vec::new(),
        };
        while let Some(chunk) = response.chunk().await.map_err(transport)? {
            if answer.body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                let error = TokenError::BadResponse {
                    client: client.name.clone(),
                    endpoint: endpoint.to_string(),
                    detail: format!(
                        "HTTP {} answer larger than {MAX_RESPONSE_BYTES} bytes",
                        status.as_u16()
                    ),
                };
                return Err(Failed::Final(error));
            }
            answer.body.extend_from_slice(&chunk);
        }
        Ok(answer)
    }

    fn interpret(
        &self,
        client: &ClientConfig,
        endpoint: &str,
        answer: &Answer,
        sent_at: Instant,
        request: &TokenRequest,
    ) -> Result<AccessToken, TokenError> {
        let bad = |detail: String| TokenError::BadResponse {
            client: client.name.clone(),
            endpoint: endpoint.to_string(),
            detail,
        };
        let (status, body) = (answer.status, &answer.body);
        if !status.is_success() {
            return Err(match serde_json::from_slice::<ErrorResponse>(body) {
                Ok(e) => TokenError::OAuth {
                    client: client.name.clone(),
                    endpoint: endpoint.to_string(),
                    status: status.as_u16(),
                    error: clean(&e.error, 64),
                    description: e.error_description.map(|d| clean(&d, 300)),
                },
                Err(_) => TokenError::BadStatus {
                    client: client.name.clone(),
                    endpoint: endpoint.to_string(),
                    status: status.as_u16(),
                    detail: format!("{}, {} bytes", answer.content_type, body.len()),
                },
            });
        }
        let parsed: TokenResponse = serde_json::from_slice(body).map_err(|_| {
            bad(format!(
                "HTTP {} with a body that is not a JSON token response ({}, {} bytes)",
                status.as_u16(),
                answer.content_type,
                body.len()
            ))
        })?;
        let value = parsed
            .access_token
            .ok_or_else(|| bad("no access_token in the answer".into()))?;
        let dpop = request.dpop.is_some();
        let mut as_dpop = false;
        match parsed.token_type.as_deref() {
            Some(t) if t.eq_ignore_ascii_case("dpop") && dpop => as_dpop = true,
            Some(t) if t.eq_ignore_ascii_case("dpop") => {
                return Err(bad(
                    "token_type DPoP, but this route does not use DPoP (set dpop = true)".into(),
                ))
            }
            Some(t) if t.eq_ignore_ascii_case("bearer") && dpop && request.dpop_required => {
                return Err(bad(
                    "the server issued a Bearer token to a DPoP route; refusing it (dpop_required = true)".into(),
                ))
            }
            Some(t) if t.eq_ignore_ascii_case("bearer") => {}
            Some(t) if t.eq_ignore_ascii_case("n_a") => {
                return Err(bad(
                    "token_type N_A: the issued token is not an access token (RFC 8693 §2.2.1); set requested_token_type = \"access_token\"".into(),
                ))
            }
            Some(t) => {
                return Err(bad(format!(
                    "token_type {:?} cannot be sent as a Bearer token",
                    clean(t, 32)
                )))
            }
            None => return Err(bad("no token_type in the answer (RFC 6749 §5.1)".into())),
        }
        let expires_in = match parsed.expires_in {
            None => self.settings.default_expires_in,
            Some(v) => parse_expires_in(&v).ok_or_else(|| {
                bad(format!(
                    "expires_in {v} is not a positive number of seconds"
                ))
            })?,
        };
        // Never outlive the token's own `exp` (a JWT) nor the subject token it was exchanged
        // for: both shorten the lifetime, so the skew and renewal apply to what is left. `exp`
        // counts whole seconds (servers round their clock down), so an own `exp` less than a
        // second short of `expires_in` is that rounding, not a shorter life.
        let now = crate::jose::since_epoch();
        let left = |exp: u64| Duration::from_secs(exp).saturating_sub(now);
        let own = super::assertion::unverified_exp(value.expose_secret())
            .map(left)
            .filter(|left| *left + Duration::from_secs(1) < expires_in);
        let lifetime = [own, request.subject_exp.map(left)]
            .into_iter()
            .flatten()
            .fold(expires_in, Duration::min);
        if lifetime.is_zero() {
            return Err(bad(
                "the access token (or the token it was exchanged for) has already expired by its exp; check the clocks".into(),
            ));
        }
        let (usable_until, refresh_at) = lifetimes(sent_at, lifetime, &self.settings);
        let token = AccessToken::new(value, usable_until, refresh_at, parsed.scope)
            .map_err(|why| bad(why.to_string()))?;
        Ok(if as_dpop { token.into_dpop() } else { token })
    }
}

/// Why a discovered client cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryCheck {
    /// No (acceptable) metadata.
    #[error(transparent)]
    Fetch(DiscoveryError),
    /// The server does not accept the client's `auth`.
    #[error("{0}")]
    Unsupported(String),
}

impl DiscoveryCheck {
    /// Whether this is a configuration error (as opposed to the server not answering).
    pub fn is_misconfiguration(&self) -> bool {
        match self {
            DiscoveryCheck::Fetch(e) => e.is_misconfiguration(),
            DiscoveryCheck::Unsupported(_) => true,
        }
    }
}

/// Full jitter between half and all of `backoff`.
fn jitter(backoff: Duration) -> Duration {
    let half = backoff / 2;
    half + Duration::from_millis(rand::rng().random_range(0..=half.as_millis() as u64))
}

/// `Retry-After` as delta-seconds or an HTTP date.
fn parse_retry_after(value: &str) -> Option<Duration> {
    if let Ok(secs) = value.trim().parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(value.trim()).ok()?;
    Some(
        when.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// `expires_in` as a JSON number or a numeric string (some servers send `"3600"`).
fn parse_expires_in(v: &serde_json::Value) -> Option<Duration> {
    let secs = match v {
        serde_json::Value::Number(n) => n.as_f64()?,
        serde_json::Value::String(s) => s.trim().parse::<f64>().ok()?,
        _ => return None,
    };
    (secs.is_finite() && secs >= 1.0).then(|| Duration::from_secs_f64(secs.min(1e9)))
}

/// The skew is at most this share of a token's lifetime, so a short token is not thrown away
/// early (a 15 s token loses 0.6 s, not half its life).
pub const MAX_SKEW_SHARE: f64 = 0.04;
/// Renewals start at a random point in a window of this share of the lifetime...
const JITTER_SHARE: f64 = 0.02;
/// ...but never wider than this, so a day-long token still renews within minutes of its mark.
const MAX_JITTER: Duration = Duration::from_secs(300);

/// A token's timetable, as offsets from the moment its request was sent.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    /// The token is sent until then, never after.
    pub usable_for: Duration,
    /// From then on, the next caller starts one background renewal.
    pub renew_after: Duration,
}

/// When a token with `lifetime` (its `expires_in`) stops being used and when its renewal
/// starts; `jitter` in `0..=1` picks the point in the renewal window (random in production).
///
/// - usable for `lifetime - skew`, the skew capped at [`MAX_SKEW_SHARE`] of the lifetime
///   (the margin for the proxied request's flight and the resource server's clock);
/// - renewed `timeout` before that (one token request at its slowest, so steady traffic
///   never waits), plus a jitter of up to 2 % of the lifetime (at most 5 minutes) that
///   spreads the renewals of many proxies; lead and jitter together never exceed `ahead`
///   (`refresh_ahead_percent`, at most half) of the lifetime.
///
/// A steady caller therefore renews once per `renew_after`, i.e. at most
/// `1 / (1 - MAX_SKEW_SHARE - ahead)` token requests per lifetime: 1.136 with the default 8 %,
/// for any lifetime. When the lifetime is too short for the whole timeout to fit (under
/// `timeout / (ahead - 2 %)`, 167 s with the defaults), the lead is what fits, and a token
/// endpoint slower than that makes callers wait for the renewal (never use an expired token).
pub fn schedule(
    lifetime: Duration,
    skew: Duration,
    timeout: Duration,
    ahead: f64,
    jitter: f64,
) -> Schedule {
    let skew = skew.min(lifetime.mul_f64(MAX_SKEW_SHARE));
    let usable_for = lifetime - skew;
    let budget = lifetime.mul_f64(ahead.clamp(0.0, 0.5));
    let spread = lifetime
        .mul_f64(JITTER_SHARE)
        .min(budget / 2)
        .min(MAX_JITTER);
    let lead = timeout.min(budget - spread);
    let renew_after = usable_for.saturating_sub(lead + spread.mul_f64(jitter.clamp(0.0, 1.0)));
    Schedule {
        usable_for,
        renew_after,
    }
}

/// [`schedule`] for a token obtained at `sent_at`, with `[tokens]` settings and a random
/// jitter: `(usable_until, refresh_at)`.
pub fn lifetimes(sent_at: Instant, expires_in: Duration, s: &TokenSettings) -> (Instant, Instant) {
    let jitter = rand::rng().random_range(0.0..=1.0);
    let plan = schedule(
        expires_in,
        s.expiry_skew,
        s.request_timeout,
        s.refresh_ahead,
        jitter,
    );
    (sent_at + plan.usable_for, sent_at + plan.renew_after)
}

/// The `refresh_token` of a success answer, whatever else it holds (or lacks).
fn rotated_refresh_token(body: &[u8]) -> Option<SecretString> {
    #[derive(Deserialize)]
    struct Rotated {
        refresh_token: Option<SecretString>,
    }
    serde_json::from_slice::<Rotated>(body)
        .ok()?
        .refresh_token
        .filter(|t| !t.expose_secret().trim().is_empty())
}

/// Strips control characters and shortens text that came from a server.
fn clean(s: &str, max: usize) -> String {
    s.chars().filter(|c| !c.is_control()).take(max).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expires_in_forms() {
        let cases = [
            (serde_json::json!(3600), Some(3600.0)),
            (serde_json::json!("3600"), Some(3600.0)),
            (serde_json::json!(1.5), Some(1.5)),
            (serde_json::json!(0), None),
            (serde_json::json!(-5), None),
            (serde_json::json!("soon"), None),
            (serde_json::json!(null), None),
        ];
        for (v, want) in cases {
            assert_eq!(parse_expires_in(&v).map(|d| d.as_secs_f64()), want, "{v}");
        }
    }

    #[test]
    fn retry_after_forms() {
        assert_eq!(parse_retry_after("3"), Some(Duration::from_secs(3)));
        let later = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(30));
        let parsed = parse_retry_after(&later).unwrap();
        assert!(parsed > Duration::from_secs(25) && parsed <= Duration::from_secs(30));
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn jitter_stays_within_half_and_whole() {
        for _ in 0..100 {
            let j = jitter(Duration::from_millis(400));
            assert!(j >= Duration::from_millis(200) && j <= Duration::from_millis(400));
        }
    }

    #[test]
    fn schedule_cases() {
        let (skew, timeout, ahead) = (Duration::from_secs(60), Duration::from_secs(10), 0.08);
        // (lifetime s, usable s, renew from s (jitter 1), renew until s (jitter 0))
        let cases = [
            (10.0, 9.6, 8.8, 9.0),
            (15.0, 14.4, 13.2, 13.5),
            (60.0, 57.6, 52.8, 54.0),
            (300.0, 288.0, 272.0, 278.0),
            (3600.0, 3540.0, 3458.0, 3530.0),
            (86400.0, 86340.0, 86030.0, 86330.0),
        ];
        for (lifetime, usable, early, late) in cases {
            let l = Duration::from_secs_f64(lifetime);
            let at = |j| schedule(l, skew, timeout, ahead, j);
            let close = |a: Duration, b: f64| (a.as_secs_f64() - b).abs() < 1e-6;
            assert!(
                close(at(0.0).usable_for, usable),
                "usable {lifetime}: {:?}",
                at(0.0)
            );
            assert!(
                close(at(1.0).renew_after, early),
                "early {lifetime}: {:?}",
                at(1.0)
            );
            assert!(
                close(at(0.0).renew_after, late),
                "late {lifetime}: {:?}",
                at(0.0)
            );
            // At most 1.15 token requests per lifetime, and the renewal starts at least the
            // timeout before the usable end whenever the lifetime leaves room for it.
            assert!(
                lifetime / at(1.0).renew_after.as_secs_f64() <= 1.15,
                "{lifetime}"
            );
            if lifetime >= 167.0 {
                assert!(
                    at(0.0).usable_for - at(0.0).renew_after >= timeout,
                    "{lifetime}"
                );
            }
        }
    }

    #[test]
    fn schedule_edges() {
        let s = |l: u64, skew: u64, ahead: f64| {
            schedule(
                Duration::from_secs(l),
                Duration::from_secs(skew),
                Duration::from_secs(10),
                ahead,
                0.5,
            )
        };
        // No skew, no refresh ahead: used to the end, renewed when it ends.
        let p = s(4, 0, 0.0);
        assert_eq!(
            (p.usable_for, p.renew_after),
            (Duration::from_secs(4), Duration::from_secs(4))
        );
        // refresh_ahead is capped at half the lifetime, the skew at 4 %.
        let p = s(100, 3600, 0.99);
        assert_eq!(p.usable_for, Duration::from_secs(96));
        assert_eq!(p.renew_after, Duration::from_secs(85), "{p:?}");
        // A one-second token still has a future.
        let p = s(1, 60, 0.08);
        assert!(
            p.renew_after > Duration::ZERO && p.renew_after < p.usable_for,
            "{p:?}"
        );
    }
}
