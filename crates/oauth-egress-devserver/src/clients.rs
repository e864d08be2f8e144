//! Client registrations of the development authorization server: which client
//! authentication methods (RFC 6749 §2.3, RFC 7523, RFC 8705, OIDC Core §9) a client
//! may use and the credentials they are checked against.

use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};

use crate::auth_server::DevClient;
use crate::BoxError;

/// A token endpoint client authentication method (the registered names of the
/// IANA "OAuth Token Endpoint Authentication Methods" registry).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthMethod {
    /// HTTP Basic with the form-urlencoded id and secret (RFC 6749 §2.3.1).
    ClientSecretBasic,
    /// `client_id` and `client_secret` in the form body (RFC 6749 §2.3.1).
    ClientSecretPost,
    /// An HS256 JWT assertion signed with the client secret (OIDC Core §9).
    ClientSecretJwt,
    /// A JWT assertion signed with the client's private key (RFC 7523 §2.2).
    PrivateKeyJwt,
    /// A PKI client certificate on the mTLS endpoint alias (RFC 8705 §2.1).
    TlsClientAuth,
    /// A public client: `client_id` only (RFC 6749 §2.1).
    None,
}

impl AuthMethod {
    /// Every method, in the order the discovery document lists them.
    pub const ALL: [AuthMethod; 6] = [
        AuthMethod::ClientSecretBasic,
        AuthMethod::ClientSecretPost,
        AuthMethod::ClientSecretJwt,
        AuthMethod::PrivateKeyJwt,
        AuthMethod::TlsClientAuth,
        AuthMethod::None,
    ];

    /// The registered name, e.g. `private_key_jwt`.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::ClientSecretBasic => "client_secret_basic",
            AuthMethod::ClientSecretPost => "client_secret_post",
            AuthMethod::ClientSecretJwt => "client_secret_jwt",
            AuthMethod::PrivateKeyJwt => "private_key_jwt",
            AuthMethod::TlsClientAuth => "tls_client_auth",
            AuthMethod::None => "none",
        }
    }
}

/// Which `aud` a client's JWT assertions must carry (per-client registration option).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AssertionAudience {
    /// The URL of the token endpoint the request was sent to (RFC 7523 §3, the default).
    #[default]
    TokenEndpoint,
    /// The issuer identifier (what some servers, and OIDC Core errata, expect).
    Issuer,
    /// Either of the above.
    Either,
}

/// A public key that verifies JWTs: RSA (RS256, PS256) or P-256 (ES256).
#[derive(Clone)]
pub struct JwtPublicKey {
    pub(super) key: DecodingKey,
    pub(super) family: AlgorithmFamily,
}

impl std::fmt::Debug for JwtPublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtPublicKey")
            .field("family", &self.family)
            .finish_non_exhaustive()
    }
}

impl JwtPublicKey {
    /// Parses a PEM public key: SPKI `PUBLIC KEY` (RSA or EC) or PKCS#1 `RSA PUBLIC KEY`.
    pub fn from_pem(pem: &str) -> Result<JwtPublicKey, BoxError> {
        if let Ok(key) = DecodingKey::from_rsa_pem(pem.as_bytes()) {
            return Ok(JwtPublicKey {
                key,
                family: AlgorithmFamily::Rsa,
            });
        }
        let key = DecodingKey::from_ec_pem(pem.as_bytes())
            .map_err(|err| format!("not an RSA or EC public key in PEM form: {err}"))?;
        Ok(JwtPublicKey {
            key,
            family: AlgorithmFamily::Ec,
        })
    }

    /// Parses a public JWK (`kty` `RSA` or `EC`), as found in a JWKS.
    pub fn from_jwk(jwk: &serde_json::Value) -> Result<JwtPublicKey, BoxError> {
        let jwk: Jwk = serde_json::from_value(jwk.clone())?;
        let key = DecodingKey::from_jwk(&jwk)?;
        let family = key.family();
        if !matches!(family, AlgorithmFamily::Rsa | AlgorithmFamily::Ec) {
            return Err("only RSA and EC JWKs are supported".into());
        }
        Ok(JwtPublicKey { key, family })
    }

    /// Whether this key can verify signatures made with `alg`.
    pub fn supports(&self, alg: Algorithm) -> bool {
        match self.family {
            AlgorithmFamily::Rsa => matches!(alg, Algorithm::RS256 | Algorithm::PS256),
            AlgorithmFamily::Ec => alg == Algorithm::ES256,
            _ => false,
        }
    }

    /// The algorithms this key verifies by default: RS256 and PS256, or ES256.
    pub(crate) fn default_algs(&self) -> Vec<Algorithm> {
        [Algorithm::RS256, Algorithm::PS256, Algorithm::ES256]
            .into_iter()
            .filter(|alg| self.supports(*alg))
            .collect()
    }
}

