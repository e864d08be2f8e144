//! Sender constraints: proof that the caller of a resource holds a key, so a stolen token is
//! useless on its own. `dpop.rs` implements RFC 9449 proofs; [`inject`] is the one place a
//! request gets its credentials, for resource requests (the forwarder) and token requests
//! (the token endpoint) alike.

pub mod credential;
pub mod dpop;

use std::sync::Arc;

use http::header::{HeaderName, HeaderValue, AUTHORIZATION};
use http::{HeaderMap, Method, Uri};

use dpop::{DpopError, DpopKey, NonceStore};

use crate::config::TokenPlacement;

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

/// A token as a request presents it. Implemented by the token cache's `AccessToken`; a trait
/// here so that the sender, which token requests use too, does not depend on the cache.
pub trait Presented {
    /// The `Authorization` value (sensitive), built once per token.
    fn authorization(&self) -> HeaderValue;
    /// The token alone (sensitive bytes: never logged), for a route that places it itself.
    fn bare(&self) -> &[u8];
    /// `Bearer` or `DPoP`.
    fn scheme(&self) -> TokenScheme;
    /// For a DPoP-bound token, the `ath` every proof carries.
    fn ath(&self) -> Option<&str>;
}

/// The `DPoP` request header (RFC 9449 §4.1).
pub(crate) const DPOP: HeaderName = HeaderName::from_static("dpop");

/// What the DPoP proofs of one request are bound to: the key that signs them, the request's
/// `htu`, and the origin whose latest nonce they carry. Built once per request and reused by
/// its resend.
pub struct Proof<'a> {
    key: Arc<DpopKey>,
    htu: String,
    /// `htu[..origin]` is the origin (`scheme://host[:port]`): no second string per request.
    origin: usize,
    nonces: &'a NonceStore,
}

impl<'a> Proof<'a> {
    /// Proofs for a request to `htu` (normalized with [`dpop::htu`]), carrying the nonces
    /// its origin sent.
    pub fn new(key: Arc<DpopKey>, htu: String, nonces: &'a NonceStore) -> Self {
        let origin = dpop::origin_len(&htu);
        Proof {
            key,
            htu,
            origin,
            nonces,
        }
    }

    /// Proofs for a request to `uri`.
    pub fn to(key: Arc<DpopKey>, uri: &Uri, nonces: &'a NonceStore) -> Self {
        Proof::new(key, dpop::htu(uri), nonces)
    }

    /// `scheme://host[:port]` of the request, the key its nonces are kept under.
    fn origin(&self) -> &str {
        &self.htu[..self.origin]
    }

    /// Remembers the `DPoP-Nonce` of a response from this origin, if it sent one.
    pub fn remember_nonce(&self, response: &HeaderMap) {
        if let Some(nonce) = response.get("dpop-nonce") {
            self.nonces.remember(self.origin(), nonce);
        }
    }

    /// A fresh, sensitive `DPoP` header value for `method`, with `ath` for a resource request.
    fn header(&self, method: &Method, ath: Option<&str>) -> Result<HeaderValue, DpopError> {
        let nonce = self.nonces.get(self.origin());
        let proof = self
            .key
            .proof(method.as_str(), &self.htu, ath, nonce.as_deref())?;
        let mut value = HeaderValue::try_from(proof)
            .map_err(|_| DpopError::Crypto("the proof is not a header value".into()))?;
        value.set_sensitive(true);
        Ok(value)
    }
}

/// `token` as `placement` says (`token_header`, `token_scheme`): `scheme token`, or the bare
/// token for an empty scheme; sensitive, in a buffer wiped when the last clone goes.
pub fn placed(token: &dyn Presented, placement: &TokenPlacement) -> Result<HeaderValue, DpopError> {
    let bare = token.bare();
    let mut bytes =
        zeroize::Zeroizing::new(Vec::with_capacity(placement.scheme.len() + 1 + bare.len()));
    if !placement.scheme.is_empty() {
        bytes.extend_from_slice(placement.scheme.as_bytes());
        bytes.push(b' ');
    }
    bytes.extend_from_slice(bare);
    let mut value = HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(bytes))
        .map_err(|_| DpopError::Crypto("the token is not a header value".into()))?;
    value.set_sensitive(true);
    Ok(value)
}

