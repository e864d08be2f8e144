//! DPoP and certificate binding state of the demo servers: the nonce, replay
//! cache, counters and records both the authorization server and the echo API
//! keep, plus the token endpoint's binding step (RFC 9449 §5, RFC 8705 §3) and
//! the authorization server's DPoP knobs.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hyper::header::{HeaderName, HeaderValue};
use serde_json::{json, Value};

use crate::auth_server::{AuthServer, Shared};
use crate::dpop::{cert_thumbprint, peek_proof, verify_proof, ProofError, ProofInfo, ReplayCache};
use crate::token_endpoint::OAuthError;
use crate::{lock, HttpResponse, PeerCertificates};

/// The `DPoP` request header carrying a proof.
pub(super) const DPOP: HeaderName = HeaderName::from_static("dpop");
/// The `DPoP-Nonce` response header.
pub(super) const DPOP_NONCE: HeaderName = HeaderName::from_static("dpop-nonce");

/// DPoP knobs, records and state of one server.
pub(super) struct DpopState {
    pub(super) replay: ReplayCache,
    pub(super) proofs: AtomicUsize,
    pub(super) challenges: AtomicUsize,
    pub(super) nonce_required: AtomicBool,
    /// Authorization server only: answer `token_type: Bearer` even for DPoP.
    pub(super) answers_bearer: AtomicBool,
    /// Authorization server only: bind tokens requested with a client
    /// certificate to it (`cnf["x5t#S256"]`).
    pub(super) bind_certificates: AtomicBool,
    nonce: Mutex<String>,
    last_proof: Mutex<Option<Value>>,
}

impl Default for DpopState {
    fn default() -> Self {
        DpopState {
            replay: ReplayCache::new(),
            proofs: AtomicUsize::new(0),
            challenges: AtomicUsize::new(0),
            nonce_required: AtomicBool::new(false),
            answers_bearer: AtomicBool::new(false),
            bind_certificates: AtomicBool::new(false),
            nonce: Mutex::new(fresh_nonce()),
            last_proof: Mutex::new(None),
        }
    }
}

fn fresh_nonce() -> String {
    URL_SAFE_NO_PAD.encode(rand::random::<[u8; 16]>())
}

impl DpopState {
    /// The current nonce.
    pub(super) fn nonce(&self) -> String {
        lock(&self.nonce).clone()
    }

    /// Replaces the nonce with a fresh one and returns it.
    pub(super) fn rotate_nonce(&self) -> String {
        let nonce = fresh_nonce();
        *lock(&self.nonce) = nonce.clone();
        nonce
    }

    /// Whether proofs must carry the current nonce.
    pub(super) fn nonce_required(&self) -> bool {
        self.nonce_required.load(Ordering::SeqCst)
    }

    /// The last proof seen, as `{"header": ..., "claims": ...}`.
    pub(super) fn last_proof(&self) -> Option<Value> {
        lock(&self.last_proof).clone()
    }

    /// Counts and records the `DPoP` headers of a request; returns the single
    /// proof, `Ok(None)` without one, `Err` when repeated or not text.
    pub(super) fn observe(&self, values: &[HeaderValue]) -> Result<Option<String>, String> {
        if values.is_empty() {
            return Ok(None);
        }
        self.proofs.fetch_add(1, Ordering::SeqCst);
        let proof = values[0].to_str().map_err(|_| "DPoP header is not text")?;
        *lock(&self.last_proof) = Some(
            peek_proof(proof).unwrap_or_else(|why| json!({ "unparsable": why, "raw": proof })),
        );
        if values.len() > 1 {
            return Err("more than one DPoP header".into());
        }
        Ok(Some(proof.to_string()))
    }

    /// Verifies `proof` with this server's nonce policy and replay cache, counting
    /// nonce challenges.
    pub(super) fn verify(
        &self,
        proof: &str,
        htm: &str,
        htu: &str,
        access_token: Option<&str>,
    ) -> Result<ProofInfo, ProofError> {
        let nonce = self.nonce_required().then(|| self.nonce());
        let result = verify_proof(
            proof,
            htm,
            htu,
            access_token,
            nonce.as_deref(),
            &self.replay,
        );
        if result == Err(ProofError::UseNonce) {
            self.challenges.fetch_add(1, Ordering::SeqCst);
        }
        result
    }

    /// Adds `DPoP-Nonce: <current nonce>` to `response` when nonces are required.
    pub(super) fn add_nonce(&self, response: &mut HttpResponse) {
        if self.nonce_required() {
            if let Ok(value) = HeaderValue::from_str(&self.nonce()) {
                response.headers_mut().insert(DPOP_NONCE, value);
            }
        }
    }
}

