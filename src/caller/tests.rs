use super::*;
use base64::engine::general_purpose::STANDARD;

fn config(callers: &str, dir: &std::path::Path) -> crate::config::Config {
    let toml = format!("[proxy]\ncallers = \"known\"\n{callers}");
    crate::config::from_toml(&toml, dir, "t").unwrap_or_else(|e| panic!("{e}"))
}

fn table(config: &crate::config::Config) -> Callers {
    Callers::new(&config.callers, config.proxy.callers, Mode::Enforce)
}

fn with(value: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::PROXY_AUTHORIZATION,
        HeaderValue::from_str(value).unwrap(),
    );
    headers
}

fn basic(user: &str, password: &str) -> HeaderMap {
    with(&format!(
        "Basic {}",
        STANDARD.encode(format!("{user}:{password}"))
    ))
}

const CALLERS: &str = r#"
[[caller]]
name = "billing"
sources = ["10.1.2.0/24"]
proxy_auth = { basic = { user = "billing", password = { file = "billing.pw" } } }

[[caller]]
name = "reports"
proxy_auth = { bearer = { file = "reports.token" } }

[[caller]]
name = "batch"
sources = ["10.1.0.0/16", "::1"]
"#;

#[test]
fn each_way_of_calling_identifies_its_caller_or_nobody() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("billing.pw"), "pw-1\n").unwrap();
    std::fs::write(dir.path().join("reports.token"), "tok-1").unwrap();
    let callers = table(&config(CALLERS, dir.path()));
    let known = |n: &str| Identity::Known(n.into());
    let nobody = Identity::Unidentified(Unmatched::NoMatch);
    let wrong = Identity::Unidentified(Unmatched::WrongCredentials);
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    let cases = [
        // Sources, first match in file order; IPv4-mapped peers count as IPv4.
        ("10.1.2.7", HeaderMap::new(), known("billing")),
        ("10.1.9.7", HeaderMap::new(), known("batch")),
        ("::ffff:10.1.2.7", HeaderMap::new(), known("billing")),
        ("::1", HeaderMap::new(), known("batch")),
        ("192.0.2.1", HeaderMap::new(), nobody.clone()),
        // Credentials, from any address.
        ("192.0.2.1", basic("billing", "pw-1"), known("billing")),
        ("192.0.2.1", with("bearer tok-1"), known("reports")),
        ("192.0.2.1", with("Bearer  tok-1 "), known("reports")),
        // A wrong credential identifies nobody, even from a listed address.
        ("10.1.2.7", basic("billing", "pw-2"), wrong.clone()),
        ("192.0.2.1", basic("reports", "tok-1"), wrong.clone()),
        ("192.0.2.1", with("Bearer pw-1"), wrong.clone()),
        ("192.0.2.1", with("Bearer billing:pw-1"), wrong.clone()),
        ("192.0.2.1", with("Basic not-base64!"), wrong.clone()),
        ("192.0.2.1", with("Digest username=billing"), wrong.clone()),
        ("192.0.2.1", with("tok-1"), wrong.clone()),
    ];
    for (peer, headers, want) in cases {
        assert_eq!(
            callers.identify(ip(peer), &headers),
            want,
            "{peer} {headers:?}"
        );
    }
    assert_eq!(callers.by_source(ip("10.1.2.7")), known("billing"));
    assert_eq!(callers.by_source(ip("192.0.2.1")), nobody);
}

#[test]
fn a_rotated_credential_file_is_read_again() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("reports.token");
    std::fs::write(dir.path().join("billing.pw"), "pw").unwrap();
    std::fs::write(&file, "old-token").unwrap();
    let callers = table(&config(CALLERS, dir.path()));
    let peer = "192.0.2.1".parse().unwrap();
    let reports = Identity::Known("reports".into());
    assert_eq!(callers.identify(peer, &with("Bearer old-token")), reports);
    // A longer value: the size changes even where the modification time has a coarse clock.
    std::fs::write(&file, "the-new-token").unwrap();
    assert_eq!(
        callers.identify(peer, &with("Bearer the-new-token")),
        reports
    );
    assert_ne!(callers.identify(peer, &with("Bearer old-token")), reports);
    // Unreadable: identifies nobody (and is logged), until it is back.
    std::fs::remove_file(&file).unwrap();
    assert_ne!(
        callers.identify(peer, &with("Bearer the-new-token")),
        reports
    );
    std::fs::write(&file, "back-again").unwrap();
    assert_eq!(callers.identify(peer, &with("Bearer back-again")), reports);
}

#[test]
fn known_refuses_the_unidentified_with_the_challenges_configured() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("billing.pw"), "pw").unwrap();
    std::fs::write(dir.path().join("reports.token"), "tok").unwrap();
    let peer: IpAddr = "192.0.2.1".parse().unwrap();
    let nobody = Identity::Unidentified(Unmatched::NoMatch);
    let status = |callers: &Callers| match callers.admit(&nobody, peer) {
        Ok(()) => (200, Vec::new()),
        Err(err) => {
            let response = crate::error::response(&err);
            let challenges = response
                .headers()
                .get_all(header::PROXY_AUTHENTICATE)
                .iter()
                .map(|v| v.to_str().unwrap().to_string())
                .collect();
            (response.status().as_u16(), challenges)
        }
    };
    let both = table(&config(CALLERS, dir.path()));
    assert_eq!(
        status(&both),
        (
            407,
            vec![
                "Basic realm=\"oauth-egress\"".to_string(),
                "Bearer realm=\"oauth-egress\"".to_string()
            ]
        )
    );
    let sources_only = config(
        "[[caller]]\nname = \"a\"\nsources = [\"10.0.0.0/8\"]",
        dir.path(),
    );
    assert_eq!(status(&table(&sources_only)), (403, vec![]));
    let mut any = sources_only.clone();
    any.proxy.callers = CallerPolicy::Any;
    assert_eq!(status(&table(&any)), (200, vec![]));
    let report = Callers::new(&sources_only.callers, CallerPolicy::Known, Mode::Report);
    assert_eq!(status(&report), (200, vec![]));
    assert!(both.admit(&Identity::Known("billing".into()), peer).is_ok());
}

