//! A stand-in workload identity issuer (think Kubernetes service account tokens
//! or a SPIFFE JWT-SVID issuer) for token exchange tests: it mints ES256 JWTs with
//! a fresh P-256 key that an [`crate::AuthServer`] can be told to trust.

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use crate::assertion::now_secs;
use crate::clients::JwtPublicKey;
use crate::BoxError;

/// Mints ES256 workload identity tokens for one issuer.
pub struct WorkloadIssuer {
    iss: String,
    kid: String,
    encoding: EncodingKey,
    private_pem: String,
    public_pem: String,
    public_jwk: Value,
}

impl std::fmt::Debug for WorkloadIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkloadIssuer")
            .field("iss", &self.iss)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl WorkloadIssuer {
    /// An issuer named `iss` with a fresh P-256 key.
    pub fn new(iss: &str) -> Result<WorkloadIssuer, BoxError> {
        let key = rcgen::KeyPair::generate()?;
        let private_pem = key.serialize_pem();
        let encoding = EncodingKey::from_ec_pem(private_pem.as_bytes())?;
        let point = key.public_key_raw();
        if point.len() != 65 || point[0] != 0x04 {
            return Err("unexpected P-256 public key encoding".into());
        }
        let kid = URL_SAFE_NO_PAD.encode(rand::random::<[u8; 9]>());
        let public_jwk = json!({
            "kty": "EC", "crv": "P-256",
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
            "kid": kid, "alg": "ES256", "use": "sig",
        });
        Ok(WorkloadIssuer {
            iss: iss.to_string(),
            kid,
            encoding,
            private_pem,
            public_pem: key.public_key_pem(),
            public_jwk,
        })
    }

    /// The issuer name (`iss` of minted tokens).
    pub fn iss(&self) -> &str {
        &self.iss
    }

    /// A token for `sub` with audience `aud`, issued now, valid for `lifetime`
    /// (`iss`, `sub`, `aud`, `iat`, `nbf`, `exp`, random `jti`; `typ: JWT`, `kid`).
    pub fn mint(&self, sub: &str, aud: &str, lifetime: Duration) -> Result<String, BoxError> {
        let now = now_secs();
        self.mint_claims(&json!({
            "iss": self.iss,
            "sub": sub,
            "aud": aud,
            "iat": now,
            "nbf": now,
            "exp": now.saturating_add(lifetime.as_secs()),
            "jti": URL_SAFE_NO_PAD.encode(rand::random::<[u8; 12]>()),
        }))
    }

    /// Signs arbitrary `claims` (e.g. an expired token, or a JWT bearer or
    /// `private_key_jwt` assertion) with this issuer's key.
    pub fn mint_claims(&self, claims: &Value) -> Result<String, BoxError> {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        header.typ = Some("JWT".to_string());
        Ok(jsonwebtoken::encode(&header, claims, &self.encoding)?)
    }

    /// The public key, ready for [`crate::AuthServer::trust_issuer`].
    pub fn public_key(&self) -> Result<JwtPublicKey, BoxError> {
        JwtPublicKey::from_pem(&self.public_pem)
    }

    /// The public key as SPKI PEM.
    pub fn public_key_pem(&self) -> &str {
        &self.public_pem
    }

    /// The public key as a JWK (with `kid` and `alg`).
    pub fn public_jwk(&self) -> &Value {
        &self.public_jwk
    }

    /// The private key as PKCS#8 PEM (for tests that sign with `jsonwebtoken` directly).
    pub fn private_key_pem(&self) -> &str {
        &self.private_pem
    }
}
