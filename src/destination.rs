//! Where unmatched traffic may go: the address policy (`proxy.allow_cidrs`,
//! `proxy.deny_cidrs`, the proxy's own listeners), checked on the address a name resolved
//! to, and the one resolver that resolves once, checks, and hands on only what it checked.
//!
//! Every destination the proxy dials for a caller without a route (a `CONNECT` tunnel, an
//! absolute-form `http://` or `https://` forward) goes through [`AddressPolicy::check`] on
//! the resolved address, and the connection is made to that address: a second lookup that
//! could answer differently (DNS rebinding) never happens. Denied by default: loopback,
//! RFC 1918, link-local (cloud metadata), CGNAT, IPv6 unique-local, multicast, unspecified,
//! broadcast, and each of them embedded in IPv6 (`::ffff:a.b.c.d`, `::a.b.c.d`,
//! `64:ff9b::a.b.c.d`). `allow_cidrs` carves exceptions out of that default list;
//! `deny_cidrs` adds to it and wins over `allow_cidrs`; the proxy's own listen and admin
//! addresses are refused whatever either says.
//!
//! A leaf: config builds the policy, connect and upstream use it.

use std::fmt;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use http::Uri;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use ipnet::IpNet;
use tokio::net::TcpStream;

/// Why an address is refused: a default rule, a `deny_cidrs` entry, or a listener of the
/// proxy itself. Bounded, so it can label a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// 127.0.0.0/8, ::1.
    Loopback,
    /// RFC 1918: 10/8, 172.16/12, 192.168/16.
    Private,
    /// 169.254/16 (cloud metadata services), fe80::/10.
    LinkLocal,
    /// 100.64/10, carrier-grade NAT.
    SharedNat,
    /// fc00::/7, IPv6 unique-local.
    UniqueLocal,
    /// 224/4, ff00::/8.
    Multicast,
    /// 0.0.0.0/8, ::.
    Unspecified,
    /// 255.255.255.255.
    Broadcast,
    /// A `proxy.deny_cidrs` entry.
    DenyCidrs,
    /// The proxy's own `proxy.listen` or `admin.listen`.
    OwnListener,
    /// A port outside `proxy.connect_ports`.
    ConnectPorts,
    /// A port outside `proxy.http_ports`.
    HttpPorts,
    /// A host not on the `proxy.unmatched = { tunnel = [...] }` list.
    NotListed,
}

impl Rule {
    /// The metric label and log field.
    pub fn label(self) -> &'static str {
        match self {
            Rule::Loopback => "loopback",
            Rule::Private => "private",
            Rule::LinkLocal => "link_local",
            Rule::SharedNat => "shared_nat",
            Rule::UniqueLocal => "unique_local",
            Rule::Multicast => "multicast",
            Rule::Unspecified => "unspecified",
            Rule::Broadcast => "broadcast",
            Rule::DenyCidrs => "deny_cidrs",
            Rule::OwnListener => "own_listener",
            Rule::ConnectPorts => "connect_ports",
            Rule::HttpPorts => "http_ports",
            Rule::NotListed => "not_listed",
        }
    }

    /// What the rule is, for a person.
    fn describe(self) -> &'static str {
        match self {
            Rule::Loopback => "loopback",
            Rule::Private => "private (RFC 1918)",
            Rule::LinkLocal => "link-local (cloud metadata)",
            Rule::SharedNat => "shared address space (CGNAT, RFC 6598)",
            Rule::UniqueLocal => "unique-local IPv6 (fc00::/7)",
            Rule::Multicast => "multicast",
            Rule::Unspecified => "unspecified",
            Rule::Broadcast => "broadcast",
            Rule::DenyCidrs => "listed in proxy.deny_cidrs",
            Rule::OwnListener => "this proxy's own listener",
            Rule::ConnectPorts => "not in proxy.connect_ports",
            Rule::HttpPorts => "not in proxy.http_ports",
            Rule::NotListed => "not on the proxy.unmatched tunnel list",
        }
    }

    /// The setting that would let it through, if any.
    fn remedy(self) -> Option<&'static str> {
        match self {
            Rule::OwnListener => None,
            Rule::DenyCidrs => Some("remove it from proxy.deny_cidrs"),
            Rule::ConnectPorts => Some("add the port to proxy.connect_ports"),
            Rule::HttpPorts => Some("add the port to proxy.http_ports"),
            Rule::NotListed => Some("add the host to proxy.unmatched = { tunnel = [...] }"),
            _ => Some("add its range to proxy.allow_cidrs"),
        }
    }
}

/// `proxy.policy_mode`: refuse, or only report what would be refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Refuse (403).
    #[default]
    Enforce,
    /// Let it through, log `policy=would_deny` and count it.
    Report,
}

