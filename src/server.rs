//! Binding the listeners and running the proxy until told to stop: shared by `run`, `demo`
//! and the tests, so all three serve exactly the same way.

use std::net::SocketAddr;
use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::ca::CertificateAuthority;
use crate::config::Config;
use crate::preflight::{preflight, Basis, Checked, Problems};
use crate::proxy::SharedProxy;

/// A proxy that is serving.
pub struct Running {
    /// Where the proxy listens (useful with port 0).
    pub proxy_addr: SocketAddr,
    /// Where the admin endpoints listen, if configured.
    pub admin_addr: Option<SocketAddr>,
    /// The proxy in force (swapped on reload).
    pub proxy: SharedProxy,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The config, its files or its authorization servers' metadata do not make a proxy
    /// (every problem [`preflight`] found).
    #[error(transparent)]
    Preflight(#[from] Problems),
    /// A listen address could not be bound.
    #[error("cannot listen on {addr} ({key}): {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The config key.
        key: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Assembles the proxy and starts serving `proxy.listen` (and `admin.listen`).
pub async fn start(
    config: Config,
    ca: Arc<CertificateAuthority>,
    extra_roots: &[CertificateDer<'static>],
) -> Result<Running, ServeError> {
    let listen = config.proxy.listen;
    let grace = config.proxy.shutdown_grace;
    let admin = config.admin.as_ref().map(|a| a.listen);
    let proxy = ready(preflight(config, Basis::Start { ca, extra_roots }).await?);
    proxy.prefetch();
    register_metrics(&proxy.config);
    crate::metrics::config_loaded();
    let routes = proxy.routes.routes().len();
    let proxy = crate::proxy::shared(proxy);
    let bind = |addr, key| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError::Bind { addr, key, source })
    };
    let listener = bind(listen, "proxy.listen").await?;
    let proxy_addr = listener.local_addr().unwrap_or(listen);
    let (stop, stopped) = watch::channel(false);
    let admin_addr = match admin {
        Some(addr) => {
            let admin_listener = bind(addr, "admin.listen").await?;
            let admin_addr = admin_listener.local_addr().unwrap_or(addr);
            let mut stopped = stopped.clone();
            tokio::spawn(crate::admin::run(
                admin_listener,
                proxy.clone(),
                async move {
                    let _ = stopped.wait_for(|s| *s).await;
                },
            ));
            Some(admin_addr)
        }
        None => None,
    };
    let own: Vec<_> = std::iter::once(proxy_addr).chain(admin_addr).collect();
    let _ = proxy.load().config.proxy.addresses.own.set(own);
    let mut stopped = stopped;
    let task = tokio::spawn(crate::listener::run(
        proxy.clone(),
        listener,
        async move {
            let _ = stopped.wait_for(|s| *s).await;
        },
        grace,
    ));
    tracing::info!(listen = %proxy_addr, admin = ?admin_addr, routes, "oauth-egress listening");
    Ok(Running {
        proxy_addr,
        admin_addr,
        proxy,
        stop,
        task,
    })
}

/// The checked proxy, after warning about the discovery servers that did not answer.
fn ready(checked: Checked) -> std::sync::Arc<crate::proxy::Proxy> {
    for problem in &checked.unreachable {
        tracing::warn!("{problem}; discovery will be retried on first use");
    }
    checked.proxy
}

impl Running {
    /// Validates `config` with the same [`preflight`] as `check` and `run` and, if it is good, swaps it in atomically:
    /// requests in flight finish on the old configuration, cached tokens whose key did not
    /// change are kept. A bad configuration is refused and the old one keeps serving.
    /// Listen addresses and the CA are fixed at start: changing them needs a restart.
    pub async fn reload(&self, config: Config) -> Result<(), String> {
        let result = self.try_reload(config).await;
        self.reloaded(result.as_ref().map(|_| ()).map_err(String::as_str));
        result
    }

    /// Records a reload's result (metrics and the status page), also for a config file that
    /// could not even be read (`run` calls this then).
    pub fn reloaded(&self, result: Result<(), &str>) {
        crate::metrics::reload(result.is_ok());
        self.proxy.load().ops.reloaded(result);
    }

    async fn try_reload(&self, config: Config) -> Result<(), String> {
        let current = self.proxy.load_full();
        if config.proxy.listen != current.config.proxy.listen
            || config.proxy.ca_cert != current.config.proxy.ca_cert
            || config.admin.as_ref().map(|a| a.listen)
                != current.config.admin.as_ref().map(|a| a.listen)
        {
            tracing::warn!("proxy.listen, admin.listen and the CA files are only read at start; restart to change them");
        }
        let next = ready(
            preflight(config, Basis::Reload(&current))
                .await
                .map_err(|e| e.to_string())?,
        );
        let own: Vec<_> = std::iter::once(self.proxy_addr)
            .chain(self.admin_addr)
            .collect();
        let _ = next.config.proxy.addresses.own.set(own);
        register_metrics(&next.config);
        next.ops
            .activity
            .retain(next.config.routes.iter().map(|r| r.name.as_str()));
        next.prefetch();
        let routes = next.routes.routes().len();
        self.proxy.store(next);
        tracing::info!(routes, "configuration reloaded");
        Ok(())
    }

    /// Stops accepting, drains in-flight requests (up to `proxy.shutdown_grace_secs`), and
    /// returns when done.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// Zero-valued series for every route and client of `config` (the metrics module knows no
/// config: it is a leaf).
fn register_metrics(config: &crate::config::Config) {
    crate::metrics::register(
        config.routes.iter().map(|r| r.name.as_str()),
        config.clients.keys().map(String::as_str),
    );
}
