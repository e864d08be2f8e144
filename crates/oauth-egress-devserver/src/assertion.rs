//! JWT assertion checks shared by client authentication (RFC 7523 §2.2, OIDC Core
//! §9) and the JWT bearer grant (RFC 7523 §2.1), plus the `jti` replay cache.

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{json, Value};

/// Allowed clock skew for `iat` in the future.
const IAT_SKEW_SECS: u64 = 5;

/// Seconds since the Unix epoch.
pub(super) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A JWT's header and claims, decoded without any verification.
pub(super) struct Peeked {
    /// The `alg` of the header.
    pub(super) alg: Algorithm,
    /// `{"header": {...}, "claims": {...}}`, for the records tests read.
    pub(super) record: Value,
}

impl Peeked {
    /// A string claim, if present.
    pub(super) fn claim(&self, name: &str) -> Option<&str> {
        self.record["claims"][name].as_str()
    }
}

/// Decodes `jwt`'s header and claims without checking anything else.
pub(super) fn peek(jwt: &str) -> Result<Peeked, String> {
    let header = jsonwebtoken::decode_header(jwt).map_err(|e| format!("malformed JWT: {e}"))?;
    let mut parts = jwt.split('.');
    let (Some(head), Some(payload), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("malformed JWT: not three parts".to_string());
    };
    let decode = |part: &str| -> Result<Value, String> {
        let bytes = URL_SAFE_NO_PAD
            .decode(part)
            .map_err(|_| "malformed JWT: bad base64url".to_string())?;
        serde_json::from_slice(&bytes).map_err(|_| "malformed JWT: not JSON".to_string())
    };
    let claims = decode(payload)?;
    if !claims.is_object() {
        return Err("malformed JWT: claims are not an object".to_string());
    }
    Ok(Peeked {
        alg: header.alg,
        record: json!({ "header": decode(head)?, "claims": claims }),
    })
}

/// What an assertion must satisfy.
pub(super) struct Rules<'a> {
    /// Verifies the signature.
    pub(super) key: &'a DecodingKey,
    /// Algorithms allowed for this key / registration.
    pub(super) algs: &'a [Algorithm],
    /// The required `iss`.
    pub(super) issuer: &'a str,
    /// The required `sub`, if any.
    pub(super) subject: Option<&'a str>,
    /// `aud` must contain one of these; empty skips the check.
    pub(super) audiences: &'a [String],
    /// Largest allowed `exp - now`, in seconds.
    pub(super) max_lifetime_secs: u64,
    /// Whether `iat` is required (it is checked whenever present).
    pub(super) require_iat: bool,
    /// Whether `jti` is required (it is checked against replay whenever present).
    pub(super) require_jti: bool,
}

/// Verifies `jwt` against `rules` and returns its claims. Does not consult the
/// replay cache; call [`ReplayCache::check_and_remember`] with the result.
pub(super) fn verify(jwt: &str, alg: Algorithm, rules: &Rules<'_>) -> Result<Value, String> {
    if !rules.algs.contains(&alg) {
        return Err(format!("algorithm {alg:?} is not allowed here"));
    }
    let mut validation = Validation::new(alg);
    validation.leeway = 0;
    validation.validate_exp = true;
    validation.validate_nbf = true;
    validation.set_issuer(&[rules.issuer]);
    validation.sub = rules.subject.map(str::to_string);
    let mut required = vec!["exp", "iss"];
    if rules.subject.is_some() {
        required.push("sub");
    }
    if rules.audiences.is_empty() {
        validation.validate_aud = false;
    } else {
        validation.set_audience(rules.audiences);
        required.push("aud");
    }
    validation.set_required_spec_claims(&required);
    let data =
        jsonwebtoken::decode::<Value>(jwt, rules.key, &validation).map_err(|err| {
            match err.kind() {
                ErrorKind::InvalidSignature => "signature does not verify".to_string(),
                ErrorKind::ExpiredSignature => "assertion expired (exp)".to_string(),
                ErrorKind::ImmatureSignature => "assertion not yet valid (nbf)".to_string(),
                ErrorKind::InvalidAudience => {
                    format!("aud does not contain {}", rules.audiences.join(" or "))
                }
                ErrorKind::InvalidIssuer => format!("iss is not {}", rules.issuer),
                ErrorKind::InvalidSubject => {
                    format!("sub is not {}", rules.subject.unwrap_or_default())
                }
                ErrorKind::MissingRequiredClaim(claim) => format!("claim {claim} missing"),
                _ => format!("assertion rejected: {err}"),
            }
        })?;
    let claims = data.claims;
    let now = now_secs();
    let exp = claims["exp"].as_u64().ok_or("exp is not a number")?;
    if exp > now.saturating_add(rules.max_lifetime_secs) {
        return Err(format!(
            "exp is more than {} seconds ahead",
            rules.max_lifetime_secs
        ));
    }
    match claims.get("iat") {
        None if rules.require_iat => return Err("claim iat missing".to_string()),
        None => {}
        Some(iat) => {
            let iat = iat.as_u64().ok_or("iat is not a number")?;
            if iat > now.saturating_add(IAT_SKEW_SECS) {
                return Err("iat is in the future".to_string());
            }
        }
    }
    match claims.get("jti") {
        None if rules.require_jti => return Err("claim jti missing".to_string()),
        None => {}
        Some(jti) if jti.as_str().is_some_and(|j| !j.is_empty()) => {}
        Some(_) => return Err("jti is not a non-empty string".to_string()),
    }
    Ok(claims)
}

/// Remembers `(issuer, jti)` pairs until their assertion expires.
#[derive(Default)]
pub(super) struct ReplayCache {
    seen: HashMap<(String, String), u64>,
}

impl ReplayCache {
    /// Records the `jti` of verified `claims` (if any); `Err("jti reused")` when seen.
    pub(super) fn check_and_remember(&mut self, claims: &Value) -> Result<(), String> {
        let Some(jti) = claims["jti"].as_str() else {
            return Ok(());
        };
        let iss = claims["iss"].as_str().unwrap_or_default();
        let exp = claims["exp"].as_u64().unwrap_or(u64::MAX);
        let now = now_secs();
        self.seen.retain(|_, expiry| *expiry >= now);
        let key = (iss.to_string(), jti.to_string());
        if self.seen.contains_key(&key) {
            return Err(format!("jti reused: {jti} was already presented"));
        }
        self.seen.insert(key, exp);
        Ok(())
    }
}
