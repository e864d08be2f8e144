//! Signed JWTs the proxy presents: client assertions (RFC 7523 §2.2, for `client_secret_jwt`
//! and `private_key_jwt`) and JWT-bearer grants (RFC 7523 §2.1). A fresh assertion, with a
//! unique `jti` and a short `exp`, for every token request.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, RsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use rustls::pki_types::PrivateKeyDer;
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;

use crate::config::SigningAlg;
use crate::jose::{new_jti, unix_now};
use crate::secret::KeyError;

/// A JWS algorithm the proxy signs client assertions with (RFC 7518 §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// HMAC SHA-256 with the client secret (`client_secret_jwt`).
    HS256,
    /// ECDSA P-256 SHA-256.
    ES256,
    /// RSASSA-PKCS1-v1_5 SHA-256.
    RS256,
    /// RSASSA-PSS SHA-256.
    PS256,
}

impl Algorithm {
    /// The JWS `alg` name.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::HS256 => "HS256",
            Algorithm::ES256 => "ES256",
            Algorithm::RS256 => "RS256",
            Algorithm::PS256 => "PS256",
        }
    }
}

/// Why a key cannot sign, or a certificate cannot go with it. Never includes key material.
#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    /// The PEM holds no usable private key.
    #[error(transparent)]
    Pem(#[from] KeyError),
    /// A PKCS#8 key of another kind.
    #[error("a PKCS#8 key that is neither EC P-256 nor RSA 2048-8192 bits ({0})")]
    UnsupportedPkcs8(ring::error::KeyRejected),
    /// A SEC1 or PKCS#1 key `ring` cannot use as it is.
    #[error("an EC key on a curve other than P-256")]
    OtherCurve,
    /// `signing_alg` needs an RSA key.
    #[error("signing_alg {0:?} needs an RSA key, this is an EC key")]
    NeedsRsa(SigningAlg),
    /// `signing_alg` needs an EC key.
    #[error("signing_alg {0:?} needs an EC P-256 key, this is an RSA key")]
    NeedsEc(SigningAlg),
    /// No certificate in the PEM.
    #[error("no PEM certificate found")]
    NoCertificate,
    /// The PEM certificate cannot be read (the PEM parser's words).
    #[error("unreadable PEM certificate: {0}")]
    UnreadablePem(String),
    /// Not a certificate (the X.509 parser's words).
    #[error("not an X.509 certificate: {0}")]
    NotX509(String),
    /// A certificate with an HMAC key.
    #[error("a certificate cannot go with {0:?}")]
    CertificateWithoutKey(Algorithm),
    /// The certificate is for another key (its subject).
    #[error("the certificate ({0}) is not for this private key")]
    OtherKeysCertificate(String),
    /// `ring` refused to sign.
    #[error("signing failed")]
    Failed,
    /// The JWS header could not be serialized.
    #[error("header: {0}")]
    Header(serde_json::Error),
    /// The claims could not be serialized.
    #[error("claims: {0}")]
    Claims(serde_json::Error),
}

/// How long an assertion is valid: long enough for clock skew, short enough to be useless
/// if captured.
const ASSERTION_LIFETIME_SECS: u64 = 60;

/// The key material, in ring's types: every assertion is signed by ring.
enum Signer {
    /// HS256 with the client secret.
    Hmac(ring::hmac::Key),
    /// ES256 (fixed-width `r||s`, as JWS wants).
    Ec(EcdsaKeyPair),
    /// RS256 (PKCS#1 v1.5) or PS256 (PSS), by `alg`.
    Rsa(RsaKeyPair),
}

/// A key that signs assertions, with its algorithm and `kid`.
pub struct SigningKey {
    signer: Signer,
    rng: SystemRandom,
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

/// The JWS protected header of an assertion, members in this order.
#[derive(Serialize)]
struct JwsHeader<'a> {
    alg: &'static str,
    typ: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    kid: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    x5t: Option<&'a str>,
    #[serde(rename = "x5t#S256", skip_serializing_if = "Option::is_none")]
    x5t_s256: Option<&'a str>,
}

