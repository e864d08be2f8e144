//! Route precedence, as a case table over a real route table.

use std::sync::Arc;

use oauth_egress::intercept::ca::CertificateAuthority;
use oauth_egress::proxy::Proxy;

const TABLE: &str = r#"
[clients.c]
token_endpoint = "https://idp.example/token"
client_id = "c"
auth = "client_secret_basic"
client_secret = { env = "UNUSED" }

[[route]]
name = "wild"
host = "*.pay.example"
client = "c"

[[route]]
name = "wild-eu"
host = "*.eu.pay.example"
client = "c"

[[route]]
name = "api"
host = "api.pay.example"
client = "c"

[[route]]
name = "api-8443"
host = "api.pay.example"
port = 8443
client = "c"

[[route]]
name = "api-v1"
host = "api.pay.example"
path_prefix = "/v1"
client = "c"

[[route]]
name = "api-v1-admin"
host = "api.pay.example"
path_prefix = "/v1/admin/"
client = "c"

[[route]]
name = "reports"
host = "reports.example"
path_prefix = "/reports"
client = "c"
"#;

#[tokio::test]
async fn most_specific_route_wins() {
    let config =
        oauth_egress::config::from_toml(TABLE, std::path::Path::new("."), "table").unwrap();
    let proxy = Proxy::new(
        config,
        Arc::new(CertificateAuthority::generate().unwrap()),
        &[],
    )
    .unwrap();
    let cases: &[(&str, u16, &str, Option<&str>)] = &[
        ("api.pay.example", 443, "/", Some("api")),
        ("API.Pay.Example.", 443, "/", Some("api")),
        ("api.pay.example", 8443, "/v1/x", Some("api-8443")),
        ("api.pay.example", 443, "/v1", Some("api-v1")),
        ("api.pay.example", 443, "/v1/items", Some("api-v1")),
        ("api.pay.example", 443, "/v10", Some("api")),
        (
            "api.pay.example",
            443,
            "/v1/admin/users",
            Some("api-v1-admin"),
        ),
        ("api.pay.example", 443, "/v1/administrator", Some("api-v1")),
        ("x.pay.example", 443, "/", Some("wild")),
        ("a.b.pay.example", 443, "/", Some("wild")),
        ("x.eu.pay.example", 443, "/", Some("wild-eu")),
        ("pay.example", 443, "/", None),
        ("evilpay.example", 443, "/", None),
        ("reports.example", 443, "/reports/q1", Some("reports")),
        ("reports.example", 443, "/other", None),
        ("unknown.example", 443, "/", None),
    ];
    for (host, port, path, want) in cases {
        let got = proxy
            .routes
            .find(host, *port, path)
            .map(|r| r.spec.name.as_str());
        assert_eq!(got, *want, "{host}:{port}{path}");
    }
    // A CONNECT is intercepted when any route covers host:port, whatever the path.
    assert!(proxy.routes.intercepts("reports.example", 443));
    assert!(proxy.routes.intercepts("x.pay.example", 8443));
    assert!(!proxy.routes.intercepts("pay.example", 443));
}

#[tokio::test]
async fn routes_asking_for_the_same_token_share_one_slot() {
    let config =
        oauth_egress::config::from_toml(TABLE, std::path::Path::new("."), "table").unwrap();
    let proxy = Proxy::new(
        config,
        Arc::new(CertificateAuthority::generate().unwrap()),
        &[],
    )
    .unwrap();
    let a = proxy.routes.find("api.pay.example", 443, "/").unwrap();
    let b = proxy.routes.find("x.pay.example", 443, "/").unwrap();
    let headers = http::HeaderMap::new();
    assert!(
        Arc::ptr_eq(
            &a.token().unwrap().slot(&headers).unwrap(),
            &b.token().unwrap().slot(&headers).unwrap()
        ),
        "same client, scopes, audience: one token"
    );
}
