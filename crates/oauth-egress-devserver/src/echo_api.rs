//! A protected API that verifies access tokens and echoes what it saw.
//!
//! It plays the upstream the proxy adds tokens for: in the demo its answers show
//! which identity and scope arrived, and in tests its records show exactly what the
//! proxy forwarded. Revocation and reject-all switches exercise the proxy's 401
//! handling; the connection counter shows pooling.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, AUTHORIZATION, HOST, WWW_AUTHENTICATE};
use hyper::{Request, StatusCode};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::dpop_state::{DpopState, DPOP};
use crate::echo_dpop::{check_binding, parse_authorization, BindingDenial, Possession};
use crate::echo_upgrade::{switch_protocols, upgrade_protocol};
use crate::{
    header_safe, json_response, spawn_server, text_response, AbortOnDrop, BoxError, Claims,
    HttpResponse, PeerCertificates, TokenVerifier,
};

/// Largest request body the echo API buffers.
const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

/// One request as the echo API received it (recorded whatever the outcome).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// Request method, e.g. `GET`.
    pub method: String,
    /// Path and query, e.g. `/v1/items?x=1`.
    pub path: String,
    /// The `Host` header, else the URI authority (h2 `:authority`).
    pub host: Option<String>,
    /// The raw `Authorization` header, if any.
    pub authorization: Option<String>,
    /// The full request body.
    pub body: Bytes,
    /// The `jti` of the presented token, when its signature and claims checked out.
    pub jti: Option<String>,
    /// The status the API answered with.
    pub status: u16,
    /// HTTP version, e.g. `HTTP/1.1` or `HTTP/2.0`.
    pub version: String,
    /// A valid DPoP proof for a DPoP-bound token was checked.
    pub dpop: bool,
    /// The request was answered with a `use_dpop_nonce` challenge.
    pub dpop_nonce_challenged: bool,
    /// Every `Host` header, in order (a proxy must send at most one).
    pub hosts: Vec<String>,
    /// How many `DPoP` request headers arrived (a proxy sends one only with a DPoP token).
    pub dpop_headers: usize,
    /// Every request header, as (name, value) pairs (values lossily as text).
    pub headers: Vec<(String, String)>,
    /// The request trailers, as (name, value) pairs.
    pub trailers: Vec<(String, String)>,
    /// The `Proxy-Authorization` header, if any (a proxy must never forward it).
    pub proxy_authorization: Option<String>,
}

/// At most this many requests are kept for [`EchoApi::seen`].
const MAX_SEEN: usize = 10_000;

struct Shared {
    verifier: Option<TokenVerifier>,
    audience: Option<String>,
    required_scope: Option<String>,
    requests: AtomicUsize,
    connections: Arc<AtomicUsize>,
    seen: Mutex<Vec<Seen>>,
    revoked: Mutex<HashSet<String>>,
    reject_all: AtomicBool,
    /// Path prefixes answered 401 with this RFC 6750 `error`, whatever the token.
    refused_paths: Mutex<Vec<(String, String)>>,
    /// Refuse tokens from the headers alone, before reading the body (as many APIs do).
    refuse_before_body: AtomicBool,
    /// Never sent on; resolves with an error once [`EchoApi`] is dropped, which
    /// ends the echo loops of upgraded connections.
    shutdown: watch::Receiver<()>,
    /// DPoP nonce, replay cache, knobs and records.
    dpop: DpopState,
    /// `https` with TLS, else `http` (for the expected `htu` of proofs).
    scheme: &'static str,
}

/// Locks `mutex`, ignoring poisoning (the data stays usable for records).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A running echo API; stops (including upgraded connections) when dropped.
pub struct EchoApi {
    /// The socket address it listens on.
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    _task: AbortOnDrop,
    _shutdown: watch::Sender<()>,
}

