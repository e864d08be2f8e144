//! Binding the listeners and running the proxy until told to stop: shared by `run`, `demo`
//! and the tests, so all three serve exactly the same way.

use std::net::SocketAddr;
use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::ca::CertificateAuthority;
use crate::config::{Config, TransparentSettings};
use crate::preflight::{preflight, Basis, Checked, Problems};
use crate::proxy::SharedProxy;

/// A proxy that is serving.
pub struct Running {
    /// Where the proxy listens (useful with port 0).
    pub proxy_addr: SocketAddr,
    /// Where the admin endpoints listen, if configured.
    pub admin_addr: Option<SocketAddr>,
    /// Where `transparent.listen` and `transparent.http_listen` listen, if configured.
    pub transparent_addrs: (Option<SocketAddr>, Option<SocketAddr>),
    /// The proxy in force (swapped on reload).
    pub proxy: SharedProxy,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
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

/// Assembles the proxy and starts serving `proxy.listen` (and `admin.listen`, and the
/// `[transparent]` listeners).
pub async fn start(
    config: Config,
    ca: Arc<CertificateAuthority>,
    extra_roots: &[CertificateDer<'static>],
) -> Result<Running, ServeError> {
    let listen = config.proxy.listen;
    let grace = config.proxy.shutdown_grace;
    let admin = config.admin.as_ref().map(|a| a.listen);
    let transparent = config.transparent.clone();
    let proxy = ready(preflight(config, Basis::Start { ca, extra_roots }).await?);
    proxy.prefetch();
    register_metrics(&proxy.config);
    crate::metrics::config_loaded();
    let routes = proxy.routes.routes().len();
    let proxy = crate::proxy::shared(proxy);
    let listener = bind(listen, "proxy.listen").await?;
    let proxy_addr = listener.local_addr().unwrap_or(listen);
    let (stop, stopped) = watch::channel(false);
    let admin_addr = match admin {
        Some(addr) => {
            let admin_listener = bind(addr, "admin.listen").await?;
            let admin_addr = admin_listener.local_addr().unwrap_or(addr);
            let admin = crate::admin::run(admin_listener, proxy.clone(), until(stopped.clone()));
            tokio::spawn(admin);
            Some(admin_addr)
        }
        None => None,
    };
    let mut tasks = Vec::new();
    let transparent_addrs = match transparent {
        Some(t) => spawn_transparent(&proxy, t, &stopped, grace, &mut tasks).await?,
        None => (None, None),
    };
    let own = own_listeners(proxy_addr, admin_addr, transparent_addrs);
    let _ = proxy.load().config.proxy.addresses.own.set(own);
    let forward = crate::listener::run(proxy.clone(), listener, until(stopped), grace);
    tasks.push(tokio::spawn(forward));
    tracing::info!(listen = %proxy_addr, admin = ?admin_addr, transparent = ?transparent_addrs, routes, "oauth-egress listening");
    Ok(Running {
        proxy_addr,
        admin_addr,
        transparent_addrs,
        proxy,
        stop,
        tasks,
    })
}

/// Binds and serves the `[transparent]` listeners (each on its own task, in `tasks`) until
/// `stopped`; returns their addresses.
async fn spawn_transparent(
    proxy: &SharedProxy,
    t: TransparentSettings,
    stopped: &watch::Receiver<bool>,
    grace: std::time::Duration,
    tasks: &mut Vec<JoinHandle<()>>,
) -> Result<(Option<SocketAddr>, Option<SocketAddr>), ServeError> {
    let tls = bind(t.listen, "transparent.listen").await?;
    let http = match t.http_listen {
        Some(addr) => Some(bind(addr, "transparent.http_listen").await?),
        None => None,
    };
    let addrs = (
        Some(tls.local_addr().unwrap_or(t.listen)),
        http.as_ref().and_then(|l| l.local_addr().ok()),
    );
    let tls_task = crate::listener::serve_each(
        proxy.clone(),
        tls,
        "transparent",
        until(stopped.clone()),
        grace,
        crate::transparent::tls_connection,
    );
    tasks.push(tokio::spawn(tls_task));
    if let Some(http) = http {
        let http_task = crate::listener::serve_each(
            proxy.clone(),
            http,
            "transparent_http",
            until(stopped.clone()),
            grace,
            crate::transparent::http_connection,
        );
        tasks.push(tokio::spawn(http_task));
    }
    Ok(addrs)
}

/// Resolves once `stopped` turns true.
async fn until(mut stopped: watch::Receiver<bool>) {
    let _ = stopped.wait_for(|s| *s).await;
}

/// Binds `addr`, the value of config key `key`.
async fn bind(addr: SocketAddr, key: &'static str) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, key, source })
}

/// Every address this proxy listens on: refused as a destination (a loop).
fn own_listeners(
    proxy: SocketAddr,
    admin: Option<SocketAddr>,
    transparent: (Option<SocketAddr>, Option<SocketAddr>),
) -> Vec<SocketAddr> {
    std::iter::once(proxy)
        .chain(admin)
        .chain(transparent.0)
        .chain(transparent.1)
        .collect()
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
            || config.transparent != current.config.transparent
        {
            tracing::warn!("proxy.listen, admin.listen, [transparent] and the CA files are only read at start; restart to change them");
        }
        let next = ready(
            preflight(config, Basis::Reload(&current))
                .await
                .map_err(|e| e.to_string())?,
        );
        let own = own_listeners(self.proxy_addr, self.admin_addr, self.transparent_addrs);
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
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// Zero-valued series for every route and client of `config` (the metrics module knows no
/// config: it is a leaf).
fn register_metrics(config: &crate::config::Config) {
    crate::metrics::register(
        config.routes.iter().map(|r| r.name.as_str()),
        config.clients.keys().map(String::as_str),
        config.callers.iter().map(|c| c.name.as_str()),
        matches!(config.cache, crate::config::CacheSettings::Redis(_)),
    );
}
