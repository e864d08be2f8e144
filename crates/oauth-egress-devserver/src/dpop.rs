//! Sender-constrained tokens for the demo servers: a strict DPoP proof verifier
//! (RFC 9449 §4.3), JWK thumbprints (RFC 7638) and certificate thumbprints
//! (RFC 8705 §3.1).
//!
//! The verifier is shared by the development authorization server (token
//! endpoint) and the echo API (resource access), and is public so tests can use
//! it to check proofs the proxy produced.

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::assertion::now_secs;
use crate::lock;

/// How far a proof's `iat` may be from the server's clock (seconds, both ways).
pub(crate) const MAX_IAT_SKEW_SECS: u64 = 60;

/// The `typ` header value of a DPoP proof.
pub(crate) const DPOP_TYP: &str = "dpop+jwt";

/// The signature algorithms accepted in proofs (`ES256`, `RS256`, `PS256`).
pub(crate) const SUPPORTED_ALGS: &str = "ES256 RS256 PS256";

/// JWK members that only private keys have; a proof's `jwk` must carry none.
const PRIVATE_MEMBERS: [&str; 7] = ["d", "p", "q", "dp", "dq", "qi", "k"];

/// Remembers the `jti`s of accepted proofs for as long as their `iat` window
/// lasts, so a proof cannot be used twice. Thread safe.
#[derive(Debug, Default)]
pub struct ReplayCache {
    seen: Mutex<HashMap<String, u64>>,
}

impl ReplayCache {
    /// An empty cache.
    pub fn new() -> ReplayCache {
        ReplayCache::default()
    }

    /// Remembers `jti` until `until` (Unix seconds); `false` if it was already seen.
    pub(crate) fn check_and_remember(&self, jti: &str, until: u64) -> bool {
        let now = now_secs();
        let mut seen = lock(&self.seen);
        seen.retain(|_, expiry| *expiry >= now);
        if seen.contains_key(jti) {
            return false;
        }
        seen.insert(jti.to_string(), until);
        true
    }

    /// How many `jti`s are currently remembered (the tests check expired ones are dropped).
    #[cfg(test)]
    fn len(&self) -> usize {
        lock(&self.seen).len()
    }
}

/// Why a proof was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProofError {
    /// Everything checked out except the `nonce`: missing or not the current one.
    /// The server answers `use_dpop_nonce` with a fresh `DPoP-Nonce`.
    UseNonce,
    /// The proof is invalid (`invalid_dpop_proof`), for this reason.
    Invalid(String),
}

