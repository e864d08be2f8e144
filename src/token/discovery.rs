//! Authorization server metadata (OpenID Connect Discovery, falling back to RFC 8414): where
//! the token endpoint is, its mTLS alias, which client authentication methods it accepts.
//!
//! Fetched at start (a mismatched issuer or an unsupported `auth` refuses the config), cached,
//! and fetched again after a token request fails to reach the endpoint it named.

use std::sync::Mutex;

use serde::Deserialize;

use crate::config::ClientAuth;
use crate::sync::lock;

/// The parts of the metadata document the proxy uses.
#[derive(Debug, Clone, Deserialize)]
pub struct Metadata {
    /// Must equal the configured issuer.
    pub issuer: String,
    /// The token endpoint.
    pub token_endpoint: String,
    /// Accepted client authentication methods (RFC 8414 default: client_secret_basic).
    #[serde(default)]
    pub token_endpoint_auth_methods_supported: Option<Vec<String>>,
    /// RFC 8705 §5: endpoints for mutual-TLS clients.
    #[serde(default)]
    pub mtls_endpoint_aliases: Option<MtlsAliases>,
}

/// RFC 8705 `mtls_endpoint_aliases`.
#[derive(Debug, Clone, Deserialize)]
pub struct MtlsAliases {
    /// The token endpoint for mutual-TLS clients.
    pub token_endpoint: Option<String>,
}

impl Metadata {
    /// The token endpoint to call: the mTLS alias for clients presenting a certificate
    /// (RFC 8705 §5), else the plain one.
    pub fn token_endpoint_for(&self, mtls: bool) -> &str {
        match (mtls, &self.mtls_endpoint_aliases) {
            (
                true,
                Some(MtlsAliases {
                    token_endpoint: Some(alias),
                }),
            ) => alias,
            _ => &self.token_endpoint,
        }
    }

    /// Refuses an `auth` the server does not list, saying what it does support.
    pub(crate) fn check_auth(&self, auth: ClientAuth) -> Result<(), UnsupportedAuth> {
        let supported: Vec<String> = match &self.token_endpoint_auth_methods_supported {
            Some(list) => list.clone(),
            None => vec!["client_secret_basic".to_string()],
        };
        // A platform-issued assertion is a `private_key_jwt` assertion to the server.
        let name = match auth {
            ClientAuth::ClientAssertion => "private_key_jwt",
            other => other.as_str(),
        };
        if supported.iter().any(|s| s == name) {
            Ok(())
        } else {
            Err(UnsupportedAuth { auth, supported })
        }
    }
}

/// The server does not accept the client's `auth`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the authorization server does not support auth = \"{auth}\"; it supports: {}", supported.join(", "))]
pub struct UnsupportedAuth {
    /// The configured method.
    pub auth: ClientAuth,
    /// The methods the metadata lists (`client_secret_basic` when it lists none).
    pub supported: Vec<String>,
}

/// Why a discovered client cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryCheck {
    /// No (acceptable) metadata.
    #[error(transparent)]
    Fetch(DiscoveryError),
    /// The server does not accept the client's `auth`.
    #[error(transparent)]
    Unsupported(UnsupportedAuth),
}

impl DiscoveryCheck {
    /// Whether this is a configuration error (as opposed to the server not answering).
    pub fn is_misconfiguration(&self) -> bool {
        match self {
            DiscoveryCheck::Fetch(e) => e.is_misconfiguration(),
            DiscoveryCheck::Unsupported(_) => true,
        }
    }
}

/// Why metadata could not be had.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DiscoveryError {
    /// The server could not be reached or gave no document.
    #[error("cannot fetch metadata for issuer {issuer}: {detail}")]
    Unavailable {
        /// The issuer.
        issuer: String,
        /// What failed, per URL tried.
        detail: String,
    },
    /// The document names another issuer (RFC 8414 §3.3: must be refused).
    #[error(
        "metadata at {url} names issuer {found:?}, not the configured {issuer:?}; refusing it"
    )]
    IssuerMismatch {
        /// The configured issuer.
        issuer: String,
        /// Where the document came from.
        url: String,
        /// What it said.
        found: String,
    },
    /// The document names a token endpoint that is not `https` (RFC 8414 §2 requires it;
    /// plain http only on loopback, as for a configured `token_endpoint`).
    #[error("metadata at {url} for issuer {issuer} names {field} = {value:?}, which is not an https URL (plain http only on loopback); refusing it")]
    NotHttps {
        /// The configured issuer.
        issuer: String,
        /// Where the document came from.
        url: String,
        /// `token_endpoint` or `mtls_endpoint_aliases.token_endpoint`.
        field: &'static str,
        /// What it said.
        value: String,
    },
    /// The document is larger than [`MAX_DOCUMENT_BYTES`].
    #[error("metadata at {url} for issuer {issuer} is larger than {} KiB; refusing it", MAX_DOCUMENT_BYTES / 1024)]
    TooLarge {
        /// The configured issuer.
        issuer: String,
        /// Where the document came from.
        url: String,
    },
}

/// The largest metadata document read: real ones are a few KiB, and the proxy holds the
/// document in memory for as long as it runs.
pub const MAX_DOCUMENT_BYTES: usize = 256 * 1024;

impl DiscoveryError {
    /// Whether the server said something wrong (as opposed to not answering).
    pub fn is_misconfiguration(&self) -> bool {
        !matches!(self, DiscoveryError::Unavailable { .. })
    }
}

