//! The small JOSE pieces several signers share: unique `jti`s, unix timestamps, base64url
//! (RFC 7515 §2, no padding) and the P-256 public key as a JWK with its RFC 7638 thumbprint.
//!
//! Signing itself stays with its signer (`sender::dpop`, `token::assertion`): each has its
//! own key type and header.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};

/// A random, unique `jti` (144 bits, base64url).
pub(crate) fn new_jti() -> String {
    let mut bytes = [0u8; 18];
    rand::rng().fill_bytes(&mut bytes);
    b64url(bytes)
}

/// The time since the unix epoch (zero if the clock is before it).
pub(crate) fn since_epoch() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// The unix time in whole seconds, as `iat`, `exp` and `nbf` claims count it.
pub(crate) fn unix_now() -> u64 {
    since_epoch().as_secs()
}

/// base64url without padding.
pub(crate) fn b64url(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// base64url (no padding) of the SHA-256 of `bytes`: DPoP `ath`, JWK thumbprints, `x5t#S256`.
pub(crate) fn sha256_b64url(bytes: impl AsRef<[u8]>) -> String {
    b64url(Sha256::digest(bytes.as_ref()))
}

/// Why a public key cannot be written as a P-256 JWK.
#[derive(Debug, thiserror::Error)]
#[error("unexpected public key encoding")]
pub(crate) struct PointError;

/// A P-256 public key as a JWK, its members in RFC 7638 order (`crv`, `kty`, `x`, `y`), so
/// its compact text is the thumbprint input; `point` is the uncompressed SEC1 point
/// (`04 || x || y`, 65 bytes, as ring and p256 give it).
pub(crate) fn p256_jwk(point: &[u8]) -> Result<serde_json::Value, PointError> {
    if point.len() != 65 || point[0] != 4 {
        return Err(PointError);
    }
    Ok(serde_json::json!({
        "crv": "P-256",
        "kty": "EC",
        "x": b64url(&point[1..33]),
        "y": b64url(&point[33..65]),
    }))
}

/// The RFC 7638 SHA-256 thumbprint of a JWK whose members are already in lexicographic
/// order, as [`p256_jwk`] writes them (`serde_json` keeps them sorted).
pub(crate) fn thumbprint(jwk: &serde_json::Value) -> String {
    sha256_b64url(jwk.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jwk_members_are_in_thumbprint_order() {
        let mut point = vec![4u8];
        point.extend([1u8; 32]);
        point.extend([2u8; 32]);
        let jwk = p256_jwk(&point).unwrap();
        let canonical = format!(
            r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
            b64url([1u8; 32]),
            b64url([2u8; 32])
        );
        assert_eq!(jwk.to_string(), canonical);
        assert_eq!(thumbprint(&jwk), sha256_b64url(canonical));
        assert!(p256_jwk(&point[..64]).is_err());
        assert!(p256_jwk(&[3u8; 65]).is_err());
    }

    #[test]
    fn jtis_are_unique() {
        let a: std::collections::HashSet<_> = (0..100).map(|_| new_jti()).collect();
        assert_eq!(a.len(), 100);
        assert!(unix_now() > 1_700_000_000);
    }
}
