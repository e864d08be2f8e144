//! Authorization server metadata (OpenID Connect Discovery, falling back to RFC 8414): where
//! the token endpoint is, its mTLS alias, which client authentication methods it accepts.
//!
//! Fetched at start (a mismatched issuer or an unsupported `auth` refuses the config), cached,
//! and fetched again after a token request fails to reach the endpoint it named.

use std::sync::Mutex;

use serde::Deserialize;

use crate::config::ClientAuth;

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
    pub fn check_auth(&self, auth: ClientAuth) -> Result<(), String> {
        let supported: Vec<&str> = match &self.token_endpoint_auth_methods_supported {
            Some(list) => list.iter().map(String::as_str).collect(),
            None => vec!["client_secret_basic"],
        };
        if supported.contains(&auth.as_str()) {
            Ok(())
        } else {
            Err(format!(
                "the authorization server does not support auth = \"{auth}\"; it supports: {}",
                supported.join(", ")
            ))
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
}

impl DiscoveryError {
    /// Whether the server said something wrong (as opposed to not answering).
    pub fn is_misconfiguration(&self) -> bool {
        matches!(self, DiscoveryError::IssuerMismatch { .. })
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
        if let Some(m) = self
            .cached
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
        {
            return Ok(m);
        }
        let fresh = std::sync::Arc::new(self.fetch(http).await?);
        *self.cached.lock().unwrap_or_else(|e| e.into_inner()) = Some(fresh.clone());
        Ok(fresh)
    }

    /// Forgets the cached document (after its token endpoint could not be reached).
    pub fn forget(&self) {
        *self.cached.lock().unwrap_or_else(|e| e.into_inner()) = None;
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
            let doc: Metadata = match response.json().await {
                Ok(doc) => doc,
                Err(e) => {
                    tried.push(format!("{url}: not a metadata document ({e})"));
                    continue;
                }
            };
            let want = self.issuer.as_str().trim_end_matches('/');
            if doc.issuer.trim_end_matches('/') != want {
                return Err(DiscoveryError::IssuerMismatch {
                    issuer: want.to_string(),
                    url,
                    found: doc.issuer,
                });
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
        assert!(err.contains("supports: private_key_jwt"), "{err}");
        assert!(m.check_auth(ClientAuth::PrivateKeyJwt).is_ok());
    }
}
