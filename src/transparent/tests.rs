use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::hello::{client_hello, request_host, Hello, Prefixed};
use super::rules::{Redirect, RulesError};

fn redirect() -> Redirect {
    Redirect {
        uid: 1337,
        ports: vec![443, 80],
        http_ports: vec![80],
        tls_to: 15001,
        http_to: Some(15080),
    }
}

#[test]
fn the_rules_skip_the_proxy_uid_and_loopback_and_redirect_each_port_to_its_listener() {
    let lines: Vec<String> = redirect()
        .install()
        .unwrap()
        .iter()
        .map(ToString::to_string)
        .collect();
    let v4 = [
        "iptables -t nat -N OAUTH_EGRESS",
        "iptables -t nat -A OAUTH_EGRESS -m owner --uid-owner 1337 -j RETURN",
        "iptables -t nat -A OAUTH_EGRESS -d 127.0.0.0/8 -j RETURN",
        "iptables -t nat -A OAUTH_EGRESS -p tcp --dport 443 -j REDIRECT --to-ports 15001",
        "iptables -t nat -A OAUTH_EGRESS -p tcp --dport 80 -j REDIRECT --to-ports 15080",
        "iptables -t nat -A OUTPUT -p tcp -j OAUTH_EGRESS",
    ];
    let v6: Vec<String> = v4
        .iter()
        .map(|l| {
            l.replace("iptables", "ip6tables")
                .replace("127.0.0.0/8", "::1/128")
        })
        .collect();
    let want: Vec<String> = v4.iter().map(|s| s.to_string()).chain(v6).collect();
    assert_eq!(lines, want);
    let removal: Vec<String> = Redirect::remove().iter().map(ToString::to_string).collect();
    assert_eq!(
        removal,
        [
            "iptables -t nat -D OUTPUT -p tcp -j OAUTH_EGRESS",
            "iptables -t nat -F OAUTH_EGRESS",
            "iptables -t nat -X OAUTH_EGRESS",
            "ip6tables -t nat -D OUTPUT -p tcp -j OAUTH_EGRESS",
            "ip6tables -t nat -F OAUTH_EGRESS",
            "ip6tables -t nat -X OAUTH_EGRESS",
        ]
    );
}

#[test]
fn rules_that_cannot_work_are_refused() {
    let cases = [
        (
            Redirect {
                uid: 0,
                ..redirect()
            },
            RulesError::RootUid,
        ),
        (
            Redirect {
                ports: vec![],
                ..redirect()
            },
            RulesError::NoPorts,
        ),
        (
            Redirect {
                http_to: None,
                ..redirect()
            },
            RulesError::NoHttpListener(80),
        ),
    ];
    for (rules, want) in cases {
        assert_eq!(rules.install(), Err(want.clone()), "{want}");
    }
    // No plain-http port listed: no http listener needed.
    let tls_only = Redirect {
        ports: vec![443, 8443],
        http_to: None,
        ..redirect()
    };
    let lines = tls_only.install().unwrap();
    assert!(lines.iter().any(|c| c
        .to_string()
        .ends_with("--dport 8443 -j REDIRECT --to-ports 15001")));
}

/// The first flight of a real rustls client for `name`.
fn hello_bytes(name: &str) -> Vec<u8> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(name.to_string()).unwrap();
    let mut client = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut out = Vec::new();
    while client.wants_write() {
        client.write_tls(&mut out).unwrap();
    }
    out
}

/// `bytes`, written `step` at a time into a pipe, then closed.
fn trickle(bytes: Vec<u8>, step: usize) -> tokio::io::DuplexStream {
    let (mut tx, rx) = tokio::io::duplex(64);
    tokio::spawn(async move {
        for piece in bytes.chunks(step) {
            if tx.write_all(piece).await.is_err() {
                return;
            }
        }
    });
    rx
}

