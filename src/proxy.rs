//! The assembled proxy: a validated config with its route table, the interception CA, the
//! upstream pool and the token cache. Built once at start and shared by every connection.

use std::sync::Arc;

use rustls::pki_types::CertificateDer;

use crate::config::Config;
use crate::intercept::ca::{CaError, CertificateAuthority};
use crate::route::{Route, RouteTable};
use crate::tls::RootsError;
use crate::token::{Fetcher, TokenCache};
use crate::upstream::Upstream;

/// Everything a connection needs.
pub struct Proxy {
    /// The configuration it was built from.
    pub config: Config,
    /// Routes, indexed.
    pub routes: RouteTable,
    /// The interception CA.
    pub ca: Arc<CertificateAuthority>,
    /// Pooled upstream connections.
    pub upstream: Upstream,
    /// Cached tokens.
    pub tokens: Arc<TokenCache>,
}

/// Why the proxy could not be assembled.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The CA could not be loaded or created.
    #[error("interception CA: {0}")]
    Ca(#[from] CaError),
    /// A trust root could not be loaded.
    #[error("proxy.upstream_roots: {0}")]
    Roots(#[from] RootsError),
    /// The token HTTP client could not be built.
    #[error("token client: {0}")]
    TokenClient(#[from] reqwest::Error),
}

impl Proxy {
    /// Assembles the proxy. `extra_roots` are trusted for upstream TLS and token endpoints
    /// besides webpki roots and `proxy.upstream_roots` (the demo and tests use it).
    pub fn new(
        config: Config,
        ca: Arc<CertificateAuthority>,
        extra_roots: &[CertificateDer<'static>],
    ) -> Result<Arc<Proxy>, StartError> {
        let roots = crate::tls::root_store(&config.proxy.upstream_roots, extra_roots)?;
        let fetcher = Fetcher::new(
            config.tokens.clone(),
            crate::tls::client_config(roots.clone()),
        )?;
        let tokens = Arc::new(TokenCache::new(Arc::new(fetcher)));
        let routes = config
            .routes
            .iter()
            .filter_map(|spec| {
                let client = config.clients.get(&spec.client)?.clone();
                Some(Arc::new(Route {
                    spec: spec.clone(),
                    token: tokens.slot(&client, spec),
                    client,
                }))
            })
            .collect();
        Ok(Arc::new(Proxy {
            upstream: Upstream::new(roots, &config.proxy),
            routes: RouteTable::new(routes),
            ca,
            tokens,
            config,
        }))
    }
}