/// Puts a request's credentials in `headers`, replacing any: `token` in `Authorization`
/// (`Bearer` or `DPoP`, sensitive) or where `placement` says, and, with a `proof`, a fresh
/// `DPoP` proof for `method` when the token is DPoP-bound (carrying its `ath`) or when
/// there is no token (a token request). A `Bearer` token on a DPoP route travels without a
/// proof.
pub fn inject(
    headers: &mut HeaderMap,
    method: &Method,
    token: Option<&dyn Presented>,
    placement: Option<&TokenPlacement>,
    proof: Option<&Proof<'_>>,
) -> Result<(), DpopError> {
    match (token, placement) {
        (Some(token), None) => {
            headers.insert(AUTHORIZATION, token.authorization());
        }
        (Some(token), Some(placement)) => {
            headers.insert(placement.header.clone(), placed(token, placement)?);
        }
        (None, _) => {}
    }
    let Some(proof) = proof else {
        return Ok(());
    };
    match token {
        None => headers.insert(DPOP, proof.header(method, None)?),
        Some(t) if t.scheme() == TokenScheme::Dpop => {
            headers.insert(DPOP, proof.header(method, t.ath())?)
        }
        Some(_) => return Ok(()),
    };
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::AccessToken;
    use secrecy::SecretString;
    use tokio::time::Instant;

    fn token(dpop: bool) -> AccessToken {
        let now = Instant::now();
        AccessToken::new(SecretString::from("tok.en"), now, now, None, dpop).unwrap()
    }

    /// A token, a proof binding, the `Authorization` wanted, and whether a proof of ours is
    /// wanted (`Some(with ath)`).
    type Case<'a> = (
        Option<&'a AccessToken>,
        Option<&'a Proof<'a>>,
        Option<&'a str>,
        Option<bool>,
    );

    #[test]
    fn one_inject_for_bearer_dpop_and_token_requests() {
        let key = Arc::new(DpopKey::generate().unwrap());
        let nonces = NonceStore::default();
        let uri: Uri = "https://api.example:8443/orders?x=1".parse().unwrap();
        let proof = Proof::to(key, &uri, &nonces);
        let (bearer, dpop) = (token(false), token(true));
        // token, proof → Authorization, DPoP proof header (with ath)
        let cases: [Case; 5] = [
            (Some(&bearer), None, Some("Bearer tok.en"), None),
            (Some(&bearer), Some(&proof), Some("Bearer tok.en"), None),
            (Some(&dpop), Some(&proof), Some("DPoP tok.en"), Some(true)),
            (Some(&dpop), None, Some("DPoP tok.en"), None),
            (None, Some(&proof), None, Some(false)),
        ];
        for (i, (token, proof, authorization, ath)) in cases.into_iter().enumerate() {
            let mut headers = HeaderMap::new();
            headers.insert(AUTHORIZATION, HeaderValue::from_static("Basic callers"));
            headers.insert(DPOP, HeaderValue::from_static("callers.proof.here"));
            if token.is_none() {
                headers.clear();
            }
            inject(
                &mut headers,
                &Method::GET,
                token.map(|t| t as &dyn Presented),
                None,
                proof,
            )
            .unwrap();
            let got = headers.get(AUTHORIZATION);
            assert_eq!(got.map(|v| v.to_str().unwrap()), authorization, "case {i}");
            assert!(got.is_none_or(|v| v.is_sensitive()), "case {i}");
            match ath {
                Some(with_ath) => {
                    let value = headers.get(DPOP).unwrap();
                    assert!(value.is_sensitive(), "case {i}");
                    let claims = value.to_str().unwrap().split('.').nth(1).unwrap();
                    let claims = base64::Engine::decode(
                        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                        claims,
                    )
                    .unwrap();
                    let claims: serde_json::Value = serde_json::from_slice(&claims).unwrap();
                    assert_eq!(claims["htu"], "https://api.example:8443/orders", "case {i}");
                    assert_eq!(claims["ath"].is_string(), with_ath, "case {i}");
                }
                // No proof of ours: the caller's own `DPoP` header is left to the forwarder's
                // other rules, as before.
                None => assert_ne!(
                    headers.get(DPOP).map(|v| v.is_sensitive()),
                    Some(true),
                    "case {i}"
                ),
            }
        }
    }
}