/// The body of `response`, refused once it passes `limit` bytes (by `Content-Length` or
/// as it streams). `Ok(None)` when it is too large.
async fn capped_body(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<Option<Vec<u8>>, reqwest::Error> {
    if response.content_length().is_some_and(|n| n > limit as u64) {
        return Ok(None);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if body.len() + chunk.len() > limit {
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body))
}

/// Refuses a discovered endpoint that is not https (plain http only to a loopback host).
fn check_https(
    issuer: &str,
    url: &str,
    field: &'static str,
    value: &str,
) -> Result<(), DiscoveryError> {
    let ok = reqwest::Url::parse(value).is_ok_and(|u| {
        u.scheme() == "https" || (u.scheme() == "http" && crate::config::is_loopback(&u))
    });
    if ok {
        Ok(())
    } else {
        Err(DiscoveryError::NotHttps {
            issuer: issuer.to_string(),
            url: url.to_string(),
            field,
            value: value.to_string(),
        })
    }
}

/// Cached metadata for one issuer.
pub struct Discovery {
    issuer: reqwest::Url,
    cached: Mutex<Option<std::sync::Arc<Metadata>>>,
}

/// The two well-known locations, in the order tried.
fn candidates(issuer: &reqwest::Url) -> Vec<String> {
    let base = issuer.as_str().trim_end_matches('/');
    let path = issuer.path().trim_end_matches('/');
    let origin = issuer.origin().ascii_serialization();
    vec![
        format!("{base}/.well-known/openid-configuration"),
        // RFC 8414 §3.1: the well-known segment goes between the host and the path.
        format!("{origin}/.well-known/oauth-authorization-server{path}"),
    ]
}

impl Discovery {
    /// Discovery for `issuer`, nothing cached yet.
    pub fn new(issuer: reqwest::Url) -> Discovery {
        Discovery {
            issuer,
            cached: Mutex::new(None),
        }
    }

    /// The cached metadata, or a fresh fetch.
    pub async fn metadata(
        &self,
        http: &reqwest::Client,
    ) -> Result<std::sync::Arc<Metadata>, DiscoveryError> {
        if let Some(m) = lock(&self.cached).clone() {
            return Ok(m);
        }
        let fresh = std::sync::Arc::new(self.fetch(http).await?);
        *lock(&self.cached) = Some(fresh.clone());
        Ok(fresh)
    }

    /// Forgets the cached document (after its token endpoint could not be reached).
    pub fn forget(&self) {
        *lock(&self.cached) = None;
    }

    async fn fetch(&self, http: &reqwest::Client) -> Result<Metadata, DiscoveryError> {
        let mut tried = Vec::new();
        for url in candidates(&self.issuer) {
            let response = match http
                .get(&url)
                .header("accept", "application/json")
                .send()
                .await
            {
                Ok(r) => r,
                Err(e) => {
                    tried.push(format!("{url}: {}", crate::error::chain(&e)));
                    continue;
                }
            };
            if !response.status().is_success() {
                tried.push(format!("{url}: HTTP {}", response.status().as_u16()));
                continue;
            }
            let body = match capped_body(response, MAX_DOCUMENT_BYTES).await {
                Ok(Some(body)) => body,
                Ok(None) => {
                    return Err(DiscoveryError::TooLarge {
                        issuer: self.issuer.to_string(),
                        url,
                    })
                }
                Err(e) => {
                    tried.push(format!("{url}: {}", crate::error::chain(&e)));
                    continue;
                }
            };
            let doc: Metadata = match serde_json::from_slice(&body) {
                Ok(doc) => doc,
                Err(e) => {
                    tried.push(format!("{url}: not a metadata document ({e})"));
                    continue;
                }
            };
            // RFC 8414 §3.3 and OIDC Discovery §4.3 want the issuer identical; a trailing
            // slash is ignored (Auth0 publishes `https://tenant.auth0.com/`, and people
            // write it without): the same origin and path, so no other server's metadata.
            let want = self.issuer.as_str().trim_end_matches('/');
            if doc.issuer.trim_end_matches('/') != want {
                return Err(DiscoveryError::IssuerMismatch {
                    issuer: want.to_string(),
                    url,
                    found: doc.issuer,
                });
            }
            check_https(want, &url, "token_endpoint", &doc.token_endpoint)?;
            if let Some(alias) = doc
                .mtls_endpoint_aliases
                .as_ref()
                .and_then(|a| a.token_endpoint.as_deref())
            {
                check_https(want, &url, "mtls_endpoint_aliases.token_endpoint", alias)?;
            }
            return Ok(doc);
        }
        Err(DiscoveryError::Unavailable {
            issuer: self.issuer.to_string(),
            detail: tried.join("; "),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn well_known_locations() {
        let plain = reqwest::Url::parse("https://idp.example").unwrap();
        assert_eq!(
            candidates(&plain),
            [
                "https://idp.example/.well-known/openid-configuration",
                "https://idp.example/.well-known/oauth-authorization-server"
            ]
        );
        let tenant = reqwest::Url::parse("https://idp.example/realms/prod").unwrap();
        assert_eq!(
            candidates(&tenant),
            [
                "https://idp.example/realms/prod/.well-known/openid-configuration",
                "https://idp.example/.well-known/oauth-authorization-server/realms/prod"
            ]
        );
    }

    #[test]
    fn unsupported_auth_names_what_is_supported() {
        let m = Metadata {
            issuer: "https://idp.example".into(),
            token_endpoint: "https://idp.example/token".into(),
            token_endpoint_auth_methods_supported: Some(vec!["private_key_jwt".into()]),
            mtls_endpoint_aliases: None,
        };
        let err = m.check_auth(ClientAuth::ClientSecretBasic).unwrap_err();
        let err = err.to_string();
        assert!(err.contains("supports: private_key_jwt"), "{err}");
        assert!(m.check_auth(ClientAuth::PrivateKeyJwt).is_ok());
    }
}
