//! `[clients.NAME]`: one OAuth client registration, how it finds its token endpoint (fixed or
//! by discovery) and how it authenticates there.

use std::fmt;
use std::path::Path;

use serde::Deserialize;

use super::source::{RawSecret, RawSource};
use super::Findings;
use crate::secret::SecretSource;

/// How a client authenticates at the token endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    /// HTTP Basic with the form-urlencoded id and secret (RFC 6749 §2.3.1).
    ClientSecretBasic,
    /// `client_id` and `client_secret` in the request body.
    ClientSecretPost,
    /// A JWT assertion signed HS256 with the client secret (RFC 7523).
    ClientSecretJwt,
    /// A JWT assertion signed with the client's private key (RFC 7523).
    PrivateKeyJwt,
    /// Mutual TLS with the client's certificate (RFC 8705 §2.1).
    TlsClientAuth,
    /// A public client: `client_id` in the body, no credential.
    None,
    /// A JWT the platform issued to the workload (a projected service-account token, a CI
    /// OIDC token), sent as the client's assertion (RFC 7523; federated workload identity).
    ClientAssertion,
}

impl ClientAuth {
    /// The name servers use in `token_endpoint_auth_methods_supported`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClientSecretBasic => "client_secret_basic",
            Self::ClientSecretPost => "client_secret_post",
            Self::ClientSecretJwt => "client_secret_jwt",
            Self::PrivateKeyJwt => "private_key_jwt",
            Self::TlsClientAuth => "tls_client_auth",
            Self::None => "none",
            Self::ClientAssertion => "client_assertion",
        }
    }
}

impl fmt::Display for ClientAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Signature algorithms for JWT assertions signed with a private key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
pub enum SigningAlg {
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    RS256,
    /// RSASSA-PSS with SHA-256.
    PS256,
    /// ECDSA P-256 with SHA-256.
    ES256,
}

/// What a client assertion's `aud` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum AssertionAudience {
    /// The token endpoint URL (RFC 7523's suggestion; most servers).
    #[default]
    TokenEndpoint,
    /// The issuer identifier (servers that want that, e.g. some OIDC providers).
    Issuer,
}

/// Where a client's token endpoint comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// Configured as `token_endpoint`.
    Fixed(reqwest::Url),
    /// Discovered from `issuer` (RFC 8414 / OpenID Connect Discovery).
    Discovered(reqwest::Url),
}

/// One OAuth client registration, `[clients.NAME]`, validated.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The table name, used in messages.
    pub name: String,
    /// The token endpoint, or the issuer to discover it from.
    pub endpoint: Endpoint,
    /// `client_id`.
    pub client_id: String,
    /// Authentication method.
    pub auth: ClientAuth,
    /// The client secret (secret_basic, secret_post, secret_jwt).
    pub client_secret: Option<SecretSource>,
    /// PEM private key (private_key_jwt and jwt_bearer assertions).
    pub private_key: Option<SecretSource>,
    /// Algorithm for private-key assertions; `None`: ES256 for EC keys, RS256 for RSA keys.
    pub signing_alg: Option<SigningAlg>,
    /// `kid` header of private-key assertions.
    pub key_id: Option<String>,
    /// What client assertions name as `aud`.
    pub assertion_audience: AssertionAudience,
    /// The certificate of `private_key`, PEM: its SHA-1 and SHA-256 thumbprints go in the
    /// assertion header as `x5t` and `x5t#S256` (Microsoft Entra ID certificate credentials).
    pub assertion_cert: Option<SecretSource>,
    /// Client certificate chain, PEM (tls_client_auth).
    pub client_cert: Option<SecretSource>,
    /// Client certificate key, PEM (tls_client_auth).
    pub client_key: Option<SecretSource>,
    /// Every route of this client uses DPoP.
    pub dpop: bool,
    /// Where the DPoP key lives (a file is created if absent); `None`: a key generated at
    /// start.
    pub dpop_key: Option<SecretSource>,
    /// The workload's JWT, for `auth = "client_assertion"`: re-read on every token request
    /// (the kubelet rotates it), its `exp` checked before it is sent.
    pub client_assertion: Option<SecretSource>,
    /// Extra token request parameters for every route of this client (`token_params`).
    pub token_params: std::collections::BTreeMap<String, String>,
    /// How `client_secret_basic` encodes the id and secret before base64.
    pub basic_encoding: BasicEncoding,
}

/// How `client_secret_basic` writes the id and secret (`basic_encoding`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum BasicEncoding {
    /// Form-urlencoded before base64, as RFC 6749 §2.3.1 requires.
    #[default]
    Form,
    /// As they are: for servers that do not form-decode Basic credentials (Glewlwyd).
    Raw,
}

impl ClientConfig {
    /// The configured token endpoint or issuer, for messages.
    pub fn endpoint_label(&self) -> String {
        match &self.endpoint {
            Endpoint::Fixed(url) => url.to_string(),
            Endpoint::Discovered(issuer) => format!("{issuer} (discovered)"),
        }
    }