/// How a client authenticates at the token endpoint and with what credentials.
///
/// Build one with a constructor and adjust it with the `with_*` methods.
#[derive(Clone)]
pub struct ClientAuthSpec {
    /// The methods the client may use; anything else is `invalid_client`.
    pub methods: Vec<AuthMethod>,
    /// The shared secret (for `client_secret_*`; compared in constant time).
    pub secret: Option<String>,
    /// The registered public key (for `private_key_jwt`).
    pub public_key: Option<JwtPublicKey>,
    /// Allowed assertion algorithms (`token_endpoint_auth_signing_alg`).
    pub signing_algs: Vec<Algorithm>,
    /// Which `aud` the client's assertions must carry.
    pub assertion_audience: AssertionAudience,
    /// The DNS SAN the client certificate must carry for `tls_client_auth`
    /// (RFC 8705 §2.1.2 `tls_client_auth_san_dns`; checked like a server name).
    pub tls_client_auth_san_dns: Option<String>,
}

impl std::fmt::Debug for ClientAuthSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientAuthSpec")
            .field("methods", &self.methods)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("public_key", &self.public_key)
            .field("signing_algs", &self.signing_algs)
            .field("assertion_audience", &self.assertion_audience)
            .field("tls_client_auth_san_dns", &self.tls_client_auth_san_dns)
            .finish()
    }
}

impl ClientAuthSpec {
    fn empty(methods: Vec<AuthMethod>) -> ClientAuthSpec {
        ClientAuthSpec {
            methods,
            secret: None,
            public_key: None,
            signing_algs: Vec::new(),
            assertion_audience: AssertionAudience::TokenEndpoint,
            tls_client_auth_san_dns: None,
        }
    }

    /// A confidential client with a secret sent by `client_secret_basic` or
    /// `client_secret_post` (what a plain [`DevClient`] means).
    pub fn secret(secret: &str) -> ClientAuthSpec {
        ClientAuthSpec {
            secret: Some(secret.to_string()),
            ..ClientAuthSpec::empty(vec![
                AuthMethod::ClientSecretBasic,
                AuthMethod::ClientSecretPost,
            ])
        }
    }

    /// `client_secret_jwt` only: HS256 assertions signed with `secret`.
    pub fn secret_jwt(secret: &str) -> ClientAuthSpec {
        ClientAuthSpec {
            secret: Some(secret.to_string()),
            signing_algs: vec![Algorithm::HS256],
            ..ClientAuthSpec::empty(vec![AuthMethod::ClientSecretJwt])
        }
    }

    /// `private_key_jwt` only, verified with `key`; `algs` are the allowed
    /// algorithms (empty: every algorithm the key supports).
    pub fn private_key_jwt(key: JwtPublicKey, algs: &[Algorithm]) -> ClientAuthSpec {
        let signing_algs = if algs.is_empty() {
            key.default_algs()
        } else {
            algs.to_vec()
        };
        ClientAuthSpec {
            public_key: Some(key),
            signing_algs,
            ..ClientAuthSpec::empty(vec![AuthMethod::PrivateKeyJwt])
        }
    }

    /// `tls_client_auth` only: a certificate from the mTLS CA whose DNS SAN is `san_dns`.
    pub fn tls_client_auth(san_dns: &str) -> ClientAuthSpec {
        ClientAuthSpec {
            tls_client_auth_san_dns: Some(san_dns.to_string()),
            ..ClientAuthSpec::empty(vec![AuthMethod::TlsClientAuth])
        }
    }

    /// A public client (`none`): `client_id` in the body, no credentials.
    pub fn public() -> ClientAuthSpec {
        ClientAuthSpec::empty(vec![AuthMethod::None])
    }

    /// Sets which `aud` assertions must carry.
    pub fn with_assertion_audience(mut self, audience: AssertionAudience) -> ClientAuthSpec {
        self.assertion_audience = audience;
        self
    }

    /// Whether the client may authenticate with `method`.
    pub fn allows(&self, method: AuthMethod) -> bool {
        self.methods.contains(&method)
    }
}

/// A client registered with the development server (the general form of [`DevClient`]).
#[derive(Clone, Debug)]
pub struct ClientRegistration {
    /// The `client_id`.
    pub id: String,
    /// Scopes the client may request; `None` allows any scope.
    pub allowed_scopes: Option<Vec<String>>,
    /// How the client authenticates.
    pub auth: ClientAuthSpec,
}

impl ClientRegistration {
    /// A client `id` authenticating as `auth`, allowed any scope.
    pub fn new(id: &str, auth: ClientAuthSpec) -> ClientRegistration {
        ClientRegistration {
            id: id.to_string(),
            allowed_scopes: None,
            auth,
        }
    }

    /// Restricts the scopes the client may request.
    pub fn with_scopes(mut self, scopes: &[&str]) -> ClientRegistration {
        self.allowed_scopes = Some(scopes.iter().map(|s| s.to_string()).collect());
        self
    }
}

impl From<DevClient> for ClientRegistration {
    fn from(client: DevClient) -> ClientRegistration {
        ClientRegistration {
            auth: ClientAuthSpec::secret(&client.secret),
            id: client.id,
            allowed_scopes: client.allowed_scopes,
        }
    }
}
