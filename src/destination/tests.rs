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