#[tokio::test]
async fn the_client_hello_is_read_whole_even_in_small_pieces_and_kept_for_replay() {
    let cases = [
        (
            hello_bytes("api.example"),
            7,
            Hello::Tls {
                sni: Some("api.example".into()),
            },
        ),
        (
            hello_bytes("api.example"),
            4096,
            Hello::Tls {
                sni: Some("api.example".into()),
            },
        ),
        // An IP literal carries no SNI.
        (hello_bytes("10.0.0.1"), 5, Hello::Tls { sni: None }),
        (
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\n".to_vec(),
            3,
            Hello::NotTls,
        ),
    ];
    for (bytes, step, want) in cases {
        let mut stream = trickle(bytes.clone(), step);
        let (seen, hello) = client_hello(&mut stream).await.unwrap();
        assert_eq!(hello, want, "step {step}");
        assert_eq!(seen, bytes[..seen.len()], "the bytes read are kept as read");
        if let Hello::Tls { .. } = want {
            assert_eq!(seen.len(), bytes.len(), "the whole ClientHello, no more");
        }
    }
    // A connection that closes halfway is an error, not a decision.
    let half = hello_bytes("api.example")[..20].to_vec();
    let mut stream = trickle(half, 5);
    assert!(client_hello(&mut stream).await.is_err());
}

#[tokio::test]
async fn the_first_request_head_names_its_host() {
    let cases: [(&[u8], Option<&str>); 5] = [
        (
            b"GET /x HTTP/1.1\r\nHost: api.example\r\n\r\n",
            Some("api.example"),
        ),
        (
            b"GET / HTTP/1.1\r\nhost: api.example:8080\r\nX: y\r\n\r\nbody",
            Some("api.example:8080"),
        ),
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", None),
        (b"GET / HTTP/1.1\r\nX: y\r\n\r\n", None),
        (b"\x16\x03\x01 not http at all\r\n\r\n", None),
    ];
    for (bytes, want) in cases {
        let mut stream = trickle(bytes.to_vec(), 3);
        let (seen, host) = request_host(&mut stream).await.unwrap();
        assert_eq!(host.as_deref(), want, "{}", String::from_utf8_lossy(bytes));
        assert_eq!(seen, bytes[..seen.len()]);
    }
}

#[tokio::test]
async fn prefixed_replays_the_head_before_the_rest() {
    let rest = trickle(b" world".to_vec(), 2);
    let mut stream = Prefixed::new(b"hello".to_vec(), rest);
    let mut all = String::new();
    stream.read_to_string(&mut all).await.unwrap();
    assert_eq!(all, "hello world");
}

#[test]
fn transparent_keys_are_checked_and_named() {
    let problems = |section: &str| {
        let text = format!("[proxy]\nlisten = \"127.0.0.1:3128\"\n{section}");
        match crate::config::from_toml(&text, std::path::Path::new("."), "t") {
            Ok(config) => {
                assert!(config.transparent.is_some());
                String::new()
            }
            Err(err) => err.to_string(),
        }
    };
    let cases = [
        ("[transparent]\nlisten = \"127.0.0.1:15001\"", None),
        (
            "[transparent]\nlisten = \"127.0.0.1:15001\"\nhttp_listen = \"127.0.0.1:15080\"",
            None,
        ),
        (
            "[transparent]\nlisten = \"127.0.0.1:3128\"",
            Some("must differ from proxy.listen"),
        ),
        (
            "[transparent]\nlisten = \"127.0.0.1:15001\"\nhttp_listen = \"127.0.0.1:15001\"",
            Some("transparent.http_listen must differ from transparent.listen"),
        ),
        (
            "[transparent]\nhttp_listen = \"127.0.0.1:15080\"",
            Some("listen"),
        ),
        (
            "[transparent]\nlisten = \"127.0.0.1:15001\"\nport = 1",
            Some("port"),
        ),
    ];
    for (section, want) in cases {
        let got = problems(section);
        match want {
            None => assert_eq!(got, "", "{section}"),
            Some(want) => assert!(got.contains(want), "{section}: {got}"),
        }
    }
}
