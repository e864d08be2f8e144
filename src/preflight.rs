//! The start-up checks, in one place: `check`, `run` and every reload call [`preflight`], so
//! a configuration a reload accepts is one `run` would have started with.
//!
//! What is checked, in order: every client secret, caller credential and route credential can
//! be read (and a route credential can go in a header), every private key parses
//! (and its `assertion_cert` is its own), the proxy can be assembled (trust roots, client
//! certificates, DPoP keys, token HTTP clients), and the metadata of every discovered
//! client fits its configuration. A discovery server that does not answer is not a
//! problem: `run` starts anyway and discovery is retried on first use.

use std::fmt;
use std::sync::Arc;

use rustls::pki_types::CertificateDer;

use crate::ca::CertificateAuthority;
use crate::config::Config;
use crate::proxy::{Proxy, StartError};

/// One reason a configuration cannot be used, named by its config key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The key it is about, e.g. `clients.billing.client_secret` (`proxy` for the whole).
    pub key: String,
    /// What is wrong, in a sentence; never a secret.
    pub detail: String,
}

impl Problem {
    /// A problem with `key`.
    pub fn new(key: impl Into<String>, detail: impl fmt::Display) -> Problem {
        Problem {
            key: key.into(),
            detail: detail.to_string(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.detail)
    }
}

/// Every problem of a configuration, one per line (as `check` prints them).
#[derive(Debug, thiserror::Error)]
#[error("{} problem(s):\n  - {}", .0.len(), lines(.0))]
pub struct Problems(pub Vec<Problem>);

fn lines(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(Problem::to_string)
        .collect::<Vec<_>>()
        .join("\n  - ")
}

/// What the proxy is assembled on.
pub enum Basis<'a> {
    /// A first start: this CA, and `extra_roots` trusted besides webpki roots and
    /// `proxy.upstream_roots` (the demo and tests use it).
    Start {
        /// The interception CA.
        ca: Arc<CertificateAuthority>,
        /// Extra trust roots.
        extra_roots: &'a [CertificateDer<'static>],
    },
    /// A reload: keeps the running proxy's CA, extra roots and cached tokens.
    Reload(&'a Proxy),
}

/// A configuration that passed: the proxy built from it, and the discovery servers that
/// did not answer (worth a warning, not a refusal).
pub struct Checked {
    /// The assembled proxy, not yet serving.
    pub proxy: Arc<Proxy>,
    /// Clients whose metadata could not be fetched.
    pub unreachable: Vec<Problem>,
}

/// Runs every start-up check on `config` and, when all pass, returns the proxy built from
/// it. On failure, returns every problem found, not just the first.
pub async fn preflight(config: Config, basis: Basis<'_>) -> Result<Checked, Problems> {
    let mut problems = file_problems(&config);
    let built = match basis {
        Basis::Start { ca, extra_roots } => Proxy::new(config, ca, extra_roots),
        Basis::Reload(current) => current.reloaded(config),
    };
    let proxy = match built {
        Ok(proxy) => proxy,
        Err(err) => {
            problems.push(start_problem(err));
            return Err(Problems(problems));
        }
    };
    let (wrong, unreachable) = discovery(&proxy).await;
    problems.extend(wrong);
    if problems.is_empty() {
        Ok(Checked { proxy, unreachable })
    } else {
        Err(Problems(problems))
    }
}

/// A failure to assemble the proxy, named by the key it is about.
fn start_problem(err: StartError) -> Problem {
    use crate::token::FetcherError;
    match err {
        StartError::Ca(err) => Problem::new("proxy.ca_cert", err),
        StartError::Roots(err) => Problem::new("proxy.upstream_roots", err),
        StartError::Identity { client, detail } => {
            Problem::new(format!("clients.{client}"), detail)
        }
        StartError::TokenClient(FetcherError::Dpop { client, source }) => {
            Problem::new(format!("clients.{client}.dpop_key"), source)
        }
        StartError::TokenClient(FetcherError::ClientCert { client, detail }) => {
            Problem::new(format!("clients.{client}"), detail)
        }
        StartError::TokenClient(err @ FetcherError::Http(_)) => Problem::new("tokens", err),
        StartError::Shared(err) => Problem::new("cache", err),
    }
}

/// The checks that read files and need no network: client secrets, private keys and the
/// routes' static credentials.
fn file_problems(config: &Config) -> Vec<Problem> {
    let mut problems = Vec::new();
    for client in config.clients.values() {
        if let Some(source) = &client.client_secret {
            if let Err(err) = source.load() {
                problems.push(Problem::new(
                    format!("clients.{}.client_secret", client.name),
                    err,
                ));
            }
        }
        if client.private_key.is_some() {
            // The detail starts with the key it is about (`private_key`, `assertion_cert`).
            if let Some(detail) = crate::token::key_problem(client) {
                problems.push(Problem::new(format!("clients.{}", client.name), detail));
            }
        }
    }
    for caller in &config.callers {
        if let Some(auth) = &caller.proxy_auth {
            if let Err(err) = auth.secret().load() {
                problems.push(Problem::new(
                    format!("caller {}.proxy_auth", caller.name),
                    err,
                ));
            }
        }
    }
    // A static credential is read now, so an unreadable secret or one with bytes that
    // cannot go in a header stops the start naming its route, not the first request.
    for route in &config.routes {
        if let Some(credential) = &route.credential {
            if let Err(err) = crate::sender::credential::render(credential) {
                problems.push(Problem::new(format!("route {}", route.name), err));
            }
        }
    }
    // A refresh token that could not be saved after rotation is lost: the file must be
    // writable and not a link.
    for (route, detail) in crate::token::refresh_problems(config) {
        problems.push(Problem::new(format!("route {route}"), detail));
    }
    problems
}

/// Fetches the metadata of every client configured with an `issuer` and checks it: the
/// problems that make the config wrong (a mismatched issuer, an `auth` the server does not
/// support, a plain-http endpoint) and, apart, the clients whose server did not answer.
pub async fn discovery(proxy: &Proxy) -> (Vec<Problem>, Vec<Problem>) {
    let (mut wrong, mut unreachable) = (Vec::new(), Vec::new());
    for client in proxy.config.clients.values() {
        let key = format!("clients.{}.issuer", client.name);
        match proxy.tokens.fetcher().discover(client).await {
            Ok(Some(endpoint)) => {
                tracing::info!(client = %client.name, %endpoint, "discovered token endpoint")
            }
            Ok(None) => {}
            Err(err) if err.is_misconfiguration() => wrong.push(Problem::new(key, err)),
            Err(err) => unreachable.push(Problem::new(key, err)),
        }
    }
    (wrong, unreachable)
}

// Here rather than in proxy.rs: the assembled state sits below the start-up checks.
impl Proxy {
    /// [`discovery`] as sentences: the problems that make the config wrong, then the clients
    /// whose server did not answer.
    pub async fn discover(&self) -> (Vec<String>, Vec<String>) {
        let (wrong, unreachable) = discovery(self).await;
        let text = |v: Vec<Problem>| v.iter().map(|p| p.to_string()).collect();
        (text(wrong), text(unreachable))
    }
}