impl SigningKey {
    /// An HS256 key from a client secret (`client_secret_jwt`).
    pub(crate) fn hmac(secret: &SecretString) -> SigningKey {
        SigningKey {
            signer: Signer::Hmac(ring::hmac::Key::new(
                ring::hmac::HMAC_SHA256,
                secret.expose_secret().as_bytes(),
            )),
            rng: SystemRandom::new(),
            alg: Algorithm::HS256,
            kid: None,
            thumbprints: None,
        }
    }

    /// A private key from PEM: PKCS#8 (EC P-256 or RSA), SEC1 (`EC PRIVATE KEY`, with or
    /// without an `EC PARAMETERS` block before it) or PKCS#1 (`RSA PRIVATE KEY`), read by
    /// [`crate::secret::private_key_from_pem`]. Without `alg`, EC keys sign ES256 and RSA
    /// keys RS256. Errors never include key material.
    pub fn from_pem(
        pem: &SecretString,
        alg: Option<SigningAlg>,
        kid: Option<String>,
    ) -> Result<SigningKey, SigningError> {
        let der = crate::secret::private_key_from_pem(pem.expose_secret().as_bytes(), "the PEM")?;
        let rng = SystemRandom::new();
        let signer = match &der {
            PrivateKeyDer::Pkcs8(pkcs8) => {
                let der = pkcs8.secret_pkcs8_der();
                match EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der, &rng) {
                    Ok(pair) => Signer::Ec(pair),
                    Err(_) => Signer::Rsa(
                        RsaKeyPair::from_pkcs8(der).map_err(SigningError::UnsupportedPkcs8)?,
                    ),
                }
            }
            _ => return Err(SigningError::OtherCurve),
        };
        let is_ec = matches!(signer, Signer::Ec(_));
        let alg = match (alg, is_ec) {
            (None, true) | (Some(SigningAlg::ES256), true) => Algorithm::ES256,
            (None, false) | (Some(SigningAlg::RS256), false) => Algorithm::RS256,
            (Some(SigningAlg::PS256), false) => Algorithm::PS256,
            (Some(alg), true) => return Err(SigningError::NeedsRsa(alg)),
            (Some(alg), false) => return Err(SigningError::NeedsEc(alg)),
        };
        Ok(SigningKey {
            signer,
            rng,
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
    pub(crate) fn with_certificate(mut self, cert_pem: &str) -> Result<SigningKey, SigningError> {
        use rustls::pki_types::{pem::PemObject, CertificateDer};
        let der = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .next()
            .ok_or(SigningError::NoCertificate)?
            .map_err(|e| SigningError::UnreadablePem(format!("{e:?}")))?;
        let (_, cert) = x509_parser::parse_x509_certificate(&der)
            .map_err(|e| SigningError::NotX509(e.to_string()))?;
        let public_key = cert.public_key().subject_public_key.data.to_vec();
        let verifier: &dyn ring::signature::VerificationAlgorithm = match self.alg {
            Algorithm::ES256 => &ring::signature::ECDSA_P256_SHA256_FIXED,
            Algorithm::RS256 => &ring::signature::RSA_PKCS1_2048_8192_SHA256,
            Algorithm::PS256 => &ring::signature::RSA_PSS_2048_8192_SHA256,
            other => return Err(SigningError::CertificateWithoutKey(other)),
        };
        let probe = b"oauth-egress assertion_cert probe";
        let signature = self.signature(probe)?;
        ring::signature::UnparsedPublicKey::new(verifier, &public_key)
            .verify(probe, &signature)
            .map_err(|_| SigningError::OtherKeysCertificate(cert.subject().to_string()))?;
        let sha1 = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, &der);
        let sha256 = ring::digest::digest(&ring::digest::SHA256, &der);
        self.thumbprints = Some((
            URL_SAFE_NO_PAD.encode(sha1.as_ref()),
            URL_SAFE_NO_PAD.encode(sha256.as_ref()),
        ));
        Ok(self)
    }

    /// The raw JWS signature of `input`.
    fn signature(&self, input: &[u8]) -> Result<Vec<u8>, SigningError> {
        let failed = |_| SigningError::Failed;
        match &self.signer {
            Signer::Hmac(key) => Ok(ring::hmac::sign(key, input).as_ref().to_vec()),
            Signer::Ec(pair) => Ok(pair
                .sign(&self.rng, input)
                .map_err(failed)?
                .as_ref()
                .to_vec()),
            Signer::Rsa(pair) => {
                let padding: &'static dyn ring::signature::RsaEncoding = match self.alg {
                    Algorithm::PS256 => &ring::signature::RSA_PSS_SHA256,
                    _ => &ring::signature::RSA_PKCS1_SHA256,
                };
                let mut signature = vec![0; pair.public().modulus_len()];
                pair.sign(padding, &self.rng, input, &mut signature)
                    .map_err(failed)?;
                Ok(signature)
            }
        }
    }

