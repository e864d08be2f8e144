//! The JWT half of the development authorization server: access-token claims,
//! the signing key (with its JWK) and the verifier the echo API uses.
//!
//! Tokens follow RFC 9068 loosely: ES256, header `typ: at+jwt` and a `kid`.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::BoxError;

/// The claims of an access token issued by [`crate::AuthServer`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Issuer: the server's [`crate::AuthServer::issuer`].
    pub iss: String,
    /// Subject: the client id (the client acts on its own behalf); for token
    /// exchange the subject token's `sub`, for JWT bearer the assertion's `sub`.
    pub sub: String,
    /// Audience: the `audience` parameter, else the `resource` parameter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
    /// Granted scopes, space separated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    /// Issued-at, seconds since the Unix epoch.
    pub iat: u64,
    /// Unique token id (random), used to revoke single tokens at the echo API.
    pub jti: String,
    /// The client the token was issued to.
    pub client_id: String,
    /// Token exchange only (RFC 8693 §4.1): the acting party, `{"sub": ...}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act: Option<serde_json::Value>,
    /// Confirmation (RFC 7800): `{"jkt": ...}` for DPoP-bound tokens (RFC 9449
    /// §6.1), `{"x5t#S256": ...}` for certificate-bound ones (RFC 8705 §3.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cnf: Option<serde_json::Value>,
}

impl Claims {
    /// Whether `scope` is one of the granted scopes.
    pub(crate) fn has_scope(&self, scope: &str) -> bool {
        self.scope
            .as_deref()
            .is_some_and(|granted| granted.split(' ').any(|s| s == scope))
    }
}

/// Verifies access tokens issued by one [`crate::AuthServer`]: ES256 signature with its
/// key, `kid`, `typ`, `iss`, `exp` (no leeway), and optionally `aud` and a scope.
#[derive(Clone)]
pub struct TokenVerifier {
    key: DecodingKey,
    kid: String,
    issuer: String,
}

impl std::fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenVerifier")
            .field("kid", &self.kid)
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

impl TokenVerifier {
    /// Checks `jwt` and returns its claims, or a human-readable reason for rejection.
    pub fn verify(
        &self,
        jwt: &str,
        audience: Option<&str>,
        required_scope: Option<&str>,
    ) -> Result<Claims, String> {
        let header =
            jsonwebtoken::decode_header(jwt).map_err(|e| format!("malformed token: {e}"))?;
        if header.alg != Algorithm::ES256 {
            return Err(format!("unexpected algorithm {:?}", header.alg));
        }
        if header.kid.as_deref() != Some(self.kid.as_str()) {
            return Err("unknown key id".to_string());
        }
        if header.typ.as_deref() != Some("at+jwt") {
            return Err("not an access token (typ is not at+jwt)".to_string());
        }
        let mut validation = Validation::new(Algorithm::ES256);
        validation.leeway = 0;
        validation.set_issuer(&[self.issuer.as_str()]);
        let mut required = vec!["exp", "iss", "sub"];
        match audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&required);
        let data = jsonwebtoken::decode::<Claims>(jwt, &self.key, &validation)
            .map_err(|e| format!("token rejected: {e}"))?;
        if let Some(scope) = required_scope {
            if !data.claims.has_scope(scope) {
                return Err(format!("token lacks scope {scope}"));
            }
        }
        Ok(data.claims)
    }
}

/// A fresh P-256 signing key of one server, with its public JWK and verifier.
pub(crate) struct SigningKey {
    encoding: EncodingKey,
    kid: String,
    /// The public key as a JWK (`kty`, `crv`, `x`, `y`, `kid`, `alg`, `use`).
    pub(crate) jwk: serde_json::Value,
    /// Verifies tokens signed by this key for `issuer`.
    pub(crate) verifier: TokenVerifier,
}

impl SigningKey {
    /// Generates a key for tokens whose `iss` is `issuer`.
    pub(crate) fn generate(issuer: &str) -> Result<SigningKey, BoxError> {
        let key = rcgen::KeyPair::generate()?;
        let encoding = EncodingKey::from_ec_pem(key.serialize_pem().as_bytes())?;
        let point = key.public_key_raw();
        if point.len() != 65 || point[0] != 0x04 {
            return Err("unexpected P-256 public key encoding".into());
        }
        let x = URL_SAFE_NO_PAD.encode(&point[1..33]);
        let y = URL_SAFE_NO_PAD.encode(&point[33..65]);
        let kid = URL_SAFE_NO_PAD.encode(rand::random::<[u8; 9]>());
        let jwk = json!({
            "kty": "EC", "crv": "P-256", "x": x, "y": y,
            "kid": kid, "alg": "ES256", "use": "sig",
        });
        let verifier = TokenVerifier {
            key: DecodingKey::from_ec_components(&x, &y)?,
            kid: kid.clone(),
            issuer: issuer.to_string(),
        };
        Ok(SigningKey {
            encoding,
            kid,
            jwk,
            verifier,
        })
    }

    /// Signs `claims` as an ES256 access token (`typ: at+jwt`, with our `kid`).
    pub(crate) fn sign(&self, claims: &Claims) -> Result<String, jsonwebtoken::errors::Error> {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        header.typ = Some("at+jwt".to_string());
        jsonwebtoken::encode(&header, claims, &self.encoding)
    }
}
