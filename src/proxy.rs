//! The assembled proxy: a validated config with its route table, the interception CA, the
//! upstream pool and the token cache. Built once at start and shared by every connection.
//!
//! Where it sits in the import order: every step of a request reads it (listener, connect,
//! intercept, forward), and it holds only what lies below them (config, route, token,
//! upstream, tls, `ca`), so it comes right after `forward` and before those.

use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::pki_types::CertificateDer;

use crate::ca::{CaError, CertificateAuthority};
use crate::caller::Callers;
use crate::config::Config;
use crate::replay::ReplayBudget;
use crate::route::{Route, RouteCredential, RouteTable};
use crate::sender::credential::StaticHeader;
use crate::tls::RootsError;
use crate::token::shared::SharedStore;
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
    /// `[[caller]]`s and `proxy.callers`: who may use the proxy.
    pub callers: Callers,
    /// What replay copies hold in all (`limits.replay_buffer_total_bytes`), kept on reload.
    pub replay_budget: Arc<ReplayBudget>,
    /// What the status page keeps across reloads (traffic ring, reload history).
    pub ops: Arc<crate::status::Ops>,
    extra_roots: Vec<CertificateDer<'static>>,
}

/// The proxy currently in force, swapped atomically on reload: each request loads it once,
/// so requests in flight finish on the configuration they started with.
pub type SharedProxy = Arc<ArcSwap<Proxy>>;

