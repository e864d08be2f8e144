//! Interop: the proxy against software nobody here wrote.
//!
//! The authorization server is oidc-provider (the OpenID-certified Node implementation) and
//! the resource server verifies with `jose`; both run from `tests/interop/servers.mjs` over
//! HTTPS. The callers are real, unchanged clients: curl, Python `requests`, Java 17
//! `HttpClient` and Node's undici, configured only through the environment, flags and
//! truststore their ecosystems use. Each test asserts what the resource server and the
//! authorization server recorded, not just the status the client saw.

#[path = "interop/harness.rs"]
mod harness;

use harness::{Call, Client, Interop, ProxyAuth, ROUTES};
use serde_json::{json, Value};

/// One call per route (the token exchange on behalf of alice), plus a POST with a body.
fn every_route(interop: &Interop) -> Vec<Call> {
    let mut calls: Vec<Call> = ROUTES
        .iter()
        .map(|name| {
            let call = Call::get(&format!("/{name}/items?page=2"));
            if *name == "exchange" {
                call.with_authorization(&format!("Bearer {}", interop.subject_token("alice")))
            } else {
                call
            }
        })
        .collect();
    calls.push(Call::post("/basic/orders", r#"{"sku":"A-1","qty":2}"#));
    calls
}

/// The records of successful requests on `path`.
fn granted<'a>(seen: &'a [Value], path: &str) -> Vec<&'a Value> {
    seen.iter()
        .filter(|r| r["path"] == path && r["status"] == 200)
        .collect()
}