impl EchoApi {
    /// Serves on `listener`. `tls` `None` means plain HTTP/1.1; with TLS both
    /// HTTP/1.1 and h2 are served. `verifier` `None` means no auth is required
    /// (echo only); otherwise a Bearer token valid for `audience` (if set) and
    /// carrying `required_scope` (if set) is required.
    pub async fn start(
        listener: TcpListener,
        tls: Option<Arc<rustls::ServerConfig>>,
        verifier: Option<TokenVerifier>,
        audience: Option<String>,
        required_scope: Option<String>,
    ) -> Result<EchoApi, BoxError> {
        let addr = listener.local_addr()?;
        let (shutdown_tx, shutdown_rx) = watch::channel(());
        let shared = Arc::new(Shared {
            verifier,
            audience,
            required_scope,
            requests: AtomicUsize::new(0),
            connections: Arc::new(AtomicUsize::new(0)),
            seen: Mutex::new(Vec::new()),
            revoked: Mutex::new(HashSet::new()),
            reject_all: AtomicBool::new(false),
            refused_paths: Mutex::new(Vec::new()),
            refuse_before_body: AtomicBool::new(false),
            shutdown: shutdown_rx,
            dpop: DpopState::default(),
            scheme: if tls.is_some() { "https" } else { "http" },
        });
        let handler_shared = Arc::clone(&shared);
        let task = spawn_server(listener, tls, Arc::clone(&shared.connections), move |req| {
            let shared = Arc::clone(&handler_shared);
            async move { handle(&shared, req).await }
        });
        tracing::info!(%addr, "echo API listening");
        Ok(EchoApi {
            addr,
            shared,
            _task: task,
            _shutdown: shutdown_tx,
        })
    }

