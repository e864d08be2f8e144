//! The [`Fetcher`]: the token endpoint's HTTP clients (plain, or mutual TLS per client), the
//! DPoP keys and nonces, and the discovered endpoints. `endpoint.rs` sends the requests.
//!
//! Token requests use their own reqwest clients: `.no_proxy()` (the environment's
//! `HTTPS_PROXY` may point at this very proxy), no redirects (a redirect could carry the
//! client secret elsewhere), bounded timeouts, and the same trust roots as upstream TLS.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::discovery::{Discovery, DiscoveryCheck};
use super::error::TokenErrorKind;
use super::refresh_store::RefreshStore;
use super::TokenError;
use crate::config::{ClientAuth, ClientConfig, Endpoint, TokenSettings};
use crate::sender::dpop::{self, DpopKey, NonceStore};
use crate::sync::lock;

/// Sends token requests.
pub struct Fetcher {
    /// DPoP keys from `dpop_key` files, by client.
    dpop_keys: HashMap<String, Arc<DpopKey>>,
    /// DPoP keys generated on first use (no `dpop_key`), by client; kept across reloads.
    generated_dpop_keys: Mutex<HashMap<String, Arc<DpopKey>>>,
    pub(super) nonces: Arc<NonceStore>,
    http: reqwest::Client,
    mtls: HashMap<String, reqwest::Client>,
    discovery: HashMap<String, Arc<Discovery>>,
    pub(super) refresh: &'static RefreshStore,
    pub(super) settings: TokenSettings,
    /// The fleet's shared store, with `[cache] backend = "redis"`.
    shared: Option<Arc<super::shared::SharedStore>>,
}

/// Why the token clients could not be built.
#[derive(Debug, thiserror::Error)]
pub enum FetcherError {
    /// A reqwest client could not be built.
    #[error("token client: {0}")]
    Http(#[from] reqwest::Error),
    /// A DPoP key could not be loaded or created.
    #[error("clients.{client}: {source}")]
    Dpop {
        /// The client.
        client: String,
        /// Why.
        source: dpop::DpopError,
    },
    /// A client certificate or key could not be loaded.
    #[error("clients.{client}: {detail}")]
    ClientCert {
        /// The client.
        client: String,
        /// What is wrong (as `tls::client_config_with_identity` words it).
        detail: String,
    },
}

fn builder(settings: &TokenSettings) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(settings.request_timeout.min(Duration::from_secs(5)))
        .timeout(settings.request_timeout)
        .user_agent(concat!("oauth-egress/", env!("CARGO_PKG_VERSION")))
}

impl Fetcher {
    /// Token clients trusting `roots`; one with a client certificate per mutual-TLS client.
    pub fn new(
        settings: TokenSettings,
        roots: Arc<rustls::RootCertStore>,
        clients: &BTreeMap<String, Arc<ClientConfig>>,
    ) -> Result<Fetcher, FetcherError> {
        let http = builder(&settings)
            .use_preconfigured_tls(crate::tls::client_config(roots.clone()))
            .build()?;
        let mut mtls = HashMap::new();
        let mut discovery = HashMap::new();
        let mut dpop_keys = HashMap::new();
        for client in clients.values() {
            let name = || client.name.clone();
            if let Some(path) = &client.dpop_key {
                let key = DpopKey::load_or_create(path).map_err(|source| FetcherError::Dpop {
                    client: name(),
                    source,
                })?;
                dpop_keys.insert(name(), Arc::new(key));
            }
            if let (Some(cert), Some(key)) = (&client.client_cert, &client.client_key) {
                let tls = crate::tls::client_config_with_identity(roots.clone(), cert, key)
                    .map_err(|err| FetcherError::ClientCert {
                        client: name(),
                        detail: err.to_string(),
                    })?;
                mtls.insert(
                    name(),
                    builder(&settings).use_preconfigured_tls(tls).build()?,
                );
            }
            if let Endpoint::Discovered(issuer) = &client.endpoint {
                discovery.insert(name(), Arc::new(Discovery::new(issuer.clone())));
            }
        }
        Ok(Fetcher {
            dpop_keys,
            generated_dpop_keys: Mutex::new(HashMap::new()),
            nonces: Arc::new(NonceStore::default()),
            http,
            mtls,
            discovery,
            refresh: RefreshStore::global(),
            settings,
            shared: None,
        })
    }

