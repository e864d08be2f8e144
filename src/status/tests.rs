use super::html::{escape, format_secs, format_unix, render};
use super::*;

#[test]
fn escape_cases() {
    let cases = [
        ("plain", "plain"),
        (
            "<script>alert(1)</script>",
            "&lt;script&gt;alert(1)&lt;/script&gt;",
        ),
        ("a&b", "a&amp;b"),
        ("\"q\" 'q'", "&quot;q&quot; &#39;q&#39;"),
        ("é", "é"),
    ];
    for (raw, want) in cases {
        assert_eq!(escape(raw), want, "{raw}");
    }
}

#[test]
fn times_and_durations() {
    assert_eq!(format_unix(0), "1970-01-01 00:00:00 UTC");
    assert_eq!(format_unix(1_700_000_000), "2023-11-14 22:13:20 UTC");
    let cases = [
        (0, "0s"),
        (59, "59s"),
        (61, "1m 01s"),
        (3600, "1h 00m"),
        (7322, "2h 02m"),
    ];
    for (secs, want) in cases {
        assert_eq!(format_secs(secs), want);
    }
}

fn hostile_status() -> Status {
    Status {
        schema: SCHEMA,
        version: VERSION,
        generated_at_unix: 1,
        started_at_unix: 1,
        ready: false,
        config: ConfigStatus {
            file: "/etc/<x>.toml".into(),
            last_reload: Some(ReloadStatus {
                at_unix: 1,
                ok: false,
                error: Some("route <b>bad</b>".into()),
            }),
        },
        ca: CaInfo {
            subject: Some("CN=<ca>".into()),
            sha256_fingerprint: "AA:BB".into(),
            not_after_unix: Some(2),
            leaves_cached: 3,
        },
        routes: vec![RouteStatus {
            name: "r<1>".into(),
            host: "*.example.com".into(),
            port: None,
            path: "/".into(),
            client: "c\"1".into(),
            grant: "client_credentials",
            sender: "bearer",
            token: TokenStatus {
                kind: "fixed",
                subjects: None,
                state: TokenState::Failing,
                expires_in_seconds: None,
                last_fetch: None,
                last_error: Some(ErrorStatus {
                    at_unix: 1,
                    kind: "oauth_error",
                    oauth_error: Some("invalid_client".into()),
                    description: Some("<img src=x onerror=alert(1)>".into()),
                    message: "m".into(),
                }),
            },
            last_5m: Window::default(),
        }],
    }
}

#[test]
fn the_page_escapes_every_value_and_has_no_script() {
    let page = render(&hostile_status());
    for raw in ["<x>", "<b>", "<ca>", "r<1>", "c\"1", "<img"] {
        assert!(!page.contains(raw), "{raw} unescaped in {page}");
    }
    assert!(page.contains("&lt;img src=x onerror=alert(1)&gt;"));
    assert!(!page.contains("<script"));
    assert!(!page.contains("src=\"http"));
}

#[test]
fn the_json_schema_names() {
    let json = serde_json::to_value(hostile_status()).unwrap_or_default();
    assert_eq!(json["schema"], 1);
    let route = &json["routes"][0];
    assert_eq!(route["token"]["state"], "failing");
    assert_eq!(
        route["token"]["last_error"]["oauth_error"],
        "invalid_client"
    );
    assert_eq!(route["last_5m"]["retries_401"], 0);
    assert_eq!(json["ca"]["leaves_cached"], 3);
    assert_eq!(json["config"]["last_reload"]["ok"], false);
}