/// Every route, driven by `client`: each answer is 200 and the resource server saw the token
/// of the scenario's own client, bound the scenario's way.
async fn client_meets_every_route(client: Client) {
    let interop = Interop::start().await;
    let calls = every_route(&interop);
    let answers = interop.run(client, &calls).await;
    let seen = interop.seen().await;
    for (call, answer) in calls.iter().zip(&answers) {
        assert_eq!(
            answer.status,
            200,
            "{client:?} {} {}: {}\nservers:\n{}",
            call.method,
            call.path,
            answer.body,
            interop.server_log()
        );
        let body = answer.json();
        let route = call.path.split('/').nth(1).unwrap();
        let path = call.path.split('?').next().unwrap();
        assert_eq!(body["path"], path, "{body}");
        assert_eq!(
            body["client_id"],
            interop.client_id(route),
            "{route}: {body}"
        );
        let records = granted(&seen, path);
        assert!(
            records.iter().any(|r| r["jti"] == body["jti"]),
            "{route}: the resource server has no record of jti {}",
            body["jti"]
        );
        match route {
            "dpop" => {
                assert_eq!(body["scheme"], "DPoP", "{body}");
                assert!(body["jkt"].is_string(), "{body}");
            }
            "mtls" => {
                assert_eq!(body["scheme"], "Bearer");
                assert!(body["x5t"].is_string(), "a certificate-bound token: {body}");
            }
            "exchange" => {
                assert_eq!(body["sub"], "alice", "{body}");
            }
            _ => {
                assert_eq!(body["scheme"], "Bearer", "{body}");
                assert!(body["jkt"].is_null() && body["x5t"].is_null(), "{body}");
            }
        }
    }
    let post = answers.last().unwrap().json();
    assert_eq!(post["method"], "POST");
    assert_eq!(post["body"], r#"{"sku":"A-1","qty":2}"#);
    // The query string reached the API; the caller never sent a token of its own.
    assert_eq!(answers[0].json()["query"], "page=2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_meets_every_route() {
    client_meets_every_route(Client::Curl).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_requests_meets_every_route() {
    client_meets_every_route(Client::Python).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn java_httpclient_meets_every_route() {
    client_meets_every_route(Client::Java).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_undici_meets_every_route() {
    client_meets_every_route(Client::Node).await;
}

/// Single flight against a real server: 20 callers arriving at once on a cold route cause one
/// token request at oidc-provider, and all 20 requests carry that one token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_parallel_cold_callers_cause_one_token_request() {
    let interop = Interop::start().await;
    let paths: Vec<String> = (0..20).map(|i| format!("/es256/parallel/{i}")).collect();
    let statuses = interop.curl_parallel(&paths).await;
    assert_eq!(statuses, vec![200; 20]);
    let tokens = interop.token_requests().await;
    assert_eq!(
        token_answers(&tokens, &interop.client_id("es256")),
        vec![(200, String::new())],
        "{tokens:?}"
    );
    let seen = interop.seen().await;
    assert_eq!(seen.len(), 20);
    assert!(seen
        .iter()
        .all(|r| r["status"] == 200 && r["jti"] == seen[0]["jti"]));
}

/// Token requests oidc-provider answered for `client_id`, as (status, error) pairs.
fn token_answers(requests: &[Value], client_id: &str) -> Vec<(u64, String)> {
    requests
        .iter()
        .filter(|r| r["client_id"] == client_id)
        .map(|r| {
            (
                r["status"].as_u64().unwrap_or(0),
                r["error"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

/// `oauth_egress_retries_total{route="dpop",reason="dpop_nonce"}` in this process.
fn nonce_resends() -> f64 {
    oauth_egress::metrics::render()
        .lines()
        .find(|l| {
            l.starts_with("oauth_egress_retries_total{")
                && l.contains("route=\"dpop\"")
                && l.contains("reason=\"dpop_nonce\"")
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

/// DPoP against both servers' nonces: oidc-provider demands one on the token request and the
/// resource server demands its own. Each challenge is answered once, the nonces are
/// remembered, and a rotated resource-server nonce costs one resend and no new token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dpop_meets_both_nonce_challenges() {
    let interop = Interop::start().await;
    let answers = interop
        .run(
            Client::Curl,
            &[
                Call::get("/dpop/a"),
                Call::get("/dpop/b"),
                Call::post("/dpop/c", "payload"),
            ],
        )
        .await;
    assert!(answers.iter().all(|a| a.status == 200), "{answers:?}");
    let client_id = interop.client_id("dpop");
    let tokens = interop.token_requests().await;
    assert_eq!(
        token_answers(&tokens, &client_id),
        vec![(400, "use_dpop_nonce".into()), (200, String::new())],
        "the authorization server's nonce challenge, then one token: {tokens:?}"
    );
    assert!(
        tokens
            .iter()
            .filter(|r| r["client_id"] == client_id)
            .all(|r| r["dpop"] == true),
        "every token request carries a proof"
    );
    let seen = interop.seen().await;
    let statuses: Vec<(u64, String)> = seen
        .iter()
        .map(|r| {
            (
                r["status"].as_u64().unwrap(),
                r["error"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert_eq!(
        statuses,
        vec![
            (401, "use_dpop_nonce".into()),
            (200, String::new()),
            (200, String::new()),
            (200, String::new()),
        ],
        "one resource-server nonce challenge, then remembered: {seen:?}"
    );
    let jkt = &seen[1]["jkt"];
    assert!(jkt.is_string() && seen[1..].iter().all(|r| &r["jkt"] == jkt));

    interop.rotate_api_nonce().await;
    interop.reset().await;
    let resends_before = nonce_resends();
    let answers = interop.run(Client::Curl, &[Call::get("/dpop/d")]).await;
    assert!(
        nonce_resends() > resends_before,
        "the resend is counted in oauth_egress_retries_total"
    );
    assert_eq!(answers[0].status, 200, "{}", answers[0].body);
    let seen = interop.seen().await;
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[0]["error"], "use_dpop_nonce");
    assert_eq!(seen[1]["status"], 200);
    assert_eq!(
        seen[0]["jti"], seen[1]["jti"],
        "the same token, a new proof"
    );
    assert!(
        interop.token_requests().await.is_empty(),
        "a nonce challenge is not a reason for a new token"
    );
}

/// The one retry on 401, on every route: the resource server revokes the tokens the proxy
/// holds; the next request on each route (a POST with a body) is answered 401, the proxy gets
/// one new token from oidc-provider and resends the same body once. The second token request
/// of each client is judged by oidc-provider too: a reused assertion `jti` would be refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_is_replaced_and_the_request_resent_once_on_every_route() {
    let interop = Interop::start().await;
    let alice = format!("Bearer {}", interop.subject_token("alice"));
    let call = |name: &str, call: Call| {
        if name == "exchange" {
            call.with_authorization(&alice)
        } else {
            call
        }
    };
    let warm: Vec<Call> = ROUTES
        .iter()
        .map(|name| call(name, Call::get(&format!("/{name}/warm"))))
        .collect();
    let first = interop.run(Client::Python, &warm).await;
    assert!(first.iter().all(|a| a.status == 200), "{first:?}");
    interop.revoke_seen_tokens().await;
    interop.reset_token_log().await;

    let orders: Vec<Call> = ROUTES
        .iter()
        .map(|name| {
            call(
                name,
                Call::post(&format!("/{name}/orders"), &format!("order-{name}")),
            )
        })
        .collect();
    let answers = interop.run(Client::Python, &orders).await;
    let seen = interop.seen().await;
    let tokens = interop.token_requests().await;
    for ((name, before), after) in ROUTES.iter().zip(&first).zip(&answers) {
        assert_eq!(after.status, 200, "{name}: {}", after.body);
        let body = after.json();
        let old_jti = &before.json()["jti"];
        assert_ne!(&body["jti"], old_jti, "{name}: a new token");
        assert_eq!(
            body["body"],
            format!("order-{name}"),
            "{name}: the body was replayed"
        );
        let path = format!("/{name}/orders");
        let records: Vec<&Value> = seen.iter().filter(|r| r["path"] == path).collect();
        let outcome: Vec<(Value, Value)> = records
            .iter()
            .map(|r| (r["status"].clone(), r["error"].clone()))
            .collect();
        // A DPoP route may meet a fresh resource-server nonce on the way; never a second token.
        let expected_statuses: Vec<u64> = if *name == "dpop" && records.len() == 3 {
            vec![401, 401, 200]
        } else {
            vec![401, 200]
        };
        assert_eq!(
            records
                .iter()
                .map(|r| r["status"].as_u64().unwrap())
                .collect::<Vec<_>>(),
            expected_statuses,
            "{name}: exactly one resend for the revoked token: {outcome:?}"
        );
        assert_eq!(&records[0]["jti"], old_jti, "{name}");
        assert_eq!(records[0]["error"], "invalid_token", "{name}");
        let issued = token_answers(&tokens, &interop.client_id(name))
            .into_iter()
            .filter(|(status, _)| *status == 200)
            .count();
        assert_eq!(issued, 1, "{name}: one new token: {tokens:?}");
    }
}

/// A stored refresh token against oidc-provider's rotation: each refresh writes the new
/// refresh token back to the file before its access token is used, so a later refresh (even
/// after a restart) presents the current one; oidc-provider would revoke the family on reuse.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_rotation_is_followed_across_refreshes_and_restarts() {
    let mut interop = Interop::start().await;
    let file = interop.dir.path().join("refresh.token");
    let original = std::fs::read_to_string(&file).unwrap();
    let call = [Call::get("/refresh/me")];

    let answers = interop.run(Client::Curl, &call).await;
    assert_eq!(answers[0].status, 200, "{}", answers[0].body);
    let rotated = std::fs::read_to_string(&file).unwrap();
    assert_ne!(
        rotated.trim(),
        original.trim(),
        "the rotated token was stored"
    );

    // Force a second refresh in the same process: revoke the access token at the API.
    interop.revoke_seen_tokens().await;
    let answers = interop.run(Client::Curl, &call).await;
    assert_eq!(answers[0].status, 200, "{}", answers[0].body);
    let rotated_again = std::fs::read_to_string(&file).unwrap();
    assert_ne!(rotated_again.trim(), rotated.trim());

    // And a third from a fresh process, which knows only the file.
    interop.start_proxy().await;
    let answers = interop.run(Client::Curl, &call).await;
    assert_eq!(answers[0].status, 200, "{}", answers[0].body);

    let tokens = interop.token_requests().await;
    let refreshes: Vec<&Value> = tokens
        .iter()
        .filter(|r| r["grant_type"] == "refresh_token")
        .collect();
    assert_eq!(refreshes.len(), 3, "{tokens:?}");
    assert!(
        refreshes.iter().all(|r| r["status"] == 200),
        "no refresh was refused as a reuse: {tokens:?}"
    );
}

/// Token exchange on behalf of each caller: alice's and bob's calls carry tokens for alice and
/// bob; a caller without a token is refused by the proxy; a forged subject token is refused by
/// oidc-provider and the caller is told so (401), without the token being echoed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_exchange_acts_for_each_caller() {
    let interop = Interop::start().await;
    let alice = format!("Bearer {}", interop.subject_token("alice"));
    let bob = format!("Bearer {}", interop.subject_token("bob"));
    // alice's claims under bob's signature: a JWT whose signature does not match.
    let (alice_token, bob_token) = (interop.subject_token("alice"), interop.subject_token("bob"));
    let (alice_parts, bob_parts): (Vec<&str>, Vec<&str>) = (
        alice_token.split('.').collect(),
        bob_token.split('.').collect(),
    );
    let forged = format!(
        "Bearer {}.{}.{}",
        alice_parts[0], alice_parts[1], bob_parts[2]
    );
    let answers = interop
        .run(
            Client::Node,
            &[
                Call::get("/exchange/a").with_authorization(&alice),
                Call::get("/exchange/b").with_authorization(&bob),
                Call::get("/exchange/c").with_authorization(&alice),
                Call::get("/exchange/d"),
                Call::get("/exchange/e").with_authorization(&forged),
                Call::get("/actor/f").with_authorization(&alice),
            ],
        )
        .await;
    let subs: Vec<Value> = answers[..3]
        .iter()
        .map(|a| a.json()["sub"].clone())
        .collect();
    assert_eq!(subs, ["alice", "bob", "alice"]);
    // RFC 8693 §4.1: without an actor_token the exchanging client is the actor; with one
    // (the `actor` route presents bob's workload token), its subject is.
    assert_eq!(
        answers[0].json()["act"]["sub"],
        interop.client_id("exchange")
    );
    let acted = answers[5].json();
    assert_eq!(answers[5].status, 200, "{acted}");
    assert_eq!(
        (&acted["sub"], &acted["act"]["sub"]),
        (&json!("alice"), &json!("bob"))
    );
    assert_ne!(answers[0].json()["jti"], answers[1].json()["jti"]);
    assert_eq!(
        answers[0].json()["jti"],
        answers[2].json()["jti"],
        "alice's exchanged token is cached for alice"
    );
    assert_eq!(answers[3].status, 401, "{}", answers[3].body);
    // The forged token is the caller's problem: 401 (RFC 6750 invalid_token), naming the
    // route and oidc-provider's RFC 8693 §2.2.2 error, so the caller gets a new token rather
    // than retrying a 502.
    assert_eq!(answers[4].status, 401, "{}", answers[4].body);
    assert!(
        answers[4].body.contains("refused the caller's token")
            && answers[4].body.contains("invalid_request")
            && answers[4].body.contains("exchange"),
        "{}",
        answers[4].body
    );
    assert!(!answers[4]
        .body
        .contains(forged.trim_start_matches("Bearer ")));
    let seen = interop.seen().await;
    assert_eq!(
        seen.len(),
        4,
        "refused callers never reach the API: {seen:?}"
    );
    let tokens = interop.token_requests().await;
    let exchanges = tokens
        .iter()
        .filter(|r| r["grant_type"] == "urn:ietf:params:oauth:grant-type:token-exchange")
        .count();
    assert_eq!(
        exchanges, 4,
        "alice, bob, the forgery, alice with an actor: {tokens:?}"
    );
}

/// A wrong client secret against a real server: the caller gets a 502 naming the route and
/// oidc-provider's OAuth error, never the secret; once the file is fixed, the next request
/// succeeds without a restart (secret files are read on every token request).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_client_secret_is_reported_without_the_secret() {
    let interop = Interop::start().await;
    let file = interop.dir.path().join("basic.secret");
    let good = std::fs::read_to_string(&file).unwrap();
    let wrong = "wrong-secret-6f1d0c58a2b94e7c9d3e1f20a7b8c4d5e6f7a8b9c0d1";
    std::fs::write(&file, wrong).unwrap();
    let answers = interop.run(Client::Curl, &[Call::get("/basic/x")]).await;
    assert_eq!(answers[0].status, 502, "{}", answers[0].body);
    let body = &answers[0].body;
    assert!(body.contains("invalid_client"), "{body}");
    assert!(body.contains("basic"), "names the route: {body}");
    assert!(
        !body.contains(wrong) && !body.contains(good.trim()),
        "{body}"
    );
    assert!(interop.seen().await.is_empty(), "nothing reached the API");
    // `check --fetch` finds it before any caller does, and every other route is fine.
    let (code, report) = interop.check_fetch().await;
    assert_eq!(code, Some(64), "{report}");
    assert!(
        report.contains("route basic:") && report.contains("invalid_client"),
        "{report}"
    );
    assert!(
        !report.contains(wrong) && !report.contains(good.trim()),
        "{report}"
    );

    std::fs::write(&file, &good).unwrap();
    let answers = interop.run(Client::Curl, &[Call::get("/basic/x")]).await;
    assert_eq!(answers[0].status, 200, "{}", answers[0].body);
    let (code, report) = interop.check_fetch().await;
    assert_eq!(code, Some(0), "{report}");
    for line in ["basic", "post", "jwt", "es256", "rs256", "mtls"] {
        assert!(
            report.contains(&format!("{line:<20} OK: Bearer token")),
            "{line}: {report}"
        );
    }
    assert!(
        report.contains("dpop                 OK: DPoP token"),
        "{report}"
    );
    assert!(report.contains("refresh              skipped"), "{report}");
}

/// Issue 12, "who may use it": with `proxy.callers = "known"`, each real client authenticates
/// to the proxy the way its users would (curl `-x http://u:p@...`, Python
/// `HTTPS_PROXY=http://u:p@...`, Java an `Authenticator`, undici `ProxyAgent` with a bearer
/// token) and is served; without credentials each sees the proxy's 407.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_client_authenticates_to_the_proxy_and_is_refused_without() {
    const PASSWORD: &str = "interop-proxy-pw";
    const TOKEN: &str = "interop-proxy-token";
    let secrets = tempfile::tempdir().unwrap();
    let (pw, token) = (secrets.path().join("pw"), secrets.path().join("token"));
    std::fs::write(&pw, PASSWORD).unwrap();
    std::fs::write(&token, TOKEN).unwrap();
    let interop = Interop::start_with(|toml| {
        let callers = format!(
            "\n[[caller]]\nname = \"legacy\"\n\
             proxy_auth = {{ basic = {{ user = \"legacy\", password = {{ file = \"{}\" }} }} }}\n\
             [[caller]]\nname = \"node\"\nproxy_auth = {{ bearer = {{ file = \"{}\" }} }}\n",
            pw.display(),
            token.display()
        );
        toml.replacen("[proxy]\n", "[proxy]\ncallers = \"known\"\n", 1) + &callers
    })
    .await;
    let calls = [Call::get("/basic/items")];
    let setups = [
        (Client::Curl, ProxyAuth::Basic("legacy", PASSWORD)),
        (Client::Python, ProxyAuth::Basic("legacy", PASSWORD)),
        (Client::Java, ProxyAuth::Basic("legacy", PASSWORD)),
        (Client::Node, ProxyAuth::Bearer(TOKEN)),
    ];
    for (client, auth) in &setups {
        let served = interop.run_as(*client, &calls, auth).await;
        assert_eq!(
            served[0].status, 200,
            "{client:?} {auth:?}: {}",
            served[0].body
        );
        assert_eq!(served[0].json()["client_id"], interop.client_id("basic"));
        let refused = interop.run(*client, &calls).await;
        assert_eq!(
            refused[0].status, 407,
            "{client:?} without: {}",
            refused[0].body
        );
    }
    let records = interop.seen().await;
    assert_eq!(
        records.iter().filter(|r| r["status"] == 200).count(),
        setups.len(),
        "only the authenticated calls reached the resource server"
    );
}