/// A destination the policy refuses: what was asked for and the rule that refuses it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Refused {
    /// The address, `host:port` or host asked for.
    pub what: String,
    /// The rule.
    pub rule: Rule,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} is {}", self.what, self.rule.describe())?;
        match self.rule.remedy() {
            Some(remedy) => write!(f, "; to allow it, {remedy}"),
            None => f.write_str("; the proxy never connects to itself"),
        }
    }
}

/// The IPv4 address an IPv6 one carries: IPv4-mapped `::ffff:a.b.c.d`, IPv4-compatible
/// `::a.b.c.d` (not `::` or `::1`), NAT64 `64:ff9b::a.b.c.d`.
pub fn embedded_v4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = v6.segments();
    let tail = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    match s {
        [0, 0, 0, 0, 0, 0xffff, _, _] | [0x64, 0xff9b, 0, 0, 0, 0, _, _] => Some(tail),
        [0, 0, 0, 0, 0, 0, hi, lo] if hi != 0 || lo > 1 => Some(tail),
        _ => None,
    }
}

/// The default rule that refuses `ip`, with embedded IPv4 addresses judged as IPv4.
pub fn default_rule(ip: IpAddr) -> Option<Rule> {
    match ip {
        IpAddr::V4(v4) => v4_rule(v4),
        IpAddr::V6(v6) => match embedded_v4(v6) {
            Some(v4) => v4_rule(v4),
            None => v6_rule(v6),
        },
    }
}

fn v4_rule(ip: Ipv4Addr) -> Option<Rule> {
    let [a, b, ..] = ip.octets();
    Some(match (a, b) {
        (127, _) => Rule::Loopback,
        (10, _) | (192, 168) => Rule::Private,
        (172, b) if (16..32).contains(&b) => Rule::Private,
        (169, 254) => Rule::LinkLocal,
        (100, b) if (64..128).contains(&b) => Rule::SharedNat,
        (0, _) => Rule::Unspecified,
        _ if ip.is_broadcast() => Rule::Broadcast,
        (224..=239, _) => Rule::Multicast,
        _ => return None,
    })
}

fn v6_rule(ip: Ipv6Addr) -> Option<Rule> {
    let first = ip.segments()[0];
    Some(match () {
        _ if ip.is_loopback() => Rule::Loopback,
        _ if ip.is_unspecified() => Rule::Unspecified,
        _ if first & 0xffc0 == 0xfe80 => Rule::LinkLocal,
        _ if first & 0xfe00 == 0xfc00 => Rule::UniqueLocal,
        _ if first & 0xff00 == 0xff00 => Rule::Multicast,
        _ => return None,
    })
}

/// The address a host names without DNS: an IP literal (`[::1]`, `10.0.0.1`) or a
/// numeric IPv4 form the C resolver accepts (`127.1`, `0x7f.1`, `017700000001`,
/// `2130706433`), so such a host is judged before anything (TLS included) sees it.
pub fn literal(host: &str) -> Option<IpAddr> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Some(ip);
    }
    let parts: Vec<u32> = host
        .split('.')
        .map(|part| {
            let (digits, radix) = match part.strip_prefix("0x").or(part.strip_prefix("0X")) {
                Some(hex) => (hex, 16),
                None if part.len() > 1 && part.starts_with('0') => (&part[1..], 8),
                None => (part, 10),
            };
            u32::from_str_radix(digits, radix).ok()
        })
        .collect::<Option<_>>()?;
    let (last, head) = parts.split_last()?;
    let width = 32 - 8 * head.len() as u32;
    if head.len() > 3 || head.iter().any(|p| *p > 255) || width < 32 && *last >> width != 0 {
        return None;
    }
    let high = head.iter().fold(0u32, |acc, p| acc << 8 | p) << (width % 32);
    Some(IpAddr::V4(Ipv4Addr::from(high | last)))
}

/// The address policy for unmatched traffic, as configured.
#[derive(Debug, Clone, Default)]
pub struct AddressPolicy {
    /// `proxy.allow_cidrs`: exceptions to the default list.
    pub allow: Vec<IpNet>,
    /// `proxy.deny_cidrs`: added to the default list, wins over `allow`.
    pub deny: Vec<IpNet>,
    /// `proxy.policy_mode`.
    pub mode: Mode,
    /// The proxy's own listeners, once bound (refused always).
    pub own: Arc<OnceLock<Vec<SocketAddr>>>,
}

impl AddressPolicy {
    /// The rule refusing `addr`, if any (whatever the mode).
    pub fn check(&self, addr: SocketAddr) -> Result<(), Refused> {
        let refused = |rule| Refused {
            what: addr.to_string(),
            rule,
        };
        if self.is_own(addr) {
            return Err(refused(Rule::OwnListener));
        }
        let ips = forms(addr.ip());
        let listed = |nets: &[IpNet]| {
            nets.iter()
                .any(|n| ips.iter().flatten().any(|ip| n.contains(ip)))
        };
        if listed(&self.deny) {
            return Err(refused(Rule::DenyCidrs));
        }
        match default_rule(addr.ip()) {
            Some(rule) if !listed(&self.allow) => Err(refused(rule)),
            _ => Ok(()),
        }
    }