/// How a token request binds the token it gets (RFC 9449 §5, RFC 8705 §3).
#[derive(Debug, Default, Clone)]
pub(super) struct Binding {
    /// The `cnf` claim to put into the access token.
    pub(super) cnf: Option<Value>,
    /// A valid DPoP proof came: answer `token_type: DPoP`.
    pub(super) dpop: bool,
}

impl Binding {
    /// The `token_type` of the token response.
    pub(super) fn token_type(&self, shared: &Shared) -> &'static str {
        match self.dpop && !shared.dpop.answers_bearer.load(Ordering::SeqCst) {
            true => "DPoP",
            false => "Bearer",
        }
    }
}

/// Checks the proof (if any) of a token request that arrived at `endpoint` and
/// works out the token binding; `Err` is the error answer (400
/// `invalid_dpop_proof` or `use_dpop_nonce` with a `DPoP-Nonce` header).
pub(super) fn bind(
    shared: &Shared,
    proof: Result<Option<String>, String>,
    endpoint: &str,
    peer: &PeerCertificates,
) -> Result<Binding, Box<HttpResponse>> {
    let state = &shared.dpop;
    let mut binding = Binding::default();
    let mut cnf = serde_json::Map::new();
    let invalid = |why: String| {
        let refusal = OAuthError::bad_request("invalid_dpop_proof", why);
        let mut response = refusal.into_response();
        state.add_nonce(&mut response);
        Box::new(response)
    };
    if let Some(proof) = proof.map_err(invalid)? {
        match state.verify(&proof, "POST", endpoint, None) {
            Ok(info) => {
                binding.dpop = true;
                cnf.insert("jkt".into(), json!(info.jkt));
            }
            Err(ProofError::UseNonce) => {
                let why = "a DPoP nonce is required: use the DPoP-Nonce header";
                let mut response = OAuthError::bad_request("use_dpop_nonce", why).into_response();
                if let Ok(value) = HeaderValue::from_str(&state.nonce()) {
                    response.headers_mut().insert(DPOP_NONCE, value);
                }
                return Err(Box::new(response));
            }
            Err(ProofError::Invalid(why)) => return Err(invalid(why)),
        }
    }
    let bind_certificates = state.bind_certificates.load(Ordering::SeqCst);
    if let Some(cert) = peer.0.first().filter(|_| bind_certificates) {
        cnf.insert("x5t#S256".into(), json!(cert_thumbprint(cert)));
    }
    binding.cnf = (!cnf.is_empty()).then_some(Value::Object(cnf));
    Ok(binding)
}

impl AuthServer {
    /// When on, DPoP proofs at the token endpoint must carry the current nonce
    /// (else `400 use_dpop_nonce` with `DPoP-Nonce`), and every token answer
    /// carries `DPoP-Nonce`. Default off.
    pub fn set_dpop_nonce_required(&self, on: bool) {
        self.shared.dpop.nonce_required.store(on, Ordering::SeqCst);
    }

    /// When on, requests with a valid DPoP proof still get `token_type: Bearer`
    /// (the token stays DPoP-bound), to test a client's insistence on DPoP.
    pub fn set_dpop_answers_bearer(&self, on: bool) {
        self.shared.dpop.answers_bearer.store(on, Ordering::SeqCst);
    }

    /// When on, tokens requested over the mTLS alias with a client certificate
    /// (whatever the client authentication method) are bound to that certificate:
    /// `cnf["x5t#S256"]` (RFC 8705 §3), which the echo API then enforces. Default
    /// off, so tokens fetched over the alias stay plain Bearer tokens.
    pub fn set_certificate_bound_tokens(&self, on: bool) {
        self.shared
            .dpop
            .bind_certificates
            .store(on, Ordering::SeqCst);
    }

    /// The current DPoP nonce of the token endpoint.
    pub fn dpop_nonce(&self) -> String {
        self.shared.dpop.nonce()
    }

    /// Replaces the DPoP nonce (proofs with the old one get `use_dpop_nonce`).
    pub fn rotate_dpop_nonce(&self) -> String {
        self.shared.dpop.rotate_nonce()
    }

    /// How many token requests carried a `DPoP` header (any outcome).
    pub fn dpop_proofs(&self) -> usize {
        self.shared.dpop.proofs.load(Ordering::SeqCst)
    }

    /// How many `use_dpop_nonce` challenges the token endpoint answered.
    pub fn dpop_nonce_challenges(&self) -> usize {
        self.shared.dpop.challenges.load(Ordering::SeqCst)
    }

    /// The last DPoP proof received (verified or not), as
    /// `{"header": {...}, "claims": {...}}`.
    pub fn last_dpop_proof(&self) -> Option<Value> {
        self.shared.dpop.last_proof()
    }
}
