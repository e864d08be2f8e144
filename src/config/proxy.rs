//! `[proxy]` and `[admin]`: the listeners, the interception CA and how traffic is handled.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use super::source::RawSource;
use super::Findings;
use crate::secret::SecretSource;

/// What to do with a CONNECT to a host that has no route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Unmatched {
    /// Splice the bytes untouched: no interception, no token.
    Tunnel,
    /// Answer 403.
    Deny,
}

/// `[proxy]`: the listener and how traffic is handled.
#[derive(Debug, Clone)]
pub struct ProxySettings {
    /// Where the proxy listens.
    pub listen: SocketAddr,
    /// Policy for hosts without a route.
    pub unmatched: Unmatched,
    /// The interception CA certificate (PEM, a file or a variable).
    pub ca_cert: SecretSource,
    /// The interception CA key (PEM; a file is created with mode 0600 when both are absent).
    pub ca_key: SecretSource,
    /// Extra CA certificates (PEM files or variables) trusted for upstream TLS and token
    /// endpoints, besides webpki roots.
    pub upstream_roots: Vec<SecretSource>,
    /// Also trust the operating system's store (for corporate CAs installed there).
    pub system_roots: bool,
    /// Bytes of request body kept so the one 401 retry can replay it.
    pub retry_body_limit: usize,
    /// Upstream TCP connect timeout (also used for CONNECT tunnels).
    pub connect_timeout: Duration,
    /// How long an idle pooled upstream connection is kept.
    pub pool_idle_timeout: Duration,
    /// On SIGTERM/SIGINT, how long in-flight requests get to finish.
    pub shutdown_grace: Duration,
}

/// `[admin]`: health endpoints.
#[derive(Debug, Clone)]
pub struct AdminSettings {
    /// Where `/healthz` and `/readyz` are served.
    pub listen: SocketAddr,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawProxy {
    listen: SocketAddr,
    unmatched: Unmatched,
    ca_cert: RawSource,
    ca_key: RawSource,
    upstream_roots: Vec<RawSource>,
    system_roots: bool,
    retry_body_limit: u64,
    connect_timeout_ms: u64,
    pool_idle_timeout_secs: u64,
    shutdown_grace_secs: u64,
}

impl Default for RawProxy {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 3128)),
            unmatched: Unmatched::Tunnel,
            ca_cert: RawSource::File("ca/ca.pem".into()),
            ca_key: RawSource::File("ca/ca.key".into()),
            upstream_roots: Vec::new(),
            system_roots: false,
            retry_body_limit: 1 << 20,
            connect_timeout_ms: 5_000,
            pool_idle_timeout_secs: 90,
            shutdown_grace_secs: 30,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    listen: SocketAddr,
}

impl RawAdmin {
    pub(super) fn validate(self) -> AdminSettings {
        AdminSettings {
            listen: self.listen,
        }
    }
}

impl RawProxy {
    /// `[proxy]`, checked: a connect timeout, readable upstream roots, and a CA that is
    /// either whole or absent (then generated).
    pub(super) fn validate(self, base: &Path, found: &mut Findings) -> ProxySettings {
        if self.connect_timeout_ms == 0 {
            found.problem("proxy.connect_timeout_ms must be greater than 0");
        }
        let proxy = ProxySettings {
            listen: self.listen,
            unmatched: self.unmatched,
            ca_cert: self.ca_cert.into_source(base),
            ca_key: self.ca_key.into_source(base),
            upstream_roots: self
                .upstream_roots
                .into_iter()
                .map(|r| r.into_source(base))
                .collect(),
            system_roots: self.system_roots,
            retry_body_limit: usize::try_from(self.retry_body_limit).unwrap_or(usize::MAX),
            connect_timeout: Duration::from_millis(self.connect_timeout_ms),
            pool_idle_timeout: Duration::from_secs(self.pool_idle_timeout_secs),
            shutdown_grace: Duration::from_secs(self.shutdown_grace_secs),
        };
        for root in &proxy.upstream_roots {
            if let Err(err) = root.load() {
                found.problem(format!("proxy.upstream_roots: {err}"));
            }
        }
        check_ca_pair(&proxy, found);
        proxy
    }
}

/// The CA certificate and key files exist together or not at all.
fn check_ca_pair(proxy: &ProxySettings, found: &mut Findings) {
    if let (Some(cert), Some(key)) = (proxy.ca_cert.path(), proxy.ca_key.path()) {
        if cert.exists() != key.exists() {
            found.problem(format!(
                "proxy.ca_cert ({}) and proxy.ca_key ({}) must both exist, or both be absent so \
                 a new CA is generated",
                cert.display(),
                key.display()
            ));
        }
    }
}