#[test]
fn a_route_serves_only_the_callers_it_lists() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(
        "[[caller]]\nname = \"a\"\nsources = [\"10.0.0.0/8\"]",
        dir.path(),
    );
    let enforce = table(&config);
    let report = Callers::new(&config.callers, CallerPolicy::Known, Mode::Report);
    let listed = vec!["a".to_string(), "b".to_string()];
    let a = Identity::Known("a".into());
    let c = Identity::Known("c".into());
    let nobody = Identity::Unidentified(Unmatched::NoMatch);
    assert!(enforce.on_route("r", None, &c).is_ok());
    assert!(enforce.on_route("r", Some(&listed), &a).is_ok());
    for who in [&c, &nobody] {
        let err = enforce.on_route("r", Some(&listed), who).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("route r") && text.contains(who.label()),
            "{text}"
        );
        assert_eq!(crate::error::response(&err).status(), 403);
        assert!(report.on_route("r", Some(&listed), who).is_ok());
    }
}

#[test]
fn caller_config_problems_name_the_caller_or_route() {
    let dir = tempfile::tempdir().unwrap();
    let problems = |toml: &str| match crate::config::from_toml(toml, dir.path(), "t") {
        Ok(_) => String::new(),
        Err(err) => err.to_string(),
    };
    let route = "[clients.c]\ntoken_endpoint = \"https://idp.example/token\"\nclient_id = \"c\"\n\
                 auth = \"client_secret_basic\"\nclient_secret = { env = \"UNUSED\" }\n\
                 [[route]]\nname = \"api\"\nhost = \"api.example\"\nclient = \"c\"\n";
    let cases = [
        ("[[caller]]\nname = \"a\"\nsources = [\"10.0.0.0/8\"]".to_string(), None),
        (
            "[[caller]]\nname = \"a\"".into(),
            Some("caller #1 (a): give sources"),
        ),
        (
            "[[caller]]\nname = \"a\"\nsources = [\"10.0.0.0/33\"]".into(),
            Some("caller #1 (a): sources: \"10.0.0.0/33\""),
        ),
        (
            "[[caller]]\nname = \"a b\"\nsources = [\"10.0.0.0/8\"]".into(),
            Some("caller #1 (a b): name must be"),
        ),
        (
            "[[caller]]\nname = \"unidentified\"\nsources = [\"10.0.0.0/8\"]".into(),
            Some("caller #1 (unidentified): name must be"),
        ),
        (
            "[[caller]]\nname = \"a\"\nsources = [\"::1\"]\n[[caller]]\nname = \"a\"\nsources = [\"::1\"]"
                .into(),
            Some("caller #2 (a): another [[caller]] has this name"),
        ),
        (
            "[[caller]]\nname = \"a\"\nproxy_auth = { basic = { user = \"u:x\", password = { env = \"P\" } } }"
                .into(),
            Some("caller #1 (a): proxy_auth.basic.user"),
        ),
        (
            // A literal secret is refused without its value in the message.
            "[[caller]]\nname = \"a\"\nproxy_auth = { bearer = \"hunter2-literal\" }".into(),
            Some("literal values are refused"),
        ),
        (
            format!("{route}callers = [\"nobody\"]\n[[caller]]\nname = \"a\"\nsources = [\"::1\"]"),
            Some("route api: callers names \"nobody\", which is not a [[caller]] (defined: a)"),
        ),
        (format!("{route}callers = [\"a\"]\n[[caller]]\nname = \"a\"\nsources = [\"::1\"]"), None),
        (
            "[proxy]\ncallers = \"some\"".into(),
            Some("callers"),
        ),
    ];
    for (toml, want) in cases {
        let got = problems(&toml);
        match want {
            None => assert_eq!(got, "", "{toml}"),
            Some(want) => assert!(got.contains(want), "{toml}\n=> {got}"),
        }
        assert!(!got.contains("hunter2"), "{got}");
    }
}

#[test]
fn any_on_a_reachable_listener_is_warned_about() {
    let warned = |toml: &str| {
        let config = crate::config::from_toml(toml, std::path::Path::new("."), "t").unwrap();
        config
            .warnings
            .iter()
            .any(|w| w.contains("proxy.callers = \"any\""))
    };
    assert!(warned("[proxy]\nlisten = \"0.0.0.0:3128\""));
    assert!(!warned("[proxy]\nlisten = \"127.0.0.1:3128\""));
    assert!(!warned(
        "[proxy]\nlisten = \"0.0.0.0:3128\"\ncallers = \"known\""
    ));
}