    /// These token clients, sharing tokens with the fleet through `store`.
    pub fn with_shared(mut self, store: Option<Arc<super::shared::SharedStore>>) -> Fetcher {
        self.shared = store;
        self
    }

    /// The fleet's shared store, if tokens are shared.
    pub fn shared(&self) -> Option<&Arc<super::shared::SharedStore>> {
        self.shared.as_ref()
    }

    /// The DPoP key of a client: its `dpop_key` file, or one generated on first use.
    pub fn dpop_key(&self, client: &str) -> Option<Arc<DpopKey>> {
        if let Some(key) = self.dpop_keys.get(client) {
            return Some(key.clone());
        }
        let mut keys = lock(&self.generated_dpop_keys);
        if let Some(key) = keys.get(client) {
            return Some(key.clone());
        }
        match DpopKey::generate() {
            Ok(key) => {
                let key = Arc::new(key);
                keys.insert(client.to_string(), key.clone());
                Some(key)
            }
            Err(err) => {
                tracing::error!(client, error = %err, "cannot generate a DPoP key");
                None
            }
        }
    }

    /// After a reload: a client still without a `dpop_key` file keeps the key `previous`
    /// generated for it, so its DPoP-bound tokens (and the server's view of it) survive.
    pub(super) fn adopt_generated_dpop_key(&self, client: &str, previous: &Fetcher) {
        if self.dpop_keys.contains_key(client) {
            return;
        }
        let old = lock(&previous.generated_dpop_keys).get(client).cloned();
        if let Some(old) = old {
            lock(&self.generated_dpop_keys)
                .entry(client.to_string())
                .or_insert(old);
        }
    }

    /// The DPoP nonces seen, by origin (shared with resource requests).
    pub fn nonces(&self) -> &Arc<NonceStore> {
        &self.nonces
    }

    pub(super) fn http_for(&self, client: &ClientConfig) -> &reqwest::Client {
        self.mtls.get(&client.name).unwrap_or(&self.http)
    }

    /// Fetches (or re-uses) the metadata of a discovered client and checks it fits the
    /// client's `auth`. `Ok(None)` for clients with a fixed endpoint.
    pub async fn discover(&self, client: &ClientConfig) -> Result<Option<String>, DiscoveryCheck> {
        let Some(discovery) = self.discovery.get(&client.name) else {
            return Ok(None);
        };
        let metadata = discovery
            .metadata(&self.http)
            .await
            .map_err(DiscoveryCheck::Fetch)?;
        metadata
            .check_auth(client.auth)
            .map_err(DiscoveryCheck::Unsupported)?;
        let mtls = client.auth == ClientAuth::TlsClientAuth || client.client_cert.is_some();
        Ok(Some(metadata.token_endpoint_for(mtls).to_string()))
    }

    /// The token endpoint of `client`: fixed, or discovered (and cached).
    pub(super) async fn endpoint(&self, client: &ClientConfig) -> Result<String, TokenError> {
        match &client.endpoint {
            Endpoint::Fixed(url) => Ok(url.to_string()),
            Endpoint::Discovered(_) => match self.discover(client).await {
                Ok(Some(endpoint)) => Ok(endpoint),
                Ok(None) => Err(TokenError::new(
                    &client.name,
                    TokenErrorKind::Internal("no discovery state"),
                )),
                Err(err) => {
                    Err(TokenError::new(&client.name, TokenErrorKind::Discovery).because(err))
                }
            },
        }
    }

    /// Forgets the discovered endpoint, after a request could not reach it.
    pub(super) fn forget_discovery(&self, client: &ClientConfig) {
        if let Some(d) = self.discovery.get(&client.name) {
            d.forget();
        }
    }
}