    /// The issuer, when configured.
    pub fn issuer(&self) -> Option<&reqwest::Url> {
        match &self.endpoint {
            Endpoint::Discovered(issuer) => Some(issuer),
            Endpoint::Fixed(_) => None,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawClient {
    token_endpoint: Option<String>,
    issuer: Option<String>,
    client_id: String,
    auth: ClientAuth,
    client_secret: Option<RawSecret>,
    private_key: Option<RawSource>,
    signing_alg: Option<SigningAlg>,
    key_id: Option<String>,
    #[serde(default)]
    assertion_audience: AssertionAudience,
    assertion_cert: Option<RawSource>,
    client_cert: Option<RawSource>,
    client_key: Option<RawSource>,
    #[serde(default)]
    dpop: bool,
    dpop_key: Option<RawSource>,
    #[serde(default)]
    token_params: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    basic_encoding: BasicEncoding,
    client_assertion: Option<RawSource>,
}

/// Whether `url`'s host is `localhost` or a loopback IP: the only hosts plain http may go
/// to, configured or discovered.
pub(crate) fn is_loopback(url: &reqwest::Url) -> bool {
    url.host_str().is_some_and(|h| {
        h.eq_ignore_ascii_case("localhost")
            || h.trim_matches(['[', ']'])
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    })
}

/// An https URL (plain http only for loopback hosts, with a warning).
fn https_url(at: &str, raw: &str, found: &mut Findings) -> Option<reqwest::Url> {
    let url = match reqwest::Url::parse(raw) {
        Ok(url) => url,
        Err(err) => {
            found.problem(format!("{at} is not a URL ({err}): {raw}"));
            return None;
        }
    };
    let loopback = is_loopback(&url);
    match url.scheme() {
        "https" => {}
        "http" if loopback => found.warn(format!(
            "{at} uses plain http (allowed only because the host is loopback)"
        )),
        _ => found.problem(format!(
            "{at} must be an https URL (plain http only on loopback), got {raw}"
        )),
    }
    Some(url)
}

/// One `[clients.NAME]`, checked: `None` when it has no usable endpoint (every problem is in
/// `found`, named `clients.NAME`).
pub(super) fn validate(
    name: String,
    c: RawClient,
    base: &Path,
    found: &mut Findings,
) -> Option<ClientConfig> {
    let at = format!("clients.{name}");
    let endpoint = endpoint(&c, &at, found)?;
    if c.client_id.is_empty() {
        found.problem(format!("{at}.client_id is empty"));
    }
    let source = |s: Option<RawSource>| s.map(|s| s.into_source(base));
    let client = ClientConfig {
        name,
        endpoint,
        client_id: c.client_id,
        auth: c.auth,
        client_secret: c.client_secret.map(|s: RawSecret| s.into_source(base)),
        private_key: source(c.private_key),
        signing_alg: c.signing_alg,
        key_id: c.key_id,
        assertion_audience: c.assertion_audience,
        assertion_cert: source(c.assertion_cert),
        client_cert: source(c.client_cert),
        client_key: source(c.client_key),
        dpop: c.dpop,
        dpop_key: source(c.dpop_key),
        client_assertion: source(c.client_assertion),
        token_params: c.token_params,
        basic_encoding: c.basic_encoding,
    };
    super::params::check_token_params(&client.token_params, &at, found);
    if client.basic_encoding == BasicEncoding::Raw && client.auth != ClientAuth::ClientSecretBasic {
        found.problem(format!(
            "{at}: basic_encoding applies to auth = \"client_secret_basic\" only"
        ));
    }
    check_credentials(&client, &at, found);
    if client.assertion_audience == AssertionAudience::Issuer && c.issuer.is_none() {
        found.problem(format!(
            "{at}: assertion_audience = \"issuer\" needs `issuer` to be set"
        ));
    }
    Some(client)
}

/// `token_endpoint`, or `issuer` to discover it from: exactly one, an https URL.
fn endpoint(c: &RawClient, at: &str, found: &mut Findings) -> Option<Endpoint> {
    match (&c.token_endpoint, &c.issuer) {
        (Some(e), None) => Some(Endpoint::Fixed(https_url(
            &format!("{at}.token_endpoint"),
            e,
            found,
        )?)),
        (None, Some(i)) => Some(Endpoint::Discovered(https_url(
            &format!("{at}.issuer"),
            i,
            found,
        )?)),
        (Some(_), Some(_)) => {
            found.problem(format!(
                "{at}: give either token_endpoint or issuer (to discover it), not both"
            ));
            None
        }
        (None, None) => {
            found.problem(format!("{at}: token_endpoint or issuer is required"));
            None
        }
    }
}

/// The credentials `auth` needs are configured, and the ones that go in pairs come in pairs.
fn check_credentials(c: &ClientConfig, at: &str, found: &mut Findings) {
    let mut require = |present: bool, key: &str| {
        if !present {
            found.problem(format!("{at}.{key} is required for auth = \"{}\"", c.auth));
        }
    };
    match c.auth {
        ClientAuth::ClientSecretBasic
        | ClientAuth::ClientSecretPost
        | ClientAuth::ClientSecretJwt => require(c.client_secret.is_some(), "client_secret"),
        ClientAuth::PrivateKeyJwt => require(c.private_key.is_some(), "private_key"),
        ClientAuth::TlsClientAuth => {
            require(c.client_cert.is_some(), "client_cert");
            require(c.client_key.is_some(), "client_key");
        }
        ClientAuth::ClientAssertion => require(c.client_assertion.is_some(), "client_assertion"),
        ClientAuth::None => {}
    }
    if c.client_assertion.is_some() && c.auth != ClientAuth::ClientAssertion {
        found.problem(format!(
            "{at}: client_assertion is used with auth = \"client_assertion\" only"
        ));
    }
    if c.client_cert.is_some() != c.client_key.is_some() {
        found.problem(format!("{at}: client_cert and client_key go together"));
    }
    if c.assertion_cert.is_some() && c.private_key.is_none() {
        found.problem(format!(
            "{at}: assertion_cert is the certificate of private_key, which is not set"
        ));
    }
}
