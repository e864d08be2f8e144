//! `[proxy]` and `[admin]`: the listeners, the interception CA and how traffic is handled.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

use super::caller::CallerPolicy;
use super::source::{RawSecret, RawSource};
use super::Findings;
use crate::destination::{AddressPolicy, Mode};
use crate::host::HostPattern;
use crate::secret::SecretSource;

/// What to do with a destination that has no route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unmatched {
    /// Splice the bytes untouched (or forward them): no interception, no token.
    Tunnel,
    /// Answer 403.
    Deny,
    /// `{ tunnel = [...] }`: as `Tunnel` for these hosts, 403 for every other.
    Only(Vec<HostPattern>),
}

/// As `routes.toml` spells it: `tunnel`, `deny`, `tunnel only [*.github.com, pypi.org]`.
impl std::fmt::Display for Unmatched {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unmatched::Tunnel => f.write_str("tunnel"),
            Unmatched::Deny => f.write_str("deny"),
            Unmatched::Only(hosts) => {
                let names: Vec<String> = hosts.iter().map(ToString::to_string).collect();
                write!(f, "tunnel only [{}]", names.join(", "))
            }
        }
    }
}

impl Unmatched {
    /// Whether an unrouted `host` (normalized) may be tunnelled or forwarded.
    pub fn lets_through(&self, host: &str) -> bool {
        match self {
            Unmatched::Tunnel => true,
            Unmatched::Deny => false,
            Unmatched::Only(hosts) => hosts.iter().any(|p| p.matches(host)),
        }
    }
}

impl ProxySettings {
    /// The destination policy for unmatched traffic, on one line (for `check`).
    pub fn policy_summary(&self) -> String {
        let list = |nets: &[IpNet]| {
            let names: Vec<String> = nets.iter().map(ToString::to_string).collect();
            format!("[{}]", names.join(", "))
        };
        let mode = match self.policy_mode {
            Mode::Enforce => "enforce",
            Mode::Report => "report (would_deny logged, nothing refused)",
        };
        format!(
            "{mode}: private, loopback, link-local, CGNAT, ULA, multicast addresses denied; \
             allow_cidrs {}, deny_cidrs {}; connect_ports {}, http_ports {}; own listeners \
             always refused",
            list(&self.addresses.allow),
            list(&self.addresses.deny),
            self.connect_ports,
            self.http_ports
        )
    }
}

/// A list of ports and port ranges (`[443, "8000-8099"]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ports(Vec<std::ops::RangeInclusive<u16>>);

impl Ports {
    /// Whether `port` is listed.
    pub fn contains(&self, port: u16) -> bool {
        self.0.iter().any(|r| r.contains(&port))
    }
}

