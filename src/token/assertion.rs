//! Signed JWTs the proxy presents: client assertions (RFC 7523 §2.2, for `client_secret_jwt`
//! and `private_key_jwt`) and JWT-bearer grants (RFC 7523 §2.1). A fresh assertion, with a
//! unique `jti` and a short `exp`, for every token request.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use p256::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;

use crate::config::SigningAlg;

/// How long an assertion is valid: long enough for clock skew, short enough to be useless
/// if captured.
const ASSERTION_LIFETIME_SECS: u64 = 60;

/// A key that signs assertions, with its algorithm and `kid`.
pub struct SigningKey {
    key: EncodingKey,
    alg: Algorithm,
    kid: Option<String>,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("alg", &self.alg)
            .field("kid", &self.kid)
            .field("key", &"...")
            .finish()
    }
}

impl SigningKey {
    /// An HS256 key from a client secret (`client_secret_jwt`).
    pub fn hmac(secret: &SecretString) -> SigningKey {
        SigningKey {
            key: EncodingKey::from_secret(secret.expose_secret().as_bytes()),
            alg: Algorithm::HS256,
            kid: None,
        }
    }

    /// A private key from PEM: PKCS#8 (EC P-256 or RSA), SEC1 (`EC PRIVATE KEY`) or PKCS#1
    /// (`RSA PRIVATE KEY`). Without `alg`, EC keys sign ES256 and RSA keys RS256.
    pub fn from_pem(
        pem: &SecretString,
        alg: Option<SigningAlg>,
        kid: Option<String>,
    ) -> Result<SigningKey, String> {
        let pem = pem.expose_secret();
        let (key, is_ec) = if pem.contains("-----BEGIN EC PRIVATE KEY-----") {
            let secret = p256::SecretKey::from_sec1_pem(pem)
                .map_err(|e| format!("not a P-256 SEC1 key: {e}"))?;
            let der = secret
                .to_pkcs8_der()
                .map_err(|e| format!("cannot re-encode the EC key: {e}"))?;
            (EncodingKey::from_ec_der(der.as_bytes()), true)
        } else if pem.contains("-----BEGIN RSA PRIVATE KEY-----") {
            let key = EncodingKey::from_rsa_pem(pem.as_bytes())
                .map_err(|e| format!("not a PKCS#1 RSA key: {e}"))?;
            (key, false)
        } else if pem.contains("-----BEGIN PRIVATE KEY-----") {
            if p256::SecretKey::from_pkcs8_pem(pem).is_ok() {
                let key = EncodingKey::from_ec_pem(pem.as_bytes())
                    .map_err(|e| format!("not a usable EC key: {e}"))?;
                (key, true)
            } else {
                let key = EncodingKey::from_rsa_pem(pem.as_bytes())
                    .map_err(|e| format!("a PKCS#8 key that is neither P-256 nor RSA ({e})"))?;
                (key, false)
            }
        } else {
            return Err("no PEM private key (PKCS#8, SEC1 or PKCS#1) found".into());
        };
        let alg = match (alg, is_ec) {
            (None, true) | (Some(SigningAlg::ES256), true) => Algorithm::ES256,
            (None, false) | (Some(SigningAlg::RS256), false) => Algorithm::RS256,
            (Some(SigningAlg::PS256), false) => Algorithm::PS256,
            (Some(alg), true) => {
                return Err(format!(
                    "signing_alg {alg:?} needs an RSA key, this is an EC key"
                ))
            }
            (Some(alg), false) => {
                return Err(format!(
                    "signing_alg {alg:?} needs an EC P-256 key, this is an RSA key"
                ))
            }
        };
        Ok(SigningKey { key, alg, kid })
    }

    /// The algorithm this key signs with.
    pub fn algorithm(&self) -> Algorithm {
        self.alg
    }

    /// Signs `claims` as a JWT.
    pub fn sign(&self, claims: &impl Serialize) -> Result<String, String> {
        let mut header = Header::new(self.alg);
        header.typ = Some("JWT".into());
        header.kid = self.kid.clone();
        jsonwebtoken::encode(&header, claims, &self.key).map_err(|e| format!("signing failed: {e}"))
    }
}

#[derive(Serialize)]
struct AssertionClaims<'a> {
    iss: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    sub: Option<&'a str>,
    aud: &'a str,
    jti: String,
    iat: u64,
    exp: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    scope: Option<&'a str>,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A random, unique `jti`.
pub fn new_jti() -> String {
    let mut bytes = [0u8; 18];
    rand::rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A client assertion: `iss` = `sub` = `client_id`, `aud` = the token endpoint (or the issuer).
pub fn client_assertion(
    client_id: &str,
    audience: &str,
    key: &SigningKey,
) -> Result<String, String> {
    let iat = now_secs();
    key.sign(&AssertionClaims {
        iss: client_id,
        sub: Some(client_id),
        aud: audience,
        jti: new_jti(),
        iat,
        exp: iat + ASSERTION_LIFETIME_SECS,
        scope: None,
    })
}

/// A JWT-bearer grant assertion.
pub fn bearer_assertion(
    issuer: &str,
    subject: Option<&str>,
    audience: &str,
    scope: Option<&str>,
    key: &SigningKey,
) -> Result<String, String> {
    let iat = now_secs();
    key.sign(&AssertionClaims {
        iss: issuer,
        sub: subject,
        aud: audience,
        jti: new_jti(),
        iat,
        exp: iat + ASSERTION_LIFETIME_SECS,
        scope,
    })
}

/// The unverified `exp` of a JWT (for capping cache lifetimes), or `None` for opaque tokens.
pub fn unverified_exp(token: &str) -> Option<u64> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    claims.get("exp")?.as_u64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ec_keys_in_all_pem_forms_sign_es256() {
        let pkcs8 = rcgen::KeyPair::generate().unwrap().serialize_pem();
        let sec1 = {
            let key = p256::SecretKey::from_pkcs8_pem(&pkcs8).unwrap();
            key.to_sec1_pem(p256::pkcs8::LineEnding::LF)
                .unwrap()
                .to_string()
        };
        for pem in [pkcs8, sec1] {
            let key =
                SigningKey::from_pem(&SecretString::from(pem), None, Some("k1".into())).unwrap();
            assert_eq!(key.algorithm(), Algorithm::ES256);
            let jwt = client_assertion("client", "https://as.example/token", &key).unwrap();
            let header = jsonwebtoken::decode_header(&jwt).unwrap();
            assert_eq!(header.kid.as_deref(), Some("k1"));
        }
    }

    #[test]
    fn algorithm_must_fit_the_key() {
        let pem = SecretString::from(rcgen::KeyPair::generate().unwrap().serialize_pem());
        let err = SigningKey::from_pem(&pem, Some(SigningAlg::RS256), None).unwrap_err();
        assert!(err.contains("needs an RSA key"), "{err}");
        assert!(SigningKey::from_pem(&SecretString::from("garbage"), None, None).is_err());
    }

    #[test]
    fn assertions_are_unique_and_short_lived() {
        let key = SigningKey::hmac(&SecretString::from("s"));
        let a = client_assertion("c", "aud", &key).unwrap();
        let b = client_assertion("c", "aud", &key).unwrap();
        assert_ne!(a, b);
        let exp = unverified_exp(&a).unwrap();
        assert!(exp <= now_secs() + ASSERTION_LIFETIME_SECS);
        assert_eq!(unverified_exp("opaque-token"), None);
    }
}
