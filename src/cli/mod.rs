//! The commands behind the CLI: `run` (serve, reload, stop), `check`, `ca export`, `env`,
//! `iptables`, `status` and `healthcheck` (clients of the admin listener).
//! Library errors become a [`Failure`] here: a configuration problem exits 64, anything
//! else 1.

use std::path::PathBuf;
use std::sync::Arc;

use oauth_egress::config::{self, Config};
use oauth_egress::intercept::ca::CertificateAuthority;

pub(crate) mod ca;
pub(crate) mod check;
pub(crate) mod env;
pub(crate) mod iptables;
pub(crate) mod run;
pub(crate) mod status;

#[derive(clap::Args)]
pub(crate) struct ConfigArg {
    /// The route table.
    #[arg(
        short,
        long,
        env = "OAUTH_EGRESS_CONFIG",
        default_value = "routes.toml"
    )]
    pub(crate) config: PathBuf,
}

/// A configuration problem (exit 64) or anything else (exit 1).
pub(crate) enum Failure {
    Config(String),
    Other(anyhow::Error),
}

impl From<anyhow::Error> for Failure {
    fn from(err: anyhow::Error) -> Self {
        Failure::Other(err)
    }
}

pub(crate) fn load(path: &std::path::Path) -> Result<Config, Failure> {
    config::load(path).map_err(|e| Failure::Config(e.to_string()))
}

pub(crate) fn load_ca(config: &Config) -> Result<Arc<CertificateAuthority>, Failure> {
    let proxy = &config.proxy;
    let (ca, created) = CertificateAuthority::load_or_create_constrained(
        &proxy.ca_cert,
        &proxy.ca_key,
        &proxy.ca_name_constraints,
    )
    .map_err(|e| Failure::Config(format!("interception CA: {e}")))?;
    if created {
        tracing::info!(cert = %config.proxy.ca_cert, "generated a new interception CA; clients must trust this certificate");
    }
    if let Some(warning) = oauth_egress::ca::key_permission_warning(&config.proxy.ca_key) {
        tracing::warn!("{warning}");
    }
    Ok(Arc::new(ca))
}
