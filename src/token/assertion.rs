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
    /// `x5t` and `x5t#S256` of the key's certificate, when one is configured.
    thumbprints: Option<(String, String)>,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("alg", &self.alg)
            .field("kid", &self.kid)
            .field("x5t#S256", &self.thumbprints.as_ref().map(|t| &t.1))
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
            thumbprints: None,
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
        Ok(SigningKey {
            key,
            alg,
            kid,
            thumbprints: None,
        })
    }

    /// Names the key's certificate (PEM; the first certificate is the key's) in every
    /// assertion header, as `x5t` (SHA-1) and `x5t#S256` (SHA-256) of its DER, which Microsoft
    /// Entra ID requires to find a certificate credential. Refused unless the certificate's
    /// public key verifies a signature made with this key, so a mismatched pair is caught here
    /// rather than as an opaque `invalid_client`.
    pub fn with_certificate(mut self, cert_pem: &str) -> Result<SigningKey, String> {
        use rustls::pki_types::{pem::PemObject, CertificateDer};
        let der = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .next()
            .ok_or("no PEM certificate found")?
            .map_err(|e| format!("unreadable PEM certificate: {e:?}"))?;
        let (_, cert) = x509_parser::parse_x509_certificate(&der)
            .map_err(|e| format!("not an X.509 certificate: {e}"))?;
        let public_key = cert.public_key().subject_public_key.data.to_vec();
        let verifier: &dyn ring::signature::VerificationAlgorithm = match self.alg {
            Algorithm::ES256 => &ring::signature::ECDSA_P256_SHA256_FIXED,
            Algorithm::RS256 => &ring::signature::RSA_PKCS1_2048_8192_SHA256,
            Algorithm::PS256 => &ring::signature::RSA_PSS_2048_8192_SHA256,
            other => return Err(format!("a certificate cannot go with {other:?}")),
        };
        let probe = b"oauth-egress assertion_cert probe";
        let signature = jsonwebtoken::crypto::sign(probe, &self.key, self.alg)
            .map_err(|e| format!("signing failed: {e}"))?;
        let signature = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|e| format!("signing failed: {e}"))?;
        ring::signature::UnparsedPublicKey::new(verifier, &public_key)
            .verify(probe, &signature)
            .map_err(|_| {
                format!(
                    "the certificate ({}) is not for this private key",
                    cert.subject()
                )
            })?;
        let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        let sha1 = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, &der);
        let sha256 = ring::digest::digest(&ring::digest::SHA256, &der);
        self.thumbprints = Some((b64(sha1.as_ref()), b64(sha256.as_ref())));
        Ok(self)
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
        if let Some((sha1, sha256)) = &self.thumbprints {
            header.x5t = Some(sha1.clone());
            header.x5t_s256 = Some(sha256.clone());
        }
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

    fn header_of(jwt: &str) -> serde_json::Value {
        let head = jwt.split('.').next().unwrap();
        serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(head)
                .unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn a_certificate_puts_both_thumbprints_in_the_header() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["c".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let signing = SigningKey::from_pem(&SecretString::from(key.serialize_pem()), None, None)
            .unwrap()
            .with_certificate(&cert.pem())
            .unwrap();
        let header = header_of(&signing.sign(&serde_json::json!({"a": 1})).unwrap());
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let der = cert.der().as_ref();
        assert_eq!(
            header["x5t#S256"],
            b64(ring::digest::digest(&ring::digest::SHA256, der).as_ref())
        );
        assert_eq!(
            header["x5t"],
            b64(ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, der).as_ref())
        );
        // Without a certificate, neither appears.
        let plain =
            SigningKey::from_pem(&SecretString::from(key.serialize_pem()), None, None).unwrap();
        let header = header_of(&plain.sign(&serde_json::json!({})).unwrap());
        assert!(header.get("x5t").is_none() && header.get("x5t#S256").is_none());
    }

    #[test]
    fn rsa_certificates_verify_for_rs256_and_ps256() {
        use rsa::pkcs8::EncodePrivateKey;
        let rsa = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).unwrap();
        let pem = rsa
            .to_pkcs8_pem(rsa::pkcs8::LineEnding::LF)
            .unwrap()
            .to_string();
        let key = rcgen::KeyPair::from_pem_and_sign_algo(&pem, &rcgen::PKCS_RSA_SHA256).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["c".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        for alg in [SigningAlg::RS256, SigningAlg::PS256] {
            let signing = SigningKey::from_pem(&SecretString::from(pem.clone()), Some(alg), None)
                .unwrap()
                .with_certificate(&cert.pem());
            assert!(signing.is_ok(), "{alg:?}: {signing:?}");
        }
    }

    #[test]
    fn a_certificate_for_another_key_is_refused() {
        let key = rcgen::KeyPair::generate().unwrap();
        let other = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["c".to_string()])
            .unwrap()
            .self_signed(&other)
            .unwrap();
        let err = SigningKey::from_pem(&SecretString::from(key.serialize_pem()), None, None)
            .unwrap()
            .with_certificate(&cert.pem())
            .unwrap_err();
        assert!(err.contains("is not for this private key"), "{err}");
        let err = SigningKey::from_pem(&SecretString::from(key.serialize_pem()), None, None)
            .unwrap()
            .with_certificate("not a pem")
            .unwrap_err();
        assert!(err.contains("no PEM certificate"), "{err}");
    }

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