impl fmt::Display for ProofError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProofError::UseNonce => f.write_str("the proof lacks the current server nonce"),
            ProofError::Invalid(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for ProofError {}

/// What a verified proof established.
#[derive(Debug, Clone, PartialEq)]
pub struct ProofInfo {
    /// The RFC 7638 SHA-256 thumbprint of the proof's `jwk` (base64url), i.e.
    /// the `cnf.jkt` of tokens bound to it.
    pub jkt: String,
    /// The proof's JOSE header.
    pub header: Value,
    /// The proof's claims.
    pub claims: Value,
}

/// The JOSE header and claims of a compact JWS, without any verification, as
/// `{"header": {...}, "claims": {...}}` (for records).
pub(crate) fn peek_proof(proof: &str) -> Result<Value, String> {
    let (header, claims, _, _) = split(proof)?;
    Ok(serde_json::json!({ "header": header, "claims": claims }))
}

/// Verifies a DPoP proof strictly (RFC 9449 §4.3): compact JWS with `typ`
/// `dpop+jwt`, `alg` ES256/RS256/PS256, a public `jwk` that verifies the
/// signature, `jti`, `htm` equal to `htm`, `htu` equal to `htu` (both normalised
/// with [`normalize_htu`]), `iat` within [`MAX_IAT_SKEW_SECS`], `ath` equal to
/// [`access_token_hash`] of `access_token` when one is given, and `nonce` equal
/// to `expected_nonce` when one is given ([`ProofError::UseNonce`] otherwise).
/// Finally the `jti` must be new to `replay` (it is remembered then).
pub(crate) fn verify_proof(
    proof: &str,
    htm: &str,
    htu: &str,
    access_token: Option<&str>,
    expected_nonce: Option<&str>,
    replay: &ReplayCache,
) -> Result<ProofInfo, ProofError> {
    let invalid = ProofError::Invalid;
    let (header, claims, message, signature) = split(proof).map_err(invalid)?;
    if header["typ"].as_str() != Some(DPOP_TYP) {
        return Err(invalid(format!("typ must be {DPOP_TYP}")));
    }
    let alg = match header["alg"].as_str() {
        Some("ES256") => Algorithm::ES256,
        Some("RS256") => Algorithm::RS256,
        Some("PS256") => Algorithm::PS256,
        other => return Err(invalid(format!("unsupported alg {other:?}"))),
    };
    let jwk = header["jwk"]
        .as_object()
        .ok_or_else(|| invalid("jwk header missing".into()))?;
    if let Some(member) = PRIVATE_MEMBERS.iter().find(|m| jwk.contains_key(**m)) {
        return Err(invalid(format!("jwk contains private member {member}")));
    }
    let key = decoding_key(jwk, alg).map_err(invalid)?;
    let verified = jsonwebtoken::crypto::verify(signature, message.as_bytes(), &key, alg)
        .map_err(|e| invalid(format!("signature check failed: {e}")))?;
    if !verified {
        return Err(invalid("signature does not verify".into()));
    }
    let jkt = jwk_thumbprint(&header["jwk"]).map_err(invalid)?;

    let jti = claims["jti"]
        .as_str()
        .filter(|j| !j.is_empty())
        .ok_or_else(|| invalid("jti missing".into()))?;
    if claims["htm"].as_str() != Some(htm) {
        return Err(invalid(format!("htm does not match {htm}")));
    }
    let claimed_htu = claims["htu"]
        .as_str()
        .ok_or_else(|| invalid("htu missing".into()))?;
    let expected_htu = normalize_htu(htu).map_err(invalid)?;
    if normalize_htu(claimed_htu).ok().as_deref() != Some(expected_htu.as_str()) {
        return Err(invalid(format!("htu does not match {expected_htu}")));
    }
    let iat = claims["iat"]
        .as_u64()
        .ok_or_else(|| invalid("iat missing or not a number".into()))?;
    let now = now_secs();
    if iat.abs_diff(now) > MAX_IAT_SKEW_SECS {
        return Err(invalid("iat is not within the acceptable window".into()));
    }
    if let Some(token) = access_token {
        if claims["ath"].as_str() != Some(access_token_hash(token).as_str()) {
            return Err(invalid("ath does not match the access token".into()));
        }
    }
    if let Some(nonce) = expected_nonce {
        if claims["nonce"].as_str() != Some(nonce) {
            return Err(ProofError::UseNonce);
        }
    }
    let until = now.max(iat).saturating_add(MAX_IAT_SKEW_SECS);
    if !replay.check_and_remember(jti, until) {
        return Err(invalid(format!("jti reused: {jti} was already presented")));
    }
    Ok(ProofInfo {
        jkt,
        header,
        claims,
    })
}

/// Splits a compact JWS into decoded header and claims (JSON objects), the
/// signing input and the encoded signature.
fn split(jws: &str) -> Result<(Value, Value, &str, &str), String> {
    let mut parts = jws.split('.');
    let (Some(h), Some(c), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("not a compact JWS".into());
    };
    let decode = |part: &str, what: &str| -> Result<Value, String> {
        let bytes = URL_SAFE_NO_PAD
            .decode(part)
            .map_err(|_| format!("{what} is not base64url"))?;
        let value: Value =
            serde_json::from_slice(&bytes).map_err(|_| format!("{what} is not JSON"))?;
        match value.is_object() {
            true => Ok(value),
            false => Err(format!("{what} is not a JSON object")),
        }
    };
    let header = decode(h, "header")?;
    let claims = decode(c, "claims")?;
    Ok((header, claims, &jws[..h.len() + 1 + c.len()], s))
}

/// The verification key of `jwk` for `alg` (EC P-256 for ES256, RSA otherwise).
fn decoding_key(jwk: &Map<String, Value>, alg: Algorithm) -> Result<DecodingKey, String> {
    let member = |name: &str| {
        jwk.get(name)
            .and_then(Value::as_str)
            .ok_or_else(|| format!("jwk member {name} missing"))
    };
    let kty = member("kty")?;
    let key = match alg {
        Algorithm::ES256 => {
            if kty != "EC" || member("crv")? != "P-256" {
                return Err("ES256 needs an EC P-256 jwk".into());
            }
            let (x, y) = (member("x")?, member("y")?);
            for coordinate in [x, y] {
                let len = URL_SAFE_NO_PAD.decode(coordinate).map(|b| b.len());
                if len != Ok(32) {
                    return Err("jwk coordinates must be 32 bytes".into());
                }
            }
            DecodingKey::from_ec_components(x, y)
        }
        _ => {
            if kty != "RSA" {
                return Err(format!("{alg:?} needs an RSA jwk"));
            }
            DecodingKey::from_rsa_components(member("n")?, member("e")?)
        }
    };
    key.map_err(|e| format!("unusable jwk: {e}"))
}

/// The RFC 7638 JWK SHA-256 thumbprint (base64url) of an EC (`crv`, `kty`, `x`,
/// `y`) or RSA (`e`, `kty`, `n`) public key; other members are ignored.
pub fn jwk_thumbprint(jwk: &Value) -> Result<String, String> {
    let members: &[&str] = match jwk["kty"].as_str() {
        Some("EC") => &["crv", "kty", "x", "y"],
        Some("RSA") => &["e", "kty", "n"],
        Some("OKP") => &["crv", "kty", "x"],
        other => return Err(format!("unsupported jwk kty {other:?}")),
    };
    let mut canonical = String::from("{");
    for (i, name) in members.iter().enumerate() {
        let value = jwk[*name]
            .as_str()
            .ok_or_else(|| format!("jwk member {name} missing"))?;
        if i > 0 {
            canonical.push(',');
        }
        // serde_json writes JSON strings without whitespace, escaped as RFC 7159 wants.
        canonical.push_str(&Value::from(*name).to_string());
        canonical.push(':');
        canonical.push_str(&Value::from(value).to_string());
    }
    canonical.push('}');
    Ok(URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes())))
}