impl std::fmt::Display for Ports {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let each: Vec<String> = self
            .0
            .iter()
            .map(|r| match r.start() == r.end() {
                true => r.start().to_string(),
                false => format!("{}-{}", r.start(), r.end()),
            })
            .collect();
        write!(f, "[{}]", each.join(", "))
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawPort {
    One(u16),
    Range(String),
}

/// `proxy.connect_ports` / `proxy.http_ports`, each entry checked.
fn ports(raw: &[RawPort], key: &str, found: &mut Findings) -> Ports {
    let range = |text: &str| {
        let (lo, hi) = text.split_once('-')?;
        let (lo, hi) = (
            lo.trim().parse::<u16>().ok()?,
            hi.trim().parse::<u16>().ok()?,
        );
        (lo <= hi).then_some(lo..=hi)
    };
    Ports(
        raw.iter()
            .filter_map(|port| match port {
                RawPort::One(p) => Some(*p..=*p),
                RawPort::Range(text) => range(text).or_else(|| {
                    found.problem(format!(
                        "{key}: {text:?} is neither a port nor a range like \"8000-8099\""
                    ));
                    None
                }),
            })
            .collect(),
    )
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawUnmatched {
    Word(String),
    Only { tunnel: Vec<String> },
}

/// `[proxy]`: the listener and how traffic is handled.
#[derive(Debug, Clone)]
pub struct ProxySettings {
    /// Where the proxy listens.
    pub listen: SocketAddr,
    /// Policy for hosts without a route.
    pub unmatched: Unmatched,
    /// Where unmatched traffic may go (`allow_cidrs`, `deny_cidrs`, `policy_mode`).
    pub addresses: Arc<AddressPolicy>,
    /// Ports an unmatched `CONNECT` or `https://` forward may name.
    pub connect_ports: Ports,
    /// Ports an unmatched `http://` forward may name.
    pub http_ports: Ports,
    /// `enforce` or `report` (also for ports, the unmatched list and callers).
    pub policy_mode: Mode,
    /// `proxy.callers`: `any`, or only `[[caller]]`s (`caller.rs`).
    pub callers: CallerPolicy,
    /// The interception CA certificate (PEM, a file or a variable).
    pub ca_cert: SecretSource,
    /// The interception CA key (PEM; a file is created with mode 0600 when both are absent).
    pub ca_key: SecretSource,
    /// DNS subtrees a generated CA may sign for (`name_constraints.rs`); empty: any host.
    pub ca_name_constraints: Vec<String>,
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

/// `[admin]`: health endpoints, metrics and the status page.
#[derive(Debug, Clone)]
pub struct AdminSettings {
    /// Where `/healthz`, `/readyz`, `/metrics`, `/` and `/status` are served.
    pub listen: SocketAddr,
    /// A bearer token `/` and `/status` (and `/metrics` with `protect_metrics`) require, for
    /// an admin listener bound beyond loopback. Re-read on every request (rotation needs no
    /// restart).
    pub token: Option<SecretSource>,
    /// Whether `/metrics` needs the token too (off: Prometheus scrapes without one).
    pub protect_metrics: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawProxy {
    listen: SocketAddr,
    unmatched: RawUnmatched,
    allow_cidrs: Vec<String>,
    deny_cidrs: Vec<String>,
    connect_ports: Vec<RawPort>,
    http_ports: Vec<RawPort>,
    policy_mode: Mode,
    callers: CallerPolicy,
    ca_cert: RawSource,
    ca_key: RawSource,
    ca_name_constraints: Vec<String>,
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
            unmatched: RawUnmatched::Word("tunnel".into()),
            allow_cidrs: Vec::new(),
            deny_cidrs: Vec::new(),
            connect_ports: vec![RawPort::One(443)],
            http_ports: vec![RawPort::One(80)],
            policy_mode: Mode::Enforce,
            callers: CallerPolicy::Any,
            ca_cert: RawSource::File("ca/ca.pem".into()),
            ca_key: RawSource::File("ca/ca.key".into()),
            ca_name_constraints: Vec::new(),
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
    token: Option<RawSecret>,
    #[serde(default)]
    protect_metrics: bool,
}

impl RawAdmin {
    pub(super) fn validate(self, base: &Path, found: &mut Findings) -> AdminSettings {
        if self.protect_metrics && self.token.is_none() {
            found.problem("admin.protect_metrics = true needs admin.token = { env = \"NAME\" } (or { file = \"path\" })");
        }
        if self.token.is_none() && !self.listen.ip().is_loopback() {
            found.warn(format!(
                "admin.listen = {} is not loopback and admin.token is not set: anyone who reaches it can read the status page",
                self.listen
            ));
        }
        AdminSettings {
            listen: self.listen,
            token: self.token.map(|t| t.into_source(base)),
            protect_metrics: self.protect_metrics,
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
        let addresses = AddressPolicy {
            allow: cidrs(&self.allow_cidrs, "proxy.allow_cidrs", found),
            deny: cidrs(&self.deny_cidrs, "proxy.deny_cidrs", found),
            mode: self.policy_mode,
            own: Default::default(),
        };
        let proxy = ProxySettings {
            listen: self.listen,
            unmatched: unmatched(self.unmatched, found),
            addresses: Arc::new(addresses),
            connect_ports: ports(&self.connect_ports, "proxy.connect_ports", found),
            http_ports: ports(&self.http_ports, "proxy.http_ports", found),
            policy_mode: self.policy_mode,
            callers: self.callers,
            ca_cert: self.ca_cert.into_source(base),
            ca_key: self.ca_key.into_source(base),
            ca_name_constraints: subtrees(&self.ca_name_constraints, found),
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

/// `proxy.unmatched`: `"tunnel"`, `"deny"` or `{ tunnel = ["host", "*.suffix"] }`.
fn unmatched(raw: RawUnmatched, found: &mut Findings) -> Unmatched {
    match raw {
        RawUnmatched::Word(word) => match word.as_str() {
            "tunnel" => Unmatched::Tunnel,
            "deny" => Unmatched::Deny,
            other => {
                found.problem(format!(
                    "proxy.unmatched: {other:?} is not \"tunnel\", \"deny\" or {{ tunnel = [hosts] }}"
                ));
                Unmatched::Deny
            }
        },
        RawUnmatched::Only { tunnel } => Unmatched::Only(
            tunnel
                .iter()
                .filter_map(|raw| match HostPattern::parse(raw) {
                    Ok(pattern) => Some(pattern),
                    Err(err) => {
                        found.problem(format!("proxy.unmatched.tunnel: {err}"));
                        None
                    }
                })
                .collect(),
        ),
    }
}

/// `proxy.ca_name_constraints`: DNS names (no wildcard, no IP), normalized.
fn subtrees(raw: &[String], found: &mut Findings) -> Vec<String> {
    raw.iter()
        .filter_map(|name| match HostPattern::parse(name) {
            Ok(HostPattern::Exact(host)) if crate::destination::literal(&host).is_none() => {
                Some(host)
            }
            _ => {
                found.problem(format!(
                    "proxy.ca_name_constraints: {name:?} is not a DNS name (like \"payments.example\", which also covers every name under it; no wildcards or IP addresses)"
                ));
                None
            }
        })
        .collect()
}

/// A list of CIDRs (`10.0.0.0/8`, `::1/128`; a bare address is one host), each checked.
pub(super) fn cidrs(raw: &[String], key: &str, found: &mut Findings) -> Vec<IpNet> {
    raw.iter()
        .filter_map(|cidr| {
            let parsed = cidr
                .parse::<IpNet>()
                .or_else(|_| cidr.parse::<std::net::IpAddr>().map(IpNet::from));
            match parsed {
                Ok(net) => Some(net.trunc()),
                Err(_) => {
                    found.problem(format!("{key}: {cidr:?} is not a CIDR (like 10.0.0.0/8)"));
                    None
                }
            }
        })
        .collect()
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

#[cfg(test)]
mod tests {
    fn problems(proxy: &str) -> String {
        match crate::config::from_toml(&format!("[proxy]\n{proxy}"), std::path::Path::new("."), "t")
        {
            Ok(_) => String::new(),
            Err(err) => err.to_string(),
        }
    }

    #[test]
    fn destination_keys_are_checked_and_named() {
        let cases = [
            ("allow_cidrs = [\"10.0.0.0/8\", \"::1\"]", None),
            (
                "allow_cidrs = [\"10.0.0.0/33\"]",
                Some("proxy.allow_cidrs: \"10.0.0.0/33\""),
            ),
            (
                "deny_cidrs = [\"example.com\"]",
                Some("proxy.deny_cidrs: \"example.com\""),
            ),
            ("connect_ports = [443, \"8000-8099\"]", None),
            (
                "connect_ports = [\"9-1\"]",
                Some("proxy.connect_ports: \"9-1\""),
            ),
            (
                "http_ports = [\"http\"]",
                Some("proxy.http_ports: \"http\""),
            ),
            (
                "unmatched = { tunnel = [\"*.github.com\", \"pypi.org\"] }",
                None,
            ),
            (
                "unmatched = { tunnel = [\"https://pypi.org\"] }",
                Some("proxy.unmatched.tunnel"),
            ),
            ("unmatched = \"tunel\"", Some("proxy.unmatched: \"tunel\"")),
            ("policy_mode = \"report\"", None),
        ];
        for (line, want) in cases {
            let got = problems(line);
            match want {
                None => assert_eq!(got, "", "{line}"),
                Some(want) => assert!(got.contains(want), "{line}: {got}"),
            }
        }
    }
}
