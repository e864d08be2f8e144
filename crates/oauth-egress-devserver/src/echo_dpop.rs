//! Sender-constrained tokens at the echo API: DPoP-bound tokens (RFC 9449 §7)
//! must come with the `DPoP` scheme and a proof of the bound key, certificate-
//! bound tokens (RFC 8705 §3) over a TLS connection with the bound client
//! certificate. Also the DPoP knobs of [`EchoApi`].

use std::sync::atomic::Ordering;

use hyper::header::{HeaderValue, WWW_AUTHENTICATE};
use hyper::StatusCode;
use serde_json::{json, Value};

use crate::dpop::{cert_thumbprint, ProofError, SUPPORTED_ALGS};
use crate::dpop_state::DpopState;
use crate::echo_api::EchoApi;
use crate::{header_safe, json_response, Claims, HttpResponse, PeerCertificates};

/// The authorization scheme a token arrived with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Scheme {
    /// `Authorization: Bearer <token>` (RFC 6750).
    Bearer,
    /// `Authorization: DPoP <token>` (RFC 9449 §7.1).
    Dpop,
}

/// The scheme and token of an `Authorization: Bearer|DPoP <token>` header.
pub(super) fn parse_authorization(value: &str) -> Option<(Scheme, &str)> {
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    if token.is_empty() {
        return None;
    }
    if scheme.eq_ignore_ascii_case("bearer") {
        Some((Scheme::Bearer, token))
    } else if scheme.eq_ignore_ascii_case("dpop") {
        Some((Scheme::Dpop, token))
    } else {
        None
    }
}

/// What a request offers beyond its token to prove possession.
pub(super) struct Possession<'a> {
    /// The `DPoP` header: the single proof, none, or why it is unusable.
    pub(super) proof: Result<Option<String>, String>,
    /// The request method (the proof's expected `htm`).
    pub(super) method: &'a str,
    /// `{scheme}://{Host}{path}` (the proof's expected `htu`); `None` without a host.
    pub(super) htu: Option<String>,
    /// The client certificates of the TLS connection.
    pub(super) peer: &'a PeerCertificates,
}

/// A refusal of a sender-constrained token.
#[derive(Debug)]
pub(super) enum BindingDenial {
    /// The DPoP proof is missing or invalid: 401 `invalid_dpop_proof`.
    Proof(String),
    /// The proof lacks the current nonce: 401 `use_dpop_nonce`.
    UseNonce,
    /// The token's binding does not hold (wrong scheme, key or certificate):
    /// 401 `invalid_token` with a `DPoP` challenge.
    Token(String),
}

impl BindingDenial {
    /// The 401 answer (the caller adds `DPoP-Nonce` when nonces are required).
    pub(super) fn response(&self) -> HttpResponse {
        let (error, why) = match self {
            BindingDenial::Proof(why) => ("invalid_dpop_proof", why.as_str()),
            BindingDenial::UseNonce => ("use_dpop_nonce", "a DPoP nonce is required"),
            BindingDenial::Token(why) => ("invalid_token", why.as_str()),
        };
        let body = json!({ "error": error, "error_description": why });
        let challenge = format!(
            "DPoP error=\"{error}\", error_description=\"{}\", algs=\"{SUPPORTED_ALGS}\"",
            header_safe(why)
        );
        let mut response = json_response(StatusCode::UNAUTHORIZED, &body);
        let value = HeaderValue::from_str(&challenge).unwrap_or(HeaderValue::from_static("DPoP"));
        response.headers_mut().insert(WWW_AUTHENTICATE, value);
        response
    }
}

/// Checks that the token in `claims`, presented with `scheme` as `token`, is used
/// by its holder: `cnf.jkt` needs the `DPoP` scheme and a valid proof of that
/// key; `cnf["x5t#S256"]` needs that client certificate on the connection; the
/// `DPoP` scheme needs a DPoP-bound token. Returns whether a proof was verified.
pub(super) fn check_binding(
    dpop: &DpopState,
    claims: &Claims,
    scheme: Scheme,
    token: &str,
    possession: &Possession<'_>,
) -> Result<bool, BindingDenial> {
    let cnf = claims.cnf.as_ref();
    if let Some(x5t) = cnf.and_then(|c| c.get("x5t#S256")) {
        let presented = possession.peer.0.first().map(|c| cert_thumbprint(c));
        match presented {
            None => {
                let why = "certificate-bound token: no client certificate on this connection";
                return Err(BindingDenial::Token(why.into()));
            }
            Some(thumbprint) if x5t.as_str() != Some(thumbprint.as_str()) => {
                let why = "certificate-bound token: the client certificate does not match";
                return Err(BindingDenial::Token(why.into()));
            }
            Some(_) => {}
        }
    }
    let jkt = cnf.and_then(|c| c.get("jkt"));
    match (scheme, jkt) {
        (Scheme::Bearer, None) => Ok(false),
        (Scheme::Bearer, Some(_)) => Err(BindingDenial::Token(
            "DPoP-bound token presented with the Bearer scheme".into(),
        )),
        (Scheme::Dpop, None) => Err(BindingDenial::Token(
            "token presented with the DPoP scheme is not DPoP-bound".into(),
        )),
        (Scheme::Dpop, Some(jkt)) => {
            let proof = match &possession.proof {
                Ok(Some(proof)) => proof,
                Ok(None) => return Err(BindingDenial::Proof("DPoP proof missing".into())),
                Err(why) => return Err(BindingDenial::Proof(why.clone())),
            };
            let Some(htu) = &possession.htu else {
                return Err(BindingDenial::Proof("no Host to check htu against".into()));
            };
            let info = dpop
                .verify(proof, possession.method, htu, Some(token))
                .map_err(|err| match err {
                    ProofError::UseNonce => BindingDenial::UseNonce,
                    ProofError::Invalid(why) => BindingDenial::Proof(why),
                })?;
            if jkt.as_str() != Some(info.jkt.as_str()) {
                let why = "the DPoP proof key does not match the token's cnf.jkt";
                return Err(BindingDenial::Proof(why.into()));
            }
            Ok(true)
        }
    }
}

impl EchoApi {
    /// When on, DPoP proofs must carry the current nonce (else `401` with
    /// `WWW-Authenticate: DPoP error="use_dpop_nonce"` and `DPoP-Nonce`), and
    /// every response carries `DPoP-Nonce`. Default off.
    pub fn set_dpop_nonce_required(&self, on: bool) {
        self.dpop().nonce_required.store(on, Ordering::SeqCst);
    }

    /// The current DPoP nonce.
    pub fn dpop_nonce(&self) -> String {
        self.dpop().nonce()
    }

    /// Replaces the DPoP nonce (proofs with the old one get `use_dpop_nonce`).
    pub fn rotate_dpop_nonce(&self) -> String {
        self.dpop().rotate_nonce()
    }

    /// How many requests carried a `DPoP` header (any outcome).
    pub fn dpop_proofs(&self) -> usize {
        self.dpop().proofs.load(Ordering::SeqCst)
    }

    /// How many `use_dpop_nonce` challenges were answered.
    pub fn dpop_nonce_challenges(&self) -> usize {
        self.dpop().challenges.load(Ordering::SeqCst)
    }

    /// The last DPoP proof received (verified or not), as
    /// `{"header": {...}, "claims": {...}}`.
    pub fn last_dpop_proof(&self) -> Option<Value> {
        self.dpop().last_proof()
    }
}