    /// Signs `claims` as a JWT (JWS compact serialization, RFC 7515 §7.1).
    pub(crate) fn sign(&self, claims: &impl Serialize) -> Result<String, SigningError> {
        let header = JwsHeader {
            alg: self.alg.name(),
            typ: "JWT",
            kid: self.kid.as_deref(),
            x5t: self.thumbprints.as_ref().map(|t| t.0.as_str()),
            x5t_s256: self.thumbprints.as_ref().map(|t| t.1.as_str()),
        };
        let mut jwt =
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header).map_err(SigningError::Header)?);
        jwt.push('.');
        URL_SAFE_NO_PAD.encode_string(
            serde_json::to_vec(claims).map_err(SigningError::Claims)?,
            &mut jwt,
        );
        let signature = self.signature(jwt.as_bytes())?;
        jwt.push('.');
        URL_SAFE_NO_PAD.encode_string(signature, &mut jwt);
        Ok(jwt)
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

/// A client assertion: `iss` = `sub` = `client_id`, `aud` = the token endpoint (or the issuer).
pub fn client_assertion(
    client_id: &str,
    audience: &str,
    key: &SigningKey,
) -> Result<String, SigningError> {
    let iat = unix_now();
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
pub(crate) fn bearer_assertion(
    issuer: &str,
    subject: Option<&str>,
    audience: &str,
    scope: Option<&str>,
    key: &SigningKey,
) -> Result<String, SigningError> {
    let iat = unix_now();
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
    let bytes = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    claims.get("exp")?.as_u64()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header_of(jwt: &str) -> serde_json::Value {
        let head = jwt.split('.').next().unwrap();
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(head).unwrap()).unwrap()
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
        let b64 = |b: &[u8]| URL_SAFE_NO_PAD.encode(b);
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
        let [(_, pem), _] = crate::secret::test_keys::rsa_forms();
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
        assert!(
            err.to_string().contains("is not for this private key"),
            "{err}"
        );
        let err = SigningKey::from_pem(&SecretString::from(key.serialize_pem()), None, None)
            .unwrap()
            .with_certificate("not a pem")
            .unwrap_err();
        assert!(err.to_string().contains("no PEM certificate"), "{err}");
    }

    #[test]
    fn ec_keys_in_all_pem_forms_sign_es256() {
        for (form, pem) in crate::secret::test_keys::ec_forms() {
            let key =
                SigningKey::from_pem(&SecretString::from(pem.clone()), None, Some("k1".into()))
                    .unwrap_or_else(|e| panic!("{form}: {e}"));
            assert_eq!(key.alg, Algorithm::ES256);
            let jwt = client_assertion("client", "https://as.example/token", &key).unwrap();
            let header = jsonwebtoken::decode_header(&jwt).unwrap();
            assert_eq!(header.kid.as_deref(), Some("k1"), "{form}");
            // An independent implementation verifies it.
            let decoding = jsonwebtoken::DecodingKey::from_ec_pem(
                crate::secret::test_keys::ec_public_pem(&pem).as_bytes(),
            )
            .unwrap();
            let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
            validation.set_audience(&["https://as.example/token"]);
            jsonwebtoken::decode::<serde_json::Value>(&jwt, &decoding, &validation)
                .unwrap_or_else(|e| panic!("{form}: {e}"));
        }
    }

    #[test]
    fn rsa_keys_in_both_pem_forms_sign_rs256_and_ps256_verifiably() {
        use rsa::pkcs8::{DecodePrivateKey, EncodePublicKey};
        let forms = crate::secret::test_keys::rsa_forms();
        let public = rsa::RsaPrivateKey::from_pkcs8_pem(&forms[0].1)
            .unwrap()
            .to_public_key()
            .to_public_key_pem(rsa::pkcs8::LineEnding::LF)
            .unwrap();
        let decoding = jsonwebtoken::DecodingKey::from_rsa_pem(public.as_bytes()).unwrap();
        for (form, pem) in &forms {
            for (alg, expected) in [
                (None, Algorithm::RS256),
                (Some(SigningAlg::RS256), Algorithm::RS256),
                (Some(SigningAlg::PS256), Algorithm::PS256),
            ] {
                let key = SigningKey::from_pem(&SecretString::from(pem.clone()), alg, None)
                    .unwrap_or_else(|e| panic!("{form}: {e}"));
                assert_eq!(key.alg, expected);
                let jwt = client_assertion("client", "aud", &key).unwrap();
                let jwt_alg = match expected {
                    Algorithm::PS256 => jsonwebtoken::Algorithm::PS256,
                    _ => jsonwebtoken::Algorithm::RS256,
                };
                let mut validation = jsonwebtoken::Validation::new(jwt_alg);
                validation.set_audience(&["aud"]);
                let claims =
                    jsonwebtoken::decode::<serde_json::Value>(&jwt, &decoding, &validation)
                        .unwrap_or_else(|e| panic!("{form} {expected:?}: {e}"))
                        .claims;
                assert_eq!(claims["iss"], "client");
                assert_eq!(header_of(&jwt)["typ"], "JWT");
            }
        }
    }

    #[test]
    fn client_secret_jwt_verifies_as_hs256() {
        let key = SigningKey::hmac(&SecretString::from("a-client-secret"));
        let jwt = client_assertion("c", "aud", &key).unwrap();
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
        validation.set_audience(&["aud"]);
        jsonwebtoken::decode::<serde_json::Value>(
            &jwt,
            &jsonwebtoken::DecodingKey::from_secret(b"a-client-secret"),
            &validation,
        )
        .unwrap();
    }

    #[test]
    fn algorithm_must_fit_the_key() {
        let pem = SecretString::from(rcgen::KeyPair::generate().unwrap().serialize_pem());
        let err = SigningKey::from_pem(&pem, Some(SigningAlg::RS256), None).unwrap_err();
        assert!(err.to_string().contains("needs an RSA key"), "{err}");
        assert!(SigningKey::from_pem(&SecretString::from("garbage"), None, None).is_err());
    }

    #[test]
    fn assertions_are_unique_and_short_lived() {
        let key = SigningKey::hmac(&SecretString::from("s"));
        let a = client_assertion("c", "aud", &key).unwrap();
        let b = client_assertion("c", "aud", &key).unwrap();
        assert_ne!(a, b);
        let exp = unverified_exp(&a).unwrap();
        assert!(exp <= unix_now() + ASSERTION_LIFETIME_SECS);
        assert_eq!(unverified_exp("opaque-token"), None);
    }
}