/// Wraps a proxy for serving.
pub fn shared(proxy: Arc<Proxy>) -> SharedProxy {
    Arc::new(ArcSwap::new(proxy))
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
    /// A client certificate for `mtls_bound` routes could not be loaded.
    #[error("clients.{client}: {detail}")]
    Identity {
        /// The client.
        client: String,
        /// Why.
        detail: String,
    },
    /// The token HTTP clients could not be built.
    #[error("{0}")]
    TokenClient(#[from] crate::token::FetcherError),
    /// The shared token store (`[cache]`) could not be set up.
    #[error("{0}")]
    Shared(#[from] crate::token::shared::SharedError),
}

impl Proxy {
    /// Assembles the proxy. `extra_roots` are trusted for upstream TLS and token endpoints
    /// besides webpki roots and `proxy.upstream_roots` (the demo and tests use it).
    pub fn new(
        config: Config,
        ca: Arc<CertificateAuthority>,
        extra_roots: &[CertificateDer<'static>],
    ) -> Result<Arc<Proxy>, StartError> {
        Proxy::build(
            config,
            ca,
            extra_roots,
            None,
            Arc::default(),
            Arc::default(),
        )
    }

    /// A proxy for a new configuration that keeps this one's CA and every cached token
    /// whose key did not change.
    pub fn reloaded(&self, config: Config) -> Result<Arc<Proxy>, StartError> {
        Proxy::build(
            config,
            self.ca.clone(),
            &self.extra_roots,
            Some(&self.tokens),
            self.replay_budget.clone(),
            self.ops.clone(),
        )
    }

    fn build(
        config: Config,
        ca: Arc<CertificateAuthority>,
        extra_roots: &[CertificateDer<'static>],
        previous: Option<&TokenCache>,
        replay_budget: Arc<ReplayBudget>,
        ops: Arc<crate::status::Ops>,
    ) -> Result<Arc<Proxy>, StartError> {
        let roots = crate::tls::root_store(
            &config.proxy.upstream_roots,
            extra_roots,
            config.proxy.system_roots,
        )?;
        let shared = shared_store(&config, extra_roots, previous)?;
        let fetcher = Fetcher::new(config.tokens.clone(), roots.clone(), &config.clients)?
            .with_shared(shared);
        let tokens = Arc::new(TokenCache::new(Arc::new(fetcher)));
        let routes = config
            .routes
            .iter()
            .filter_map(|spec| {
                let credential = match (&spec.credential, &spec.client) {
                    (Some(fixed), _) => RouteCredential::Static(StaticHeader::new(fixed.clone())),
                    (None, name) => {
                        let client = config.clients.get(name.as_deref()?)?.clone();
                        RouteCredential::Token {
                            token: tokens.route_token(&client, spec, previous),
                            client,
                        }
                    }
                };
                Some(Arc::new(Route {
                    spec: spec.clone(),
                    credential,
                }))
            })
            .collect();
        let mut identities = Vec::new();
        for spec in config.routes.iter().filter(|r| r.mtls_bound) {
            let Some(client) = spec.client.as_ref().and_then(|c| config.clients.get(c)) else {
                continue;
            };
            if identities.iter().any(|(name, _)| name == &client.name) {
                continue;
            }
            if let (Some(cert), Some(key)) = (&client.client_cert, &client.client_key) {
                let tls = crate::tls::client_config_with_identity(roots.clone(), cert, key)
                    .map_err(|err| StartError::Identity {
                        client: client.name.clone(),
                        detail: err.to_string(),
                    })?;
                identities.push((client.name.clone(), tls));
            }
        }
        let callers = Callers::new(
            &config.callers,
            config.proxy.callers,
            config.proxy.policy_mode,
        );
        Ok(Arc::new(Proxy {
            callers,
            upstream: Upstream::new(roots, &config.proxy, identities),
            routes: RouteTable::new(routes),
            ca,
            tokens,
            replay_budget,
            ops,
            config,
            extra_roots: extra_roots.to_vec(),
        }))
    }
}

impl Proxy {
    /// Ready when every route marked `prefetch` holds a usable token.
    pub fn is_ready(&self) -> bool {
        self.routes
            .routes()
            .iter()
            .filter(|r| r.spec.prefetch)
            .all(|r| match r.token() {
                Some(crate::token::RouteToken::Fixed(slot)) => slot.has_usable_token(),
                Some(crate::token::RouteToken::PerSubject(_)) | None => true,
            })
    }

    /// Starts fetching the tokens of routes marked `prefetch`, in the background.
    pub fn prefetch(&self) {
        for route in self.routes.routes().iter().filter(|r| r.spec.prefetch) {
            if let Some(crate::token::RouteToken::Fixed(slot)) = route.token() {
                let (slot, name) = (slot.clone(), route.spec.name.clone());
                tokio::spawn(async move {
                    if let Err(err) = slot.get().await {
                        tracing::warn!(route = %name, error = %err, "prefetch failed");
                    }
                });
            }
        }
    }
}

/// The fleet's shared store for `config` (`[cache] backend = "redis"`): the previous
/// configuration's when `[cache]` and `[tokens]` did not change (its connection and
/// listener carry over), else a new one. `rediss://` trusts `proxy.upstream_roots` and
/// `extra_roots` when there are any, else the system's roots.
fn shared_store(
    config: &Config,
    extra_roots: &[CertificateDer<'static>],
    previous: Option<&TokenCache>,
) -> Result<Option<Arc<SharedStore>>, StartError> {
    let crate::config::CacheSettings::Redis(settings) = &config.cache else {
        return Ok(None);
    };
    if let Some(store) = previous.and_then(|p| p.fetcher().shared()) {
        if store.serves(settings, &config.tokens) {
            return Ok(Some(store.clone()));
        }
    }
    let mut pem = String::new();
    for source in &config.proxy.upstream_roots {
        if let Ok(text) = source.load() {
            pem.push_str(secrecy::ExposeSecret::expose_secret(&text));
            pem.push('\n');
        }
    }
    for der in extra_roots {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
        pem.push_str("-----BEGIN CERTIFICATE-----\n");
        for line in b64.as_bytes().chunks(64) {
            pem.push_str(&String::from_utf8_lossy(line));
            pem.push('\n');
        }
        pem.push_str("-----END CERTIFICATE-----\n");
    }
    let roots = (!pem.is_empty()).then(|| pem.into_bytes());
    Ok(Some(SharedStore::open(settings, &config.tokens, roots)?))
}