/// The `ath` of a proof for `access_token`: base64url(SHA-256(token)).
pub(crate) fn access_token_hash(access_token: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(access_token.as_bytes()))
}

/// The RFC 8705 §3.1 `x5t#S256` of a certificate: base64url(SHA-256(DER)).
pub(crate) fn cert_thumbprint(der: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(der))
}

/// Normalises an `htu` for comparison (RFC 9449 §4.3, RFC 3986 §6.2.2–6.2.3):
/// scheme and host lowercased, the default port (80/443) dropped, an empty path
/// made `/`, query and fragment removed. Only `http` and `https` are accepted.
pub(crate) fn normalize_htu(url: &str) -> Result<String, String> {
    let url = url.split(['#', '?']).next().unwrap_or_default();
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| format!("htu {url} is not an absolute URL"))?;
    let scheme = scheme.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "https" => "443",
        "http" => "80",
        _ => return Err(format!("htu scheme {scheme} is not http(s)")),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, "/"),
    };
    if authority.is_empty() || authority.contains('@') {
        return Err(format!("htu {url} has no usable authority"));
    }
    let port_at = match authority.rfind(']') {
        Some(bracket) => authority[bracket..].find(':').map(|i| bracket + i),
        None => authority.rfind(':'),
    };
    let (host, port) = match port_at {
        Some(i) => (&authority[..i], Some(&authority[i + 1..])),
        None => (authority, None),
    };
    let mut normal = format!("{scheme}://{}", host.to_ascii_lowercase());
    if let Some(port) = port.filter(|p| !p.is_empty() && *p != default_port) {
        normal.push(':');
        normal.push_str(port);
    }
    normal.push_str(path);
    Ok(normal)
}

#[cfg(test)]
#[path = "dpop_tests.rs"]
mod tests;
