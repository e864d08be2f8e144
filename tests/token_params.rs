//! What a token request carries beyond the grant: `token_params`, several `resource`
//! values (RFC 8707 §2), and `basic_encoding` for servers that do not form-decode Basic
//! credentials; against the development authorization server.

use oauth_egress_devserver::{ClientAuthSpec, ClientRegistration};

mod support;

#[tokio::test]
async fn token_params_and_every_resource_reach_the_token_endpoint() {
    let h = support::Harness::start(support::Setup {
        route_extra: format!(
            "scopes = [\"{}\"]\ntoken_params = {{ organization = \"org_a\", tenant = \"t 1&x\" }}\n\
             resource = [\"https://a.example/\", \"https://b.example/\"]",
            support::SCOPE
        ),
        ..Default::default()
    })
    .await;
    let res = h.client().get(h.api_url()).send().await.unwrap();
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
    let form = h.auth.last_form();
    let values = |name: &str| -> Vec<String> {
        form.iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .collect()
    };
    assert_eq!(values("organization"), ["org_a"]);
    assert_eq!(
        values("tenant"),
        ["t 1&x"],
        "form-encoded and decoded intact"
    );
    assert_eq!(
        values("resource"),
        ["https://a.example/", "https://b.example/"]
    );
    assert_eq!(values("grant_type"), ["client_credentials"]);
    h.stop().await;
}

const RESERVED_SECRET: &str = "p@ss:w/rd+100%";

/// A proxy whose client authenticates with a secret that form-encoding changes, at a server
/// that reads Basic credentials raw (Glewlwyd's way).
async fn glewlwyd_style(encoding: &str) -> support::Harness {
    let var = format!("OAUTH_EGRESS_TEST_RESERVED_SECRET_{encoding}");
    std::env::set_var(&var, RESERVED_SECRET);
    let h = support::Harness::start(support::Setup {
        client_toml: Some(format!(
            "token_endpoint = \"{{token_endpoint}}\"\nclient_id = \"raw-client\"\n\
             auth = \"client_secret_basic\"\nclient_secret = {{ env = \"{var}\" }}\n\
             basic_encoding = \"{encoding}\""
        )),
        ..Default::default()
    })
    .await;
    h.auth.register_client(ClientRegistration::new(
        "raw-client",
        ClientAuthSpec::secret(RESERVED_SECRET),
    ));
    h.auth.set_basic_raw(true);
    h
}

#[tokio::test]
async fn a_basic_refusal_of_a_reserved_character_secret_names_the_fix_and_raw_works() {
    let h = glewlwyd_style("form").await;
    let res = h.client().get(h.api_url()).send().await.unwrap();
    assert_eq!(res.status(), 502);
    let body = res.text().await.unwrap();
    assert!(body.contains("invalid_client"), "{body}");
    assert!(body.contains("basic_encoding = \"raw\""), "{body}");
    assert!(!body.contains("p@ss"), "{body}");
    h.stop().await;

    let h = glewlwyd_style("raw").await;
    let res = h.client().get(h.api_url()).send().await.unwrap();
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
    assert_eq!(
        h.auth.last_auth_method().as_deref(),
        Some("client_secret_basic")
    );
    h.stop().await;
}
