use crate::config::{from_toml, CredentialForm};

const CLIENT: &str = "[clients.c]\ntoken_endpoint = \"https://idp.example/token\"\n\
    client_id = \"c\"\nauth = \"client_secret_post\"\nclient_secret = { env = \"X\" }\n";

fn route(lines: &str) -> String {
    format!("{CLIENT}[[route]]\nname = \"r\"\nhost = \"api.example\"\n{lines}\n")
}

/// Route lines, and `Ok(header)` for the header the credential goes in or `Err(words)` a
/// problem must contain.
fn forms() -> &'static [(&'static str, Result<&'static str, &'static str>)] {
    &[
        (
            "credential = { header = \"X-Api-Key\", value = { env = \"K\" } }",
            Ok("x-api-key"),
        ),
        (
            "credential = { header = \"Authorization\", prefix = \"Bearer \", value = { file = \"k\" } }",
            Ok("authorization"),
        ),
        (
            "credential = { basic = { user = \"svc\", password = { env = \"P\" } } }",
            Ok("authorization"),
        ),
        ("credential = { value = { env = \"K\" } }", Err("needs `header`")),
        (
            "credential = { header = \"X-Api-Key\", value = \"sk_live_literal\" }",
            Err("literal values are refused"),
        ),
        (
            "credential = { header = \"Bad Header\", value = { env = \"K\" } }",
            Err("not a valid header name"),
        ),
        (
            "credential = { header = \"Host\", value = { env = \"K\" } }",
            Err("owns"),
        ),
        (
            "credential = { header = \"X-K\", prefix = \"a\\nb\", value = { env = \"K\" } }",
            Err("prefix holds bytes"),
        ),
        (
            "credential = { basic = { user = \"a:b\", password = { env = \"P\" } } }",
            Err("may not contain ':'"),
        ),
        (
            "credential = { header = \"X-K\", basic = { user = \"u\", password = { env = \"P\" } } }",
            Err("remove header"),
        ),
        (
            "client = \"c\"\ncredential = { header = \"X-K\", value = { env = \"K\" } }",
            Err("gets no token; remove client"),
        ),
        (
            "credential = { header = \"X-K\", value = { env = \"K\" } }\nscopes = [\"a\"]\ntoken_header = \"X\"",
            Err("remove scopes, token_header"),
        ),
        ("credential = {}", Err("needs value")),
        (
            "credential = { header = \"X-K\", value = { exec = [\"vault\", \"kv\", \"get\"], cache_secs = 300 } }",
            Ok("x-k"),
        ),
        (
            "credential = { header = \"X-K\", value = { env = \"K\", cache_secs = 5 } }",
            Err("cache_secs goes with exec only"),
        ),
        (
            "credential = { header = \"X-K\", value = { exec = [] } }",
            Err("exec needs the program"),
        ),
        ("port = 443", Err("give client = \"NAME\"")),
    ]
}

#[test]
fn credential_forms_and_their_refusals() {
    let dir = tempfile::tempdir().unwrap();
    for (lines, want) in forms() {
        let result = from_toml(&route(lines), dir.path(), "case");
        match (result, want) {
            (Ok(config), Ok(header)) => {
                let credential = config.routes[0].credential.as_ref().expect(lines);
                assert_eq!(credential.header.as_str(), *header, "{lines}");
                assert!(config.routes[0].client.is_none(), "{lines}");
                if lines.contains("basic") {
                    assert!(
                        matches!(&credential.form, CredentialForm::Basic { user, .. } if user == "svc")
                    );
                }
            }
            (Err(err), Err(words)) => {
                let err = err.to_string();
                assert!(err.contains(words), "{lines}: {err}");
                // Validation names the route; a parse error names the key's path.
                assert!(
                    err.contains("route #1 (r)") || err.contains("route.0.credential"),
                    "{lines}: {err}"
                );
                assert!(!err.contains("sk_live_literal"), "{lines}: {err}");
            }
            (got, want) => panic!("{lines}: got {:?}, want {want:?}", got.map(|_| "ok")),
        }
    }
}

/// `token_header`/`token_scheme`, and `Ok((header, scheme))` or `Err(words)`.
#[test]
fn token_placement_cases() {
    type Case<'a> = (&'a str, Result<(&'a str, &'a str), &'a str>);
    let cases: &[Case] = &[
        (
            "token_header = \"X-Auth-Token\"",
            Ok(("x-auth-token", "Bearer")),
        ),
        (
            "token_header = \"X-Auth-Token\"\ntoken_scheme = \"\"",
            Ok(("x-auth-token", "")),
        ),
        ("token_scheme = \"Token\"", Ok(("authorization", "Token"))),
        (
            "token_scheme = \"Bad Scheme\"",
            Err("not an auth-scheme token"),
        ),
        ("token_header = \"Content-Length\"", Err("owns")),
        (
            "token_header = \"X-T\"\ndpop = true",
            Err("cannot be used with DPoP"),
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    for (lines, want) in cases {
        let text = route(&format!("client = \"c\"\n{lines}"));
        match (from_toml(&text, dir.path(), "case"), want) {
            (Ok(config), Ok((header, scheme))) => {
                let placed = config.routes[0].token_placement.as_ref().expect(lines);
                assert_eq!(
                    (placed.header.as_str(), placed.scheme.as_str()),
                    (*header, *scheme)
                );
            }
            (Err(err), Err(words)) => {
                let err = err.to_string();
                assert!(err.contains(words), "{lines}: {err}");
            }
            (got, want) => panic!("{lines}: got {:?}, want {want:?}", got.map(|_| "ok")),
        }
    }
    let plain = from_toml(&route("client = \"c\""), dir.path(), "case").unwrap();
    assert!(plain.routes[0].token_placement.is_none());
}
