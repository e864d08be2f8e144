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
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_default_rules_as_a_table() {
        let cases: [(&str, Option<Rule>); 30] = [
            ("127.0.0.1", Some(Rule::Loopback)),
            ("127.255.255.254", Some(Rule::Loopback)),
            ("::1", Some(Rule::Loopback)),
            ("10.0.0.1", Some(Rule::Private)),
            ("172.16.0.1", Some(Rule::Private)),
            ("172.31.255.255", Some(Rule::Private)),
            ("172.32.0.1", None),
            ("172.15.255.255", None),
            ("192.168.1.1", Some(Rule::Private)),
            ("169.254.169.254", Some(Rule::LinkLocal)),
            ("fe80::1", Some(Rule::LinkLocal)),
            ("febf::1", Some(Rule::LinkLocal)),
            ("100.64.0.1", Some(Rule::SharedNat)),
            ("100.127.255.255", Some(Rule::SharedNat)),
            ("100.128.0.1", None),
            ("fc00::1", Some(Rule::UniqueLocal)),
            ("fd12:3456::1", Some(Rule::UniqueLocal)),
            ("224.0.0.1", Some(Rule::Multicast)),
            ("ff02::1", Some(Rule::Multicast)),
            ("0.0.0.0", Some(Rule::Unspecified)),
            ("::", Some(Rule::Unspecified)),
            ("255.255.255.255", Some(Rule::Broadcast)),
            ("::ffff:169.254.169.254", Some(Rule::LinkLocal)),
            ("::ffff:127.0.0.1", Some(Rule::Loopback)),
            ("::10.0.0.1", Some(Rule::Private)),
            ("64:ff9b::a9fe:a9fe", Some(Rule::LinkLocal)),
            ("64:ff9b::8.8.8.8", None),
            ("::ffff:93.184.216.34", None),
            ("93.184.216.34", None),
            ("2606:4700::1111", None),
        ];
        for (ip, want) in cases {
            assert_eq!(default_rule(ip.parse().unwrap()), want, "{ip}");
        }
    }

    #[test]
    fn numeric_hosts_are_read_as_the_c_resolver_reads_them() {
        let cases = [
            ("127.1", Some("127.0.0.1")),
            ("0x7f.1", Some("127.0.0.1")),
            ("0177.0.0.1", Some("127.0.0.1")),
            ("2130706433", Some("127.0.0.1")),
            ("169.254.43518", Some("169.254.169.254")),
            ("[::1]", Some("::1")),
            ("10.0.0.1", Some("10.0.0.1")),
            ("256.1", None),
            ("1.2.3.4.5", None),
            ("1.2.3.256", None),
            ("api.example", None),
            ("0x", None),
        ];
        for (host, want) in cases {
            let want = want.map(|w| w.parse::<IpAddr>().unwrap());
            assert_eq!(literal(host), want, "{host}");
        }
    }

    #[test]
    fn allow_carves_out_deny_adds_and_wins_and_the_proxy_is_always_refused() {
        let own = Arc::new(OnceLock::new());
        own.set(vec!["0.0.0.0:3128".parse().unwrap()]).unwrap();
        let policy = AddressPolicy {
            allow: vec![
                "10.1.0.0/16".parse().unwrap(),
                "127.0.0.0/8".parse().unwrap(),
            ],
            deny: vec![
                "10.1.2.0/24".parse().unwrap(),
                "203.0.113.0/24".parse().unwrap(),
            ],
            mode: Mode::Enforce,
            own,
        };
        let rule = |addr: &str| policy.check(addr.parse().unwrap()).err().map(|r| r.rule);
        assert_eq!(rule("10.1.9.9:443"), None);
        assert_eq!(rule("[::ffff:10.1.9.9]:443"), None);
        assert_eq!(rule("10.2.0.1:443"), Some(Rule::Private));
        assert_eq!(rule("10.1.2.3:443"), Some(Rule::DenyCidrs));
        assert_eq!(rule("[64:ff9b::10.1.2.3]:443"), Some(Rule::DenyCidrs));
        assert_eq!(rule("203.0.113.5:443"), Some(Rule::DenyCidrs));
        assert_eq!(rule("127.0.0.1:3128"), Some(Rule::OwnListener));
        assert_eq!(rule("[::ffff:127.0.0.1]:3128"), Some(Rule::OwnListener));
        assert_eq!(rule("127.0.0.1:3129"), None);
        assert_eq!(rule("93.184.216.34:3128"), None);
    }

    #[test]
    fn a_refusal_names_the_rule_and_the_setting() {
        let refused = AddressPolicy::default()
            .check("169.254.169.254:80".parse().unwrap())
            .unwrap_err();
        assert_eq!(
            refused.to_string(),
            "169.254.169.254:80 is link-local (cloud metadata); to allow it, add its range to \
             proxy.allow_cidrs"
        );
    }

    /// What the tunnel and the unmatched connector dial: an address literal of every default
    /// range is refused by `resolve` itself (a literal needs no lookup, nothing is dialled).
    #[tokio::test]
    async fn resolve_refuses_every_default_range_without_dialling() {
        let policy = AddressPolicy::default();
        for ip in [
            "10.0.0.1",
            "172.16.0.1",
            "192.168.0.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "fe80::1",
            "fc00::1",
            "ff02::1",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
        ] {
            let got = resolve(ip, 80, Some(&policy)).await;
            assert!(
                matches!(got, Err(ResolveError::Refused(_))),
                "{ip}: {got:?}"
            );
        }
        let report = AddressPolicy {
            mode: Mode::Report,
            ..AddressPolicy::default()
        };
        let got = resolve("169.254.169.254", 80, Some(&report)).await.unwrap();
        assert_eq!(got, ["169.254.169.254:80".parse().unwrap()]);
    }

    fn in_net(net: &str) -> impl Strategy<Value = Ipv4Addr> {
        let net: ipnet::Ipv4Net = net.parse().unwrap();
        let (base, size) = (u32::from(net.network()), 1u64 << (32 - net.prefix_len()));
        (0..size).prop_map(move |i| Ipv4Addr::from(base + i as u32))
    }

    /// The v4 address in each IPv6 encoding the rules unwrap.
    fn encodings(ip: Ipv4Addr) -> [IpAddr; 4] {
        let [a, b, c, d] = ip.octets();
        let (hi, lo) = (u16::from_be_bytes([a, b]), u16::from_be_bytes([c, d]));
        [
            IpAddr::V6(ip.to_ipv6_mapped()),
            IpAddr::V6(Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, hi, lo)),
            IpAddr::V6(Ipv6Addr::new(0, 0, 0, 0, 0, 0, hi, lo)),
            IpAddr::V4(ip),
        ]
    }

    const DEFAULT_V4: [&str; 9] = [
        "127.0.0.0/8",
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "169.254.0.0/16",
        "100.64.0.0/10",
        "0.0.0.0/8",
        "224.0.0.0/4",
        "255.255.255.255/32",
    ];

    proptest! {
        #[test]
        fn every_address_of_a_default_range_is_refused_in_every_form(
            ip in prop_oneof![
                in_net("10.0.0.0/8"), in_net("127.0.0.0/8"), in_net("172.16.0.0/12"),
                in_net("192.168.0.0/16"), in_net("169.254.0.0/16"), in_net("100.64.0.0/10"),
            ]
        ) {
            for form in encodings(ip) {
                prop_assert!(default_rule(form).is_some(), "{form}");
            }
        }

        #[test]
        fn every_v4_outside_the_default_ranges_is_allowed_in_every_form(raw in any::<u32>()) {
            let ip = Ipv4Addr::from(raw);
            let listed = DEFAULT_V4
                .iter()
                .any(|n| n.parse::<ipnet::Ipv4Net>().unwrap().contains(&ip));
            prop_assume!(!listed);
            for form in encodings(ip) {
                prop_assert_eq!(default_rule(form), None, "{}", form);
            }
        }

        #[test]
        fn allow_cidrs_lets_exactly_its_range_through(raw in any::<u32>()) {
            let ip = Ipv4Addr::from(raw);
            let policy = AddressPolicy {
                allow: vec!["10.0.0.0/8".parse().unwrap()],
                ..AddressPolicy::default()
            };
            let allowed = policy.check(SocketAddr::new(IpAddr::V4(ip), 443)).is_ok();
            prop_assert_eq!(allowed, default_rule(IpAddr::V4(ip)).is_none() || ip.octets()[0] == 10);
        }
    }
}