    /// How many requests arrived (any outcome).
    pub fn requests(&self) -> usize {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// Every request received so far, oldest first.
    pub fn seen(&self) -> Vec<Seen> {
        lock(&self.shared.seen).clone()
    }

    /// Revokes the token with this `jti`: it now gets 401 (tests the proxy's 401 retry).
    pub fn revoke(&self, jti: &str) {
        lock(&self.shared.revoked).insert(jti.to_string());
    }

    /// When on, every request gets 401 (a permanent 401 the proxy cannot fix).
    pub fn set_reject_all(&self, on: bool) {
        self.shared.reject_all.store(on, Ordering::SeqCst);
    }

    /// Requests whose path starts with `prefix` get 401 with `WWW-Authenticate: Bearer
    /// error="<error>"`, valid token or not (a path that refuses every token; with
    /// `insufficient_scope` or `invalid_request`, one that a new token cannot fix).
    pub fn refuse_path(&self, prefix: &str, error: &str) {
        lock(&self.shared.refused_paths).push((prefix.to_string(), error.to_string()));
    }

    /// When on, a refused token is answered from the request headers, before the body is
    /// read (the 401 can arrive while the caller is still sending).
    pub fn set_refuse_before_body(&self, on: bool) {
        self.shared.refuse_before_body.store(on, Ordering::SeqCst);
    }

    /// How many TCP connections were accepted (shows the proxy's pooling).
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// The DPoP state (knobs in `echo_dpop.rs`).
    pub(super) fn dpop(&self) -> &DpopState {
        &self.shared.dpop
    }
}

async fn handle(shared: &Shared, mut req: Request<Incoming>) -> HttpResponse {
    shared.requests.fetch_add(1, Ordering::SeqCst);
    let header = |name| {
        req.headers()
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
            .map(str::to_string)
    };
    let host = header(HOST).or_else(|| req.uri().authority().map(|a| a.to_string()));
    let authorization = header(AUTHORIZATION);
    let mut seen = Seen {
        method: req.method().to_string(),
        path: req
            .uri()
            .path_and_query()
            .map_or_else(|| req.uri().path().to_string(), |pq| pq.to_string()),
        host,
        authorization,
        body: Bytes::new(),
        jti: None,
        status: 0,
        version: format!("{:?}", req.version()),
        dpop: false,
        dpop_nonce_challenged: false,
        hosts: req
            .headers()
            .get_all(HOST)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect(),
        trailers: Vec::new(),
        proxy_authorization: header(hyper::header::PROXY_AUTHORIZATION),
        headers: req
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        dpop_headers: req.headers().get_all(DPOP).iter().count(),
    };
    let dpop_values: Vec<HeaderValue> = req.headers().get_all(DPOP).iter().cloned().collect();
    let proof = shared.dpop.observe(&dpop_values);
    let htu = seen
        .host
        .as_ref()
        .map(|host| format!("{}://{host}{}", shared.scheme, req.uri().path()));
    let peer = req
        .extensions()
        .get::<PeerCertificates>()
        .cloned()
        .unwrap_or_default();
    let method = seen.method.clone();
    let possession = Possession {
        proof,
        method: &method,
        htu,
        peer: &peer,
    };
    let upgrade = upgrade_protocol(&req);
    let on_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut req));

    let refused_path = lock(&shared.refused_paths)
        .iter()
        .find(|(prefix, _)| seen.path.starts_with(prefix.as_str()))
        .map(|(_, error)| error.clone());
    // Decided from the headers alone: a refused path, or (with the knob) the token. A token
    // checked here is not checked again (a DPoP proof may be used once).
    let mut checked = None;
    let early = if let Some(error) = refused_path {
        Some(challenge_401(&error, "this path refuses every token"))
    } else if shared.refuse_before_body.load(Ordering::SeqCst) {
        match authorize(shared, seen.authorization.as_deref(), &possession) {
            Ok(ok) => {
                checked = Some(Ok(ok));
                None
            }
            Err((denial, jti)) => {
                seen.jti = jti;
                Some(denial.response())
            }
        }
    } else {
        None
    };
    let response = if let Some(early) = early {
        early
    } else {
        match Limited::new(req.into_body(), MAX_BODY_BYTES)
            .collect()
            .await
        {
            Err(_) => text_response(
                StatusCode::BAD_REQUEST,
                "request body unreadable or too large\n",
            ),
            Ok(collected) => {
                seen.trailers = collected
                    .trailers()
                    .map(|t| {
                        t.iter()
                            .map(|(k, v)| {
                                let value = String::from_utf8_lossy(v.as_bytes()).into_owned();
                                (k.as_str().to_string(), value)
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                seen.body = collected.to_bytes();
                let checked = checked.unwrap_or_else(|| {
                    authorize(shared, seen.authorization.as_deref(), &possession)
                });
                match checked {
                    Err((denial, jti)) => {
                        seen.jti = jti;
                        seen.dpop_nonce_challenged =
                            matches!(denial, Denial::Binding(BindingDenial::UseNonce));
                        denial.response()
                    }
                    Ok((claims, dpop)) => {
                        seen.jti = claims.as_ref().map(|c| c.jti.clone());
                        seen.dpop = dpop;
                        match (upgrade, on_upgrade) {
                            (Some(protocol), Some(on_upgrade)) => {
                                switch_protocols(shared.shutdown.clone(), protocol, on_upgrade)
                            }
                            _ => echo(&seen, claims.as_ref()),
                        }
                    }
                }
            }
        }
    };
    let mut response = response;
    shared.dpop.add_nonce(&mut response);
    seen.status = response.status().as_u16();
    let mut records = lock(&shared.seen);
    if records.len() >= MAX_SEEN {
        // Keep the newest half: a long demo or benchmark must not grow without bound.
        records.drain(..MAX_SEEN / 2);
    }
    records.push(seen);
    response
}

/// Decides whether the request may pass. On refusal also returns the token's
/// `jti` when the token itself was genuine (revoked, reject-all, scope).
/// On success also tells whether a DPoP proof was verified.
fn authorize(
    shared: &Shared,
    authorization: Option<&str>,
    possession: &Possession<'_>,
) -> Result<(Option<Claims>, bool), (Denial, Option<String>)> {
    let reject_all = shared.reject_all.load(Ordering::SeqCst);
    let Some(verifier) = &shared.verifier else {
        if reject_all {
            let why = "this API currently rejects every request";
            return Err((Denial::Invalid(why.into()), None));
        }
        return Ok((None, false));
    };
    let Some((scheme, token)) = authorization.and_then(parse_authorization) else {
        return Err((Denial::NoToken, None));
    };
    let claims = verifier
        .verify(token, shared.audience.as_deref(), None)
        .map_err(|why| (Denial::Invalid(why), None))?;
    let jti = Some(claims.jti.clone());
    let dpop = check_binding(&shared.dpop, &claims, scheme, token, possession)
        .map_err(|denial| (Denial::Binding(denial), jti.clone()))?;
    if reject_all {
        let why = "this API currently rejects every token";
        return Err((Denial::Invalid(why.into()), jti));
    }
    if lock(&shared.revoked).contains(&claims.jti) {
        return Err((Denial::Invalid("the token has been revoked".into()), jti));
    }
    if let Some(scope) = &shared.required_scope {
        if !claims.has_scope(scope) {
            return Err((Denial::Scope(scope.clone()), jti));
        }
    }
    Ok((Some(claims), dpop))
}

/// Why a request was refused.
enum Denial {
    /// No Bearer token at all: 401 with a bare `Bearer` challenge.
    NoToken,
    /// Bad, expired, revoked or refused token: 401 `invalid_token` with this reason.
    Invalid(String),
    /// Genuine token without this scope: 403 `insufficient_scope`.
    Scope(String),
    /// A sender-constrained token whose binding does not hold (DPoP, mTLS).
    Binding(BindingDenial),
}

impl Denial {
    fn response(self) -> HttpResponse {
        match self {
            Denial::NoToken => bearer_challenge(),
            Denial::Invalid(why) => invalid_token(&why),
            Denial::Scope(scope) => insufficient_scope(&scope),
            Denial::Binding(denial) => denial.response(),
        }
    }
}

/// 401 without an error code: the request carried no Bearer token (RFC 6750 §3.1).
fn bearer_challenge() -> HttpResponse {
    let body =
        json!({ "error": "unauthorized", "error_description": "a Bearer token is required" });
    let mut response = json_response(StatusCode::UNAUTHORIZED, &body);
    response
        .headers_mut()
        .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

/// 401 `invalid_token` with the reason in the challenge and the JSON body.
fn invalid_token(why: &str) -> HttpResponse {
    let body = json!({ "error": "invalid_token", "error_description": why });
    let challenge = format!(
        "Bearer error=\"invalid_token\", error_description=\"{}\"",
        header_safe(why)
    );
    with_challenge(json_response(StatusCode::UNAUTHORIZED, &body), &challenge)
}

/// 403 `insufficient_scope` (RFC 6750 §3.1): a new token for the same scope won't help.
fn insufficient_scope(scope: &str) -> HttpResponse {
    let why = format!("the token lacks scope {scope}");
    let body = json!({ "error": "insufficient_scope", "error_description": why, "scope": scope });
    let challenge = format!(
        "Bearer error=\"insufficient_scope\", scope=\"{}\"",
        header_safe(scope)
    );
    with_challenge(json_response(StatusCode::FORBIDDEN, &body), &challenge)
}

/// 401 with a Bearer challenge naming `error` (RFC 6750 §3.1).
fn challenge_401(error: &str, why: &str) -> HttpResponse {
    let body = json!({ "error": error, "error_description": why });
    let challenge = format!("Bearer error=\"{}\"", header_safe(error));
    with_challenge(json_response(StatusCode::UNAUTHORIZED, &body), &challenge)
}

fn with_challenge(mut response: HttpResponse, challenge: &str) -> HttpResponse {
    let value = HeaderValue::from_str(challenge).unwrap_or(HeaderValue::from_static("Bearer"));
    response.headers_mut().insert(WWW_AUTHENTICATE, value);
    response
}

/// The 200 answer: what arrived and which token identity it carried.
fn echo(seen: &Seen, claims: Option<&Claims>) -> HttpResponse {
    let body = json!({
        "method": seen.method,
        "path": seen.path,
        "host": seen.host,
        "sub": claims.map(|c| &c.sub),
        "client_id": claims.map(|c| &c.client_id),
        "scope": claims.and_then(|c| c.scope.as_ref()),
        "aud": claims.and_then(|c| c.aud.as_ref()),
        "jti": claims.map(|c| &c.jti),
        "body_bytes": seen.body.len(),
        "version": seen.version,
    });
    json_response(StatusCode::OK, &body)
}