    fn is_own(&self, addr: SocketAddr) -> bool {
        let ip = forms(addr.ip())[1].unwrap_or(addr.ip());
        self.own.get().into_iter().flatten().any(|own| {
            own.port() == addr.port()
                && (own.ip() == ip || own.ip().is_unspecified() && default_rule(ip).is_some())
        })
    }

    /// [`Self::check`] under the mode: in `report`, a refusal is logged and counted and the
    /// destination let through; in `enforce`, counted and returned.
    pub fn judge(&self, result: Result<(), Refused>) -> Result<(), Refused> {
        judge(self.mode, result)
    }
}

/// The address as given and, for an IPv6 address carrying an IPv4 one, that IPv4 address.
fn forms(ip: IpAddr) -> [Option<IpAddr>; 2] {
    match ip {
        IpAddr::V6(v6) => [Some(ip), embedded_v4(v6).map(IpAddr::V4)],
        IpAddr::V4(_) => [Some(ip), Some(ip)],
    }
}

/// Applies `mode` to a verdict of any destination rule (address, port, list): logs,
/// counts `oauth_egress_policy_total`, and lets it through in `report`.
pub fn judge(mode: Mode, result: Result<(), Refused>) -> Result<(), Refused> {
    let Err(refused) = result else {
        return Ok(());
    };
    let rule = refused.rule.label();
    match mode {
        Mode::Report => {
            tracing::warn!(policy = "would_deny", rule, destination = %refused.what, "{refused}");
            crate::metrics::policy("would_deny", rule);
            Ok(())
        }
        Mode::Enforce => {
            crate::metrics::policy("deny", rule);
            Err(refused)
        }
    }
}

/// Resolves `host:port` once and keeps the addresses the policy allows (all of them, when
/// there is no policy): what the caller dials is what was checked.
pub async fn resolve(
    host: &str,
    port: u16,
    policy: Option<&AddressPolicy>,
) -> Result<Vec<SocketAddr>, ResolveError> {
    let found: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(ResolveError::Lookup)?
        .collect();
    let Some(policy) = policy else {
        return Ok(found);
    };
    let mut first = None;
    let mut allowed = Vec::with_capacity(found.len());
    for addr in found {
        match policy.judge(policy.check(addr)) {
            Ok(()) => allowed.push(addr),
            Err(refused) => {
                first.get_or_insert(refused);
            }
        }
    }
    match first {
        Some(mut refused) if allowed.is_empty() => {
            refused.what = format!("{host}:{port} ({})", refused.what);
            Err(ResolveError::Refused(refused))
        }
        _ => Ok(allowed),
    }
}

/// Why a name gave no address to dial.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// The lookup failed.
    #[error("cannot resolve: {0}")]
    Lookup(#[source] std::io::Error),
    /// Every address it resolved to is refused (the first refusal).
    #[error("{0}")]
    Refused(Refused),
}

/// The TCP connector of the upstream clients. Without a policy (routed traffic) it is
/// hyper-util's `HttpConnector`; with one (unmatched traffic) it resolves the URI's host once,
/// checks each address with its port, and dials only checked addresses, as IP literals, so
/// the connector underneath does no lookup of its own. TLS (SNI, certificate checks) still
/// uses the URI's host: the connector above this one sees the original URI.
#[derive(Debug, Clone)]
pub struct Guarded {
    /// The dialer.
    pub inner: HttpConnector,
    /// The policy for unmatched traffic, or none.
    pub policy: Option<Arc<AddressPolicy>>,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower_service::Service<Uri> for Guarded {
    type Response = TokioIo<TcpStream>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let mut inner = self.inner.clone();
        let Some(policy) = self.policy.clone() else {
            let connecting = inner.call(uri);
            return Box::pin(async move { connecting.await.map_err(Into::into) });
        };
        Box::pin(async move {
            let host = uri.host().unwrap_or_default();
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let port = uri.port_u16().unwrap_or(match uri.scheme_str() {
                Some("https") => 443,
                _ => 80,
            });
            let mut last: Option<BoxError> = None;
            for addr in resolve(host, port, Some(&policy)).await? {
                let literal: Uri = format!("http://{addr}/").parse()?;
                match inner.call(literal).await {
                    Ok(stream) => return Ok(stream),
                    Err(err) => last = Some(err.into()),
                }
            }
            Err(last.unwrap_or_else(|| "the name resolved to no address".into()))
        })
    }
}

#[cfg(test)]
mod tests;
